"""Training curves a person looks at: ``<run>/curves.png`` and, when installed, TensorBoard.

The training loop writes one dict per epoch to ``<run>/metrics.jsonl`` (``train_loss``,
``train_ce_adv``, ``val_clean_acc``, ``val_robust_acc``, ``lr``, ``epoch``, ...). This module
turns that history into things to look at, without the loop knowing how:

    observer = EpochObserver(run_dir)
    ...
    observer.on_epoch(metrics, history)   # after each epoch, on the main rank
    ...
    observer.close()

* :func:`render_curves` draws losses, clean and robust validation accuracy and the learning
  rate per epoch into one PNG (matplotlib, already a dependency); it is redrawn every epoch,
  so the file is current while a run is in progress.
* :class:`TensorBoardWriter` sends every numeric value of an epoch to TensorBoard scalars
  under ``<run>/tensorboard`` through ``torch.utils.tensorboard.SummaryWriter``, when the
  ``tensorboard`` package is installed (``pip install -e '.[tensorboard]'``). Without it the
  observer says once that TensorBoard is off and carries on.
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence, TextIO

CURVES_FILE = "curves.png"
TENSORBOARD_DIR = "tensorboard"

# Epoch keys that are bookkeeping, not curves (TensorBoard and the loss panel skip them).
NOT_A_CURVE = frozenset({"epoch", "best", "ranks_in_sync", "val_n", "val_eps", "catastrophic_overfitting", "selected_weights"})
# The panels of curves.png: (title, y label, keys). Losses are every ``train_*`` key but the
# accuracy (the methods log different parts: ce_adv, ce_clean, contrastive, kl, ...).
ACCURACY_KEYS = ("train_acc", "val_clean_acc", "val_robust_acc", "val_fgsm_acc", "ema_val_clean_acc", "ema_val_robust_acc")
LR_KEY = "lr"
SPEED_KEYS = ("images_per_s",)


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """The epochs of ``<run_dir>/metrics.jsonl``; a torn last line (a run killed mid-write) is skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    history = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            history.append(row)
    return history


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def loss_keys(history: Sequence[Mapping[str, Any]]) -> list[str]:
    """``train_loss`` first, then the method's parts (``train_ce_adv``, ...), in first-seen order."""
    keys: dict[str, None] = {}
    for row in history:
        for key, value in row.items():
            if key.startswith("train_") and key not in ACCURACY_KEYS and _numeric(value):
                keys[key] = None
    return sorted(keys, key=lambda k: k != "train_loss")


