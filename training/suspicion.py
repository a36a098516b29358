"""Give an exported artifact a per-image suspicion score, computed inside the TorchScript file.

The score is the cosine distance of the image's penultimate embedding from the prototype of
the class the head predicts: ``raw = 1 - cos(f(x) / |f(x)|, prototype[argmax logits])``, where
a prototype is the mean unit-normalised embedding of that class's training images
(prototype / nearest-class-mean classifiers: Snell et al. 2017; as an out-of-distribution
score, Lee et al. 2018 use the class-conditional feature distance the same way). ``raw`` is
then calibrated into ``suspicion`` in [0, 1]: the share of clean *validation* images (the
training split's hold-out, never the test split) whose raw score is lower. A threshold of
``1 - rate`` therefore flags about ``rate`` of clean images, whatever the model.

The augmented artifact is one TorchScript file that still needs torch alone:

* ``forward(x) -> logits``, with exactly the arithmetic of the original (the logits are
  bit-identical, checked by :func:`augment_artifact`);
* ``suspicion(x) -> (logits, raw, suspicion)``, differentiable in ``raw`` (adaptive attacks
  need that; the calibrated value is a step function);
* buffers ``prototypes`` [classes, features] and ``calibration`` (sorted clean raw scores).

The metadata gains ``suspicion`` (threshold, rate, how it was computed). Serving reads both
and never imports this module. The shipped artifacts have no training checkpoint beside them,
so :func:`rebuild_classifier` rebuilds the Python model from an existing TorchScript file's
weights (its ``architecture`` / ``model_kwargs`` metadata) to reach ``forward_features``.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from training.export import sha256_file, write_json_atomic
from training.models import create_model
from training.models.base import ImageClassifier


@dataclass
class SuspicionConfig:
    prototype_images: int = 5000  # training images (outside the validation hold-out) averaged into prototypes
    val_size: int = 1000  # the training run's validation hold-out (DataConfig.val_size); calibration uses it
    split_seed: int = 0  # DataConfig.split_seed of the training run
    rate: float = 0.05  # share of clean validation images the documented threshold flags
    batch_size: int = 250  # images per forward pass while computing statistics
    seed: int = 0  # which training images become prototype images


class _Features(nn.Module):
    def __init__(self, model: ImageClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


class SuspicionArtifact(nn.Module):
    """``forward`` -> logits; ``suspicion`` -> (logits, raw, calibrated). Scripted for export.

    ``features`` and ``head`` are traced from the classifier, so ``forward`` runs the same
    operations as the plain artifact (``head(features(x))`` is how the classifier computes
    its logits, see ``ImageClassifier.forward``).
    """

    def __init__(self, features: nn.Module, head: nn.Module, prototypes: torch.Tensor, calibration: torch.Tensor) -> None:
        super().__init__()
        self.features = features
        self.head = head
        self.register_buffer("prototypes", F.normalize(prototypes.float(), dim=1))
        self.register_buffer("calibration", calibration.float().sort().values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    @torch.jit.export
    def suspicion(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats = self.features(x)
        logits = self.head(feats)
        raw = raw_score(feats, logits, self.prototypes)
        # float(): under autocast raw may be bf16, and searchsorted wants the calibration's dtype.
        calibrated = torch.searchsorted(self.calibration, raw.detach().float().contiguous(), right=True).float()
        return logits, raw, calibrated / float(self.calibration.numel())


def raw_score(feats: torch.Tensor, logits: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Cosine distance of each embedding from the prototype of its predicted class, in [0, 2]."""
    cos = F.normalize(feats, dim=1) @ prototypes.t()
    return 1.0 - cos.gather(1, logits.argmax(1, keepdim=True)).squeeze(1)


def rebuild_classifier(artifact: str | os.PathLike) -> tuple[ImageClassifier, dict[str, Any]]:
    """The Python classifier behind an exported TorchScript artifact, with its weights.

    Needs ``architecture`` (and ``model_kwargs``) in the metadata; the traced file keeps the
    classifier's parameter names under ``model.``, which is what ``export_artifact`` wraps.
    """
    artifact = Path(artifact)
    meta = json.loads(artifact.with_suffix(".json").read_text())
    if "architecture" not in meta:
        raise ValueError(f"{artifact}: metadata has no 'architecture'; cannot rebuild its features")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(str(artifact), map_location="cpu")
    state = scripted.state_dict()
    prefix = "model." if all(k.startswith("model.") for k in state) else ""
    state = {k[len(prefix):]: v for k, v in state.items() if not k.startswith(("prototypes", "calibration"))}
    if not prefix:  # an already augmented artifact: its classifier lives in features.model + head
        state = {k.replace("features.model.", "").replace("head.", "fc."): v for k, v in state.items()}
    model = create_model(meta["architecture"], num_classes=len(meta["classes"]), **meta.get("model_kwargs", {}))
    model.load_state_dict(state)
    return model.eval(), meta


