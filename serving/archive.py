"""Build a TorchServe model archive (``.mar``) from an exported artifact.

The archive holds the artifact, its metadata JSON, the handler, a copy of the ``serving``
modules the handler needs (so the ``.mar`` runs under any TorchServe, KServe's included,
without this project installed) and a ``model-config.yaml`` with the batching settings.
``torch-model-archiver`` does the packing; we only stage the files.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from serving.artifact import metadata_path, verify_artifact
from serving.settings import Limits, RunOptions, handler_section

SERVING_DIR = Path(__file__).resolve().parent
# What the handler (ts_handler.py) imports at run time, directly or through the predictor; nothing
# else of the package goes into the archive (tests/serving/test_layout.py checks the list is complete).
PACKAGED_MODULES = ("__init__.py", "artifact.py", "errors.py", "predictor.py", "handler_metrics.py", "settings.py",
                    "suspicion.py")


@dataclass
class ArchiveConfig:
    """TorchServe per-model settings written to model-config.yaml."""

    batch_size: int = 8  # most requests TorchServe groups into one handler call
    # How long TorchServe waits to fill a batch. Measured (docs/benchmarks.md, configuration
    # sweep, 2-core CPU): 50 ms capped one client at ~17 req/s (every lone request waited the
    # full window); 2 ms gave ~7x that at concurrency 1 and the same throughput at 32, where
    # queued requests fill the batch anyway.
    max_batch_delay_ms: int = 2
    workers: int = 1  # worker processes per model (each loads its own copy)
    response_timeout_s: int = 120  # a worker that takes longer is restarted
    limits: Limits = field(default_factory=Limits)  # written to model-config.yaml's handler: section
    options: RunOptions = field(default_factory=RunOptions)  # ... and so are these
    # The archive's --handler: ours, or another file / stock handler name (the benchmarks
    # serve the same artifact with TorchServe's stock image classifier as an anchor).
    handler: str = str(SERVING_DIR / "ts_handler.py")

    def model_config(self) -> dict:
        return {
            "minWorkers": self.workers,
            "maxWorkers": self.workers,
            "batchSize": self.batch_size,
            "maxBatchDelay": self.max_batch_delay_ms,
            "responseTimeout": self.response_timeout_s,
            "handler": handler_section(self.limits, self.options),
        }


def build_archive(
    artifact: str | Path,
    name: str,
    export_dir: str | Path,
    version: str | None = None,
    config: ArchiveConfig | None = None,
) -> Path:
    """Verify ``artifact`` (sha256) and pack it as ``<export_dir>/<name>.mar``; returns that path."""
    artifact = Path(artifact).resolve()
    meta = verify_artifact(artifact)
    config = config or ArchiveConfig()
    export_dir = Path(export_dir).resolve()
    export_dir.mkdir(parents=True, exist_ok=True)
    version = str(version or meta.get("version") or "1.0")
    with tempfile.TemporaryDirectory(prefix=f"clead-mar-{name}-") as tmp:
        stage = Path(tmp) / "extra"
        (stage / "serving").mkdir(parents=True)
        for module in PACKAGED_MODULES:
            shutil.copy2(SERVING_DIR / module, stage / "serving" / module)
        shutil.copy2(metadata_path(artifact), stage / metadata_path(artifact).name)
        config_file = Path(tmp) / "model-config.yaml"
        config_file.write_text(yaml.safe_dump(config.model_config(), sort_keys=False))
        cmd = [
            sys.executable, "-m", "model_archiver.model_packaging",
            "--model-name", name,
            "--version", version,
            "--serialized-file", str(artifact),
            "--handler", config.handler,
            "--extra-files", str(stage),  # a folder: its contents land at the archive root
            "--config-file", str(config_file),
            "--export-path", str(export_dir),
            "--force",
        ]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(
                f"torch-model-archiver failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}\n"
                "is the 'serving' extra installed? pip install -e '.[serving]'"
            )
    mar = export_dir / f"{name}.mar"
    if not mar.is_file():
        raise RuntimeError(f"torch-model-archiver reported success but {mar} is missing")
    return mar