def series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) where ``key`` has a finite number; epochs fall back to 1, 2, ..."""
    xs, ys = [], []
    for i, row in enumerate(history, start=1):
        value = row.get(key)
        if _numeric(value):
            epoch = row.get("epoch")
            xs.append(float(epoch) if _numeric(epoch) else float(i))
            ys.append(float(value))
    return xs, ys


def render_curves(history: Sequence[Mapping[str, Any]], out: str | Path, title: str | None = None) -> Path:
    """Draw the run's curves into ``out`` (a PNG path, or a run folder: ``<run>/curves.png``).

    Panels: losses; accuracies (train, clean and robust validation, the best epoch marked);
    learning rate. Keys a method does not log are left out; an empty history is an error.
    """
    if not history:
        raise ValueError("the history is empty: no epoch to draw")
    out = Path(out)
    if out.suffix.lower() != ".png":
        out = out / CURVES_FILE
    import matplotlib

    matplotlib.use("Agg", force=False)  # headless: training runs on servers
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 3.8), layout="constrained")
    ax_loss, ax_acc, ax_lr = fig.subplots(1, 3)
    _plot(ax_loss, history, loss_keys(history), "loss")
    _plot(ax_acc, history, ACCURACY_KEYS, "accuracy")
    _mark_best(ax_acc, history)
    _plot(ax_lr, history, (LR_KEY,), "learning rate")
    eps = next((row["val_eps"] for row in reversed(history) if _numeric(row.get("val_eps"))), None)
    if eps is not None:
        ax_acc.set_title(f"accuracy (robust: PGD at eps {eps * 255:.0f}/255)")
    fig.suptitle(title or out.parent.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    # Written aside and moved: a viewer refreshing the file never reads half a PNG.
    fig.savefig(tmp, dpi=100, format="png")
    tmp.replace(out)
    return out


def _plot(ax, history: Sequence[Mapping[str, Any]], keys: Iterable[str], name: str) -> None:
    drawn = 0
    for key in keys:
        xs, ys = series(history, key)
        if xs:
            ax.plot(xs, ys, marker="o", markersize=3, label=key)
            drawn += 1
    ax.set_title(name)
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)


def _mark_best(ax, history: Sequence[Mapping[str, Any]]) -> None:
    best = [row for row in history if row.get("best") is True and _numeric(row.get("epoch"))]
    if best:
        ax.axvline(best[-1]["epoch"], color="grey", linestyle=":", linewidth=1, label="best epoch")
        ax.legend(fontsize=8)


class TensorBoardWriter:
    """Every finite number of an epoch as a TensorBoard scalar, tagged by group (``train/loss``).

    Needs the ``tensorboard`` package (``torch.utils.tensorboard`` imports it); check with
    :meth:`available` first.
    """

    GROUPS = (("train_", "train/"), ("val_", "val/"))

    def __init__(self, log_dir: str | Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    @staticmethod
    def available() -> bool:
        import importlib.util

        return importlib.util.find_spec("tensorboard") is not None

    @classmethod
    def tag(cls, key: str) -> str:
        for prefix, group in cls.GROUPS:
            if key.startswith(prefix):
                return group + key[len(prefix):]
        return "run/" + key  # lr, images_per_s, epoch_seconds, wall_seconds

    def write(self, metrics: Mapping[str, Any], step: int) -> None:
        for key, value in metrics.items():
            if key not in NOT_A_CURVE and _numeric(value):
                self.writer.add_scalar(self.tag(key), float(value), global_step=step)
        self.writer.flush()  # one flush per epoch: TensorBoard shows the epoch as soon as it ends

    def close(self) -> None:
        self.writer.close()


class EpochObserver:
    """The one thing the training loop calls: redraws ``curves.png`` and feeds TensorBoard.

    ``tensorboard=None`` uses TensorBoard when installed; ``False`` never; ``True`` requires it.
    Failures to draw are warnings, never a reason to stop a training run.
    """

    def __init__(self, run_dir: str | Path, tensorboard: bool | None = None, log: TextIO | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.log = log if log is not None else sys.stderr
        self.tensorboard: TensorBoardWriter | None = None
        if tensorboard is not False:
            if TensorBoardWriter.available():
                self.tensorboard = TensorBoardWriter(self.run_dir / TENSORBOARD_DIR)
            elif tensorboard:
                raise ImportError("TensorBoard logging was asked for but the tensorboard package is missing; "
                                  "pip install -e '.[tensorboard]'")
            else:
                print("TensorBoard is off (the tensorboard package is not installed; "
                      "pip install -e '.[tensorboard]' turns it on); curves go to "
                      f"{self.run_dir / CURVES_FILE}", file=self.log)

    @property
    def curves_path(self) -> Path:
        return self.run_dir / CURVES_FILE

    def on_epoch(self, metrics: Mapping[str, Any], history: Sequence[Mapping[str, Any]]) -> None:
        """After an epoch: ``metrics`` is that epoch's dict, ``history`` every epoch so far (it included)."""
        if self.tensorboard is not None:
            step = metrics.get("epoch")
            self.tensorboard.write(metrics, int(step) if _numeric(step) else len(history))
        try:
            render_curves(history, self.curves_path)
        except (OSError, ValueError, RuntimeError) as exc:
            # A full disk or a matplotlib backend problem must not end hours of training.
            warnings.warn(f"could not draw {self.curves_path}: {exc}", RuntimeWarning, stacklevel=2)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None


def main(argv: list[str] | None = None) -> int:
    """``python -m training.curves RUN_DIR [RUN_DIR ...]``: (re)draw curves.png of finished runs."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m training.curves", description=main.__doc__)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders holding metrics.jsonl")
    args = parser.parse_args(argv)
    for run in args.runs:
        print(render_curves(read_history(run), run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
