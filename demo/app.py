"""The Gradio attack lab: ``clead-demo`` (or ``make demo``) opens it on 127.0.0.1.

Layout only; the compute lives in ``demo.lab``. One named endpoint, ``/attack``, serves
the button and API clients alike (``gradio_client``: ``client.predict(handle_file(p),
"PGD", 8, 10, "each", api_name="/attack")``).
"""

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Optional

from demo import lab
from demo.gallery import Sample, default_data_dir, load_samples

# Offline-safe before gradio is imported: no telemetry, no version check, no hub calls.
OFFLINE_ENV = {
    "GRADIO_ANALYTICS_ENABLED": "False",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
}
REPO = Path(__file__).resolve().parents[1]
SHIPPED = {"baseline": REPO / "models/cifar10/baseline.pt", "hardened": REPO / "models/cifar10/clead.pt"}
PREVIEW_SIZE = 256  # on-screen size of the 32x32 images (nearest-neighbour, pixels stay visible)


def _offline() -> None:
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


# The test-split accuracies `clead-train eval --update-metadata` records, in display order.
HEADLINE = (("clean_acc", "clean", "clean_n"), ("pgd20_acc", "PGD-20", None), ("apgd_t_acc", "APGD-T", None),
            ("autoattack_acc", "AutoAttack", None))


def _headline_metrics(metrics: dict) -> str:
    """'clean 57.3% (n=8000), PGD-20 31.0%, AutoAttack 28.1% (n=1000)', from what was measured."""
    parts = []
    for key, label, n_key in HEADLINE:
        if isinstance(metrics.get(key), (int, float)):
            n = metrics.get(n_key) if n_key else (metrics.get("attack_n") or {}).get(key[: -len("_acc")])
            parts.append(f"{label} {metrics[key]:.1%}" + (f" (n={n})" if n else ""))
    if parts and isinstance(metrics.get("eps"), (int, float)):
        parts.append(f"at eps {round(metrics['eps'] * 255)}/255 on the test split")
    return ", ".join(parts)


def model_card(models: dict[str, lab.LabModel], server: Optional[str]) -> str:
    lines = []
    for m in models.values():
        shown = _headline_metrics(m.meta.get("metrics") or {})
        method = m.meta.get("method", "?")
        lines.append(f"- **{m.title}**: method `{method}`, `{m.path}`" + (f"; {shown}" if shown else ""))
    if server:
        lines.append(
            f"- Predictions come from the server at `{server}`; the white-box attack itself runs on "
            "the local artifacts above (it needs gradients, which do not cross HTTP)."
        )
    return "\n".join(lines)


class Lab:
    """The event handlers, bound to the loaded models (and optional remote predictor)."""

    def __init__(self, models: dict[str, lab.LabModel], predict: Optional[lab.Predictor] = None) -> None:
        self.models = models
        self.predict = predict
        self.input_size = next(iter(models.values())).input_size

    def _input(self, path: Optional[str]):
        import gradio as gr

        if not path:
            raise gr.Error("Upload an image or pick one from the gallery first.", print_exception=False)
        try:
            return lab.load_upload(path, self.input_size)
        except lab.BadImageError as err:
            raise gr.Error(str(err), print_exception=False) from None

    def preview(self, path: Optional[str]):
        """The upload as the models see it: center-cropped and resized to the model input."""
        if not path:
            return None
        return lab.upscale(lab.to_uint8(self._input(path)), PREVIEW_SIZE)

    def attack(self, path: Optional[str], attack: str, eps_k: float, steps: float, target: str, progress=None):
        import gradio as gr
        from demo.remote import RemoteError

        x = self._input(path)
        bar = progress or gr.Progress()
        try:
            result = lab.run_lab(
                self.models, x, attack, float(eps_k) / 255, int(steps), target,
                predict=self.predict, progress=lambda f, desc: bar(f, desc=desc),
            )
        except (RemoteError, ValueError) as err:
            raise gr.Error(str(err), print_exception=False) from None
        return (f"### {result.verdict()}\n\n{result.describe()}", *self._panels(result))

    def _panels(self, result: lab.LabResult) -> list[Any]:
        clean_view = lab.upscale(lab.to_uint8(result.x), PREVIEW_SIZE)
        out: list[Any] = []
        for role in lab.ROLES:
            o = result.outcomes[role]
            sizes = (
                f"attack computed against **{o.attacked_against}** · perturbation "
                f"L-inf **{lab.eps_label(o.linf)}** ({o.linf:.4f}), L2 **{o.l2:.3f}**, shown amplified "
                f"(±eps -> black/white) · {o.verdict()}"
            )
            out += [
                clean_view,
                lab.upscale(lab.to_uint8(o.x_adv), PREVIEW_SIZE),
                lab.upscale(lab.perturbation_image(o.delta, result.eps), PREVIEW_SIZE),
                sizes,
                dict(o.clean),
                dict(o.adversarial),
            ]
        return out


