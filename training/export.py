"""Export a trained classifier as a self-contained artifact, and load artifacts back.

The artifact is one file that loads with torch alone, without this project's code:

* ``torchscript`` (default, ``.pt``): ``torch.jit.load`` -> module. TorchServe's stock
  loader reads it; it stays differentiable, so evaluation and the demo can attack it.
* ``export`` (``.pt2``): a ``torch.export`` ExportedProgram; ``torch.export.load(p).module()``.

Either way the module maps [0, 1] NCHW float images to logits with normalisation inside, in
eval mode. Beside it, ``<stem>.json`` holds the metadata (class names, input size, mean/std,
method and settings, training eps, metrics, sha256 of the model file). Serving reads only
that file pair.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

# The artifact contract (where the metadata lies, how the file is fingerprinted) is the
# servers' to define: serving/artifact.py reads it with torch alone and never imports training,
# so training, which writes artifacts, takes it from there.
from serving.artifact import load_module, metadata_path, sha256_file
from training.checkpoint import model_from_checkpoint

FORMATS = {"torchscript": ".pt", "export": ".pt2"}
METADATA_SCHEMA = 1


class _LogitsOnly(nn.Module):
    """Wrapper so the exported graph is exactly ``forward(x) -> logits`` in eval mode."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def export_artifact(
    model: nn.Module,
    out: str | os.PathLike,
    metadata: dict[str, Any],
    input_size: tuple[int, int, int] = (3, 32, 32),
    fmt: str | None = None,
) -> Path:
    """Write ``model`` to ``out`` (format from ``fmt`` or the suffix) and its metadata JSON.

    ``metadata`` should carry at least ``classes``; this function adds format, file name,
    input size, sha256 and torch version. Files are written atomically.
    """
    out = Path(out)
    fmt = fmt or ("export" if out.suffix == ".pt2" else "torchscript")
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    if "classes" not in metadata:
        raise ValueError("metadata must list 'classes' (the label of each logit)")
    module = _LogitsOnly(copy.deepcopy(model).float().cpu().eval()).eval()
    example = torch.rand(2, *input_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-{out.name}")  # same suffix: torch.export checks it
    with torch.no_grad():
        if fmt == "torchscript":
            with warnings.catch_warnings():
                # torch >= 2.10 flags torch.jit as deprecated; the format is still what
                # TorchServe's stock loader and every torch release we support read.
                warnings.simplefilter("ignore", FutureWarning)
                traced = torch.jit.trace(module, example, check_trace=False)
                torch.jit.save(traced, str(tmp))
        else:
            batch = torch.export.Dim("batch", min=1, max=4096)
            program = torch.export.export(module, (example,), dynamic_shapes={"x": {0: batch}})
            torch.export.save(program, str(tmp))
    os.replace(tmp, out)
    meta = dict(metadata)
    meta.update(
        schema=METADATA_SCHEMA,
        format=fmt,
        file=out.name,
        input_size=list(input_size),
        num_classes=len(metadata["classes"]),
        sha256=sha256_file(out),
        torch_version=str(torch.__version__),
    )
    write_json_atomic(metadata_path(out), meta)
    return out


def copy_artifact(src: str | os.PathLike, out: str | os.PathLike, name: str | None = None,
                  version: str | None = None) -> Path:
    """Ship an exported artifact under another path and name, byte for byte.

    The model file is copied unchanged, so its sha256, and every evaluation report that names
    that sha256, still apply (``clead-train eval --resume`` reuses them); the metadata is the
    source's with ``name`` (default: the ``out`` stem), ``version`` (if given), ``file`` and
    ``copied_from`` updated. Re-exporting the checkpoint instead would give another file.
    """
    import shutil

    src, out = Path(src), Path(out)
    meta_file = metadata_path(src)
    if not meta_file.is_file():
        raise FileNotFoundError(f"{src} has no metadata beside it ({meta_file}); export the run instead")
    meta = json.loads(meta_file.read_text())
    if meta.get("sha256") != sha256_file(src):
        raise ValueError(f"{src}: sha256 does not match {meta_file}; the file was changed or corrupted")
    if Path(meta.get("file") or src.name).suffix != out.suffix:
        raise ValueError(f"{src} is a {meta.get('format')} artifact; give --out a {src.suffix} path")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.copyfile(src, tmp)
    os.replace(tmp, out)
    meta.update(name=name or out.stem, file=out.name, copied_from=str(src))
    if version is not None:
        meta["version"] = version
    write_json_atomic(metadata_path(out), meta)
    return out


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; these files are meant to be shipped and read
    with os.fdopen(fd, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=False, default=str)
        fh.write("\n")
    os.replace(tmp, path)


def load_artifact(path: str | os.PathLike, verify: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """Load an exported artifact and its metadata (empty dict if no JSON lies beside it), for
    attacking and evaluating it.

    With ``verify`` the file's sha256 must match the metadata's. Unlike the servers' loader
    (``serving.artifact.load_artifact``, which refuses a file without its full metadata) this
    one also reads a bare model file, and it wraps a torch.export module so that attacks may
    switch its mode (``FrozenEval``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model artifact at {path}")
    meta_file = metadata_path(path)
    meta: dict[str, Any] = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    if verify and meta.get("sha256") and sha256_file(path) != meta["sha256"]:
        raise ValueError(f"{path}: sha256 does not match {meta_file}; the file was changed or corrupted")
    fmt = meta.get("format") or ("export" if path.suffix == ".pt2" else "torchscript")
    module = load_module(path, fmt)
    return (FrozenEval(module) if fmt == "export" else module), meta


class FrozenEval(nn.Module):
    """Holds a module exported in eval mode. ``torch.export`` modules refuse ``train()`` /
    ``eval()``; attacks switch modes, so this wrapper accepts the call and stays frozen."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.training = False  # report eval mode from the start, as load_model promises

    def train(self, mode: bool = True) -> "FrozenEval":
        self.training = False  # always eval: BatchNorm statistics were frozen at export
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def _is_torchscript(path: Path) -> bool:
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(name.endswith("constants.pkl") for name in zf.namelist())


def is_artifact(path: Path) -> bool:
    """An exported model file (``.pt2`` or TorchScript), not a training checkpoint."""
    return path.is_file() and (path.suffix == ".pt2" or _is_torchscript(path))


def load_model(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Any model clead produces: an exported artifact (``.pt`` TorchScript, ``.pt2``), a
    training checkpoint, or a run directory. Returns (module in eval mode, metadata)."""
    path = Path(path)
    if is_artifact(path):
        return load_artifact(path)
    model, state = model_from_checkpoint(path)
    meta = {
        "classes": state["classes"],
        "name": Path(path).stem,
        "method": state.get("config", {}).get("method", {}).get("name"),
        "source": "checkpoint",
    }
    return model, meta
