"""Load an exported model artifact (TorchScript ``.pt`` or torch.export ``.pt2``) with torch alone.

The artifact contract is set by ``training/export.py``: a model file plus ``<stem>.json``
metadata beside it (``classes``, ``input_size``, ``format``, ``sha256``, ...). Serving must not
import ``training``, so this is the serving side's own small reader. Neither format goes
through ``pickle``: ``torch.jit.load`` and ``torch.export.load`` read their own archives, and
nothing here calls ``torch.load``.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where a model is loaded, not by reading the contract
    import torch

FORMATS = {".pt": "torchscript", ".pt2": "export"}


class ArtifactError(RuntimeError):
    """The model artifact is missing, altered, or breaks the metadata contract."""


def sha256_file(path: str | os.PathLike) -> str:
    # The artifact's fingerprint; training.export uses this function too (serving defines
    # the contract and never imports training).
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def metadata_path(artifact: str | os.PathLike) -> Path:
    return Path(artifact).with_suffix(".json")


def read_metadata(artifact: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``<stem>.json`` beside ``artifact``; unknown keys are kept as information."""
    meta_file = metadata_path(artifact)
    if not meta_file.is_file():
        raise ArtifactError(
            f"no metadata {meta_file} beside {artifact}; export the model with "
            "training.export.export_artifact, which writes both files"
        )
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{meta_file} is not valid JSON: {exc}") from exc
    missing = [key for key in ("classes", "input_size", "sha256") if key not in meta]
    if missing:
        raise ArtifactError(f"{meta_file} lacks required key(s) {missing}")
    if len(meta["input_size"]) != 3:
        raise ArtifactError(f"{meta_file}: input_size must be [C, H, W], got {meta['input_size']}")
    return meta


def verify_artifact(artifact: str | os.PathLike) -> dict[str, Any]:
    """Check that the file exists and its sha256 matches the metadata; return the metadata."""
    artifact = Path(artifact)
    if not artifact.is_file():
        raise ArtifactError(f"no model artifact at {artifact}")
    meta = read_metadata(artifact)
    actual = sha256_file(artifact)
    if actual != meta["sha256"]:
        raise ArtifactError(
            f"{artifact}: sha256 {actual[:12]}... does not match {metadata_path(artifact).name} "
            f"({str(meta['sha256'])[:12]}...); the file was changed or corrupted, re-export it"
        )
    return meta


def load_artifact(
    artifact: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Verify and load ``artifact``; returns the eval-mode module on ``device`` and its metadata."""
    artifact = Path(artifact)
    meta = verify_artifact(artifact)
    return load_module(artifact, meta.get("format") or FORMATS.get(artifact.suffix), device), meta


def load_module(artifact: str | os.PathLike, fmt: str | None, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The model in ``artifact`` (``fmt``: torchscript | export), unverified; TorchScript in eval mode.
    ``training.export.load_artifact`` reads files through this too."""
    import torch  # here, so that reading the artifact contract (and the CLI's defaults) needs no torch

    if fmt == "torchscript":
        with warnings.catch_warnings():
            # torch >= 2.10 flags torch.jit as deprecated; TorchScript is still the artifact
            # format TorchServe and every torch we support read, so the warning is noise here.
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(artifact), map_location=device)
        # TorchScript modules keep their own train flag; an exported program has none to flip and
        # was traced in eval mode, so .eval() is only meaningful (and only allowed) for the former.
        return module.eval()
    if fmt == "export":
        return torch.export.load(str(artifact)).module().to(device)
    raise ArtifactError(f"{artifact}: unknown format {fmt!r}; valid: {sorted(FORMATS.values())}")