def build_app(
    models: dict[str, lab.LabModel],
    samples: list[Sample],
    predict: Optional[lab.Predictor] = None,
    server: Optional[str] = None,
    gallery_note: str = "",
):
    """Lay out the Blocks app; returns it unlaunched."""
    _offline()
    import gradio as gr

    handlers = Lab(models, predict)
    with gr.Blocks(title="C-LEAD attack lab", analytics_enabled=False) as app:
        gr.Markdown(
            "# C-LEAD attack lab\nAttack one image and compare the **baseline** with the "
            "**hardened** (C-LEAD) model: same image, same budget.\n\n" + model_card(models, server)
        )
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                c = _controls(samples, handlers.input_size, gallery_note)
            with gr.Column(scale=2):
                verdict = gr.Markdown("Upload or pick an image, then press **Attack**.", elem_id="verdict")
                with gr.Row():
                    panels = [p for role in lab.ROLES for p in _result_panel(role, models[role].title)]

        c["upload"].change(handlers.preview, c["upload"], c["preview"], api_name="preview")
        c["gallery"].select(_pick(samples), None, c["upload"], api_visibility="private")
        c["eps"].change(lambda k: f"eps = **{int(k)}/255**", c["eps"], c["eps_shown"], api_visibility="private")
        c["run"].click(
            handlers.attack, [c[k] for k in ("upload", "attack", "eps", "steps", "target")], [verdict, *panels],
            api_name="attack", show_progress="full", concurrency_limit=1,
        )
    return app


def _controls(samples: list[Sample], input_size: tuple[int, int, int], gallery_note: str) -> dict[str, Any]:
    """The left column: image source, resized preview, attack settings and the button."""
    import gradio as gr

    _, h, w = input_size
    c: dict[str, Any] = {}
    c["upload"] = gr.File(label="Upload an image", file_types=["image"], type="filepath", elem_id="upload")
    c["gallery"] = gr.Gallery(
        [(str(s.path), s.label) for s in samples], label="...or pick a CIFAR-10 test image",
        columns=4, height="auto", allow_preview=False, visible=bool(samples), elem_id="gallery",
    )
    if gallery_note:
        gr.Markdown(gallery_note, elem_id="gallery-note")
    c["preview"] = gr.Image(label=f"Model input (center-cropped, resized to {w}x{h})", format="png",
                            interactive=False, height=200, buttons=[], elem_id="preview")
    c["attack"] = gr.Dropdown(list(lab.ATTACK_CHOICES), value="PGD", label="Attack", elem_id="attack")
    c["eps"] = gr.Slider(0, lab.EPS_STEPS, value=8, step=1, label="eps, in k/255 (L-inf)", elem_id="eps")
    c["eps_shown"] = gr.Markdown("eps = **8/255**", elem_id="eps-shown")
    c["steps"] = gr.Slider(1, 50, value=10, step=1, label="steps (FGSM takes one)", elem_id="steps")
    c["target"] = gr.Radio([(label, key) for key, label in lab.TARGETS.items()], value="each",
                           label="Compute the attack against", elem_id="target")
    c["run"] = gr.Button("Attack", variant="primary", elem_id="run")
    return c