@torch.no_grad()
def embed(model: ImageClassifier, images: torch.Tensor, batch_size: int = 250) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, logits) of uint8 or [0, 1] images, in batches."""
    feats, logits = [], []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size]
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        f = model.forward_features(x)
        feats.append(f)
        logits.append(model.forward_head(f))
    return torch.cat(feats), torch.cat(logits)


def class_prototypes(feats: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    unit = F.normalize(feats, dim=1)
    missing = [c for c in range(num_classes) if not bool((labels == c).any())]
    if missing:
        raise ValueError(f"no prototype images of class(es) {missing}; use more prototype images")
    return F.normalize(torch.stack([unit[labels == c].mean(0) for c in range(num_classes)]), dim=1)


def build_suspicion_model(model: ImageClassifier, proto_images: torch.Tensor, proto_labels: torch.Tensor,
                          val_images: torch.Tensor, batch_size: int = 250) -> SuspicionArtifact:
    """Prototypes from labelled training images, calibration from clean validation images."""
    model = model.float().cpu().eval()
    feats, _ = embed(model, proto_images, batch_size)
    prototypes = class_prototypes(feats, proto_labels, model.fc.out_features)
    val_feats, val_logits = embed(model, val_images, batch_size)
    calibration = raw_score(val_feats, val_logits, prototypes)
    example = torch.rand(2, *val_images.shape[1:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        features = torch.jit.trace(_Features(model), example, check_trace=False)
        head = torch.jit.trace(model.fc, model.forward_features(example), check_trace=False)
        return torch.jit.script(SuspicionArtifact(features, head, prototypes, calibration))


def threshold_for(rate: float) -> float:
    """Calibrated suspicion above which an image is flagged: flags ``rate`` of clean validation images."""
    if not 0 < rate < 1:
        raise ValueError(f"rate must be in (0, 1), got {rate}")
    return round(1.0 - rate, 6)


def augment_artifact(src: str | os.PathLike, out: str | os.PathLike, proto_images: torch.Tensor,
                     proto_labels: torch.Tensor, val_images: torch.Tensor, config: SuspicionConfig,
                     check_images: torch.Tensor | None = None) -> Path:
    """Write ``out`` (+ json): ``src`` with the suspicion method; metadata and metrics kept.

    ``check_images`` ([0, 1] or uint8) are run through both files; any logit that differs in
    a single bit raises, so the augmented model classifies exactly as the original did.
    """
    src, out = Path(src), Path(out)
    model, meta = rebuild_classifier(src)
    scripted = build_suspicion_model(model, proto_images, proto_labels, val_images, config.batch_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        original = torch.jit.load(str(src), map_location="cpu").eval()
    check = check_images if check_images is not None else val_images[:64]
    check = check.float() / 255 if check.dtype == torch.uint8 else check
    with torch.no_grad():
        before, after = original(check), scripted(check)
        logits, _, _ = scripted.suspicion(check)
    if not (torch.equal(before, after) and torch.equal(before, logits)):
        raise RuntimeError(f"{src}: the augmented artifact's logits differ from the original's "
                           f"(max |diff| {float((before - after).abs().max()):.3g}); not writing {out}")
    tmp = out.with_name(f".tmp-{out.name}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(scripted, str(tmp))
    os.replace(tmp, out)
    meta = dict(meta)
    original_sha = str(meta.get("sha256", ""))
    meta.update(file=out.name, sha256=sha256_file(out))
    meta["suspicion"] = {
        "method": "cosine distance of the penultimate embedding from the predicted class's prototype, "
                  "calibrated as the share of clean validation images with a lower distance",
        "threshold": threshold_for(config.rate),
        "rate": config.rate,
        "calibration_images": int(len(val_images)),
        "prototype_images": int(len(proto_images)),
        "config": asdict(config),
        "torch_version": str(torch.__version__),  # torch that wrote the augmented file
        "logits_from": original_sha,  # sha256 of the file it was built from: logits checked bit-identical
    }
    write_json_atomic(out.with_suffix(".json"), meta)
    return out