def _result_panel(role: str, title: str) -> list[Any]:
    """One model's results, in the order ``Lab._panels`` fills them."""
    import gradio as gr

    with gr.Column(elem_id=f"{role}-panel"):
        gr.Markdown(f"## {title}")
        with gr.Row():
            images = [
                gr.Image(label=label, format="png", interactive=False, min_width=100, buttons=["download"],
                         elem_id=f"{role}-{key}-img")
                for key, label in (("clean", "original"), ("adv", "adversarial"), ("delta", "perturbation"))
            ]
        sizes = gr.Markdown(elem_id=f"{role}-sizes")
        with gr.Row():
            labels = [
                gr.Label(num_top_classes=lab.TOP_K, label=f"{which} top-{lab.TOP_K}", elem_id=f"{role}-{key}")
                for key, which in (("clean", "clean"), ("adv", "adversarial"))
            ]
    return [*images, sizes, *labels]


def _pick(samples: list[Sample]):
    import gradio as gr

    # No ``from __future__ import annotations`` in this module: Gradio inspects this
    # annotation at run time to pass the selection event.
    def pick(evt: gr.SelectData) -> str:
        return str(samples[evt.index].path)

    return pick


def default_key_file() -> Path:
    """``runs/serve/key_file.json`` of the working directory (where `make serve` runs), else of this checkout."""
    from demo.remote import DEFAULT_KEY_FILE

    return DEFAULT_KEY_FILE if DEFAULT_KEY_FILE.is_file() else REPO / DEFAULT_KEY_FILE


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="clead-demo", description=__doc__.splitlines()[0])
    p.add_argument("--baseline", type=Path, default=SHIPPED["baseline"], help="exported baseline artifact")
    p.add_argument("--hardened", type=Path, default=SHIPPED["hardened"], help="exported hardened (C-LEAD) artifact")
    p.add_argument("--server", default=None, help="fetch predictions from this TorchServe URL, e.g. http://127.0.0.1:8080")
    p.add_argument("--key", default=None,
                   help="TorchServe inference key for --server (default: the inference key of --key-file)")
    p.add_argument("--key-file", type=Path, default=None,
                   help="TorchServe's key_file.json for --server (default: runs/serve/key_file.json, "
                        "where `make serve` writes it); reread on every request")
    p.add_argument("--server-names", default=None,
                   help="model names on the server as BASELINE,HARDENED (default: each artifact's metadata name)")
    p.add_argument("--port", type=int, default=7860, help="port on 127.0.0.1")
    p.add_argument("--data", type=Path, default=None,
                   help="CIFAR-10 folder holding test.tar.gz, for the gallery (default: $CLEAD_DATA or ../shared/data/cifar10)")
    p.add_argument("--per-class", type=int, default=1, help="gallery images per class")
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    _offline()
    try:
        models = lab.load_models(args.baseline, args.hardened)
    except lab.MissingArtifactsError as err:
        sys.exit(f"clead-demo: {err}")
    lab.warm_up(models)
    predict = None
    if args.server:
        from demo.remote import RemotePredictor

        from demo.remote import RemoteError

        names = dict(zip(lab.ROLES, args.server_names.split(","))) if args.server_names else None
        predict = RemotePredictor(args.server, names, key=args.key, key_file=args.key_file or default_key_file())
        try:
            predict.check(models)
            print(f"clead-demo: {args.server} answers for both models ({predict.key_source()})", file=sys.stderr)
        except RemoteError as err:
            # Not fatal: the server may still be starting; every attack reports the same error.
            print(f"clead-demo: warning: {err}", file=sys.stderr)
    data = args.data or default_data_dir()
    try:
        samples, note = load_samples(data, per_class=args.per_class), ""
    except FileNotFoundError as err:
        samples, note = [], f"Gallery unavailable: {err}. Upload an image instead."
        print(f"clead-demo: {note}", file=sys.stderr)
    app = build_app(models, samples, predict, args.server, note)
    app.queue(default_concurrency_limit=1).launch(
        server_name="127.0.0.1", server_port=args.port, share=False, inbrowser=False, show_error=True,
        max_file_size=lab.UPLOAD_LIMITS.max_bytes, ssr_mode=False, footer_links=["api"], run_history=False,
    )


if __name__ == "__main__":
    main()
