"""Sample images for the demo's gallery, read at run time from the CIFAR-10 test tarball
already on the machine (the repo must not carry copies of CIFAR-10).

The tarball holds ``cifar10/test/<class>/<nnnn>.jpg``; the gallery takes the first few
files of each class by name, so it is the same set on every machine.
"""

from __future__ import annotations

import os
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

DATA_ENV = "CLEAD_DATA"  # overrides the default data folder, like --data
TEST_TARBALL = "test.tar.gz"


@dataclass(frozen=True)
class Sample:
    path: Path  # an extracted JPEG, in a temporary folder the app may serve
    label: str  # the true CIFAR-10 class


def default_data_dir() -> Path:
    """``$CLEAD_DATA``, else ``../shared/data/cifar10`` beside the repository."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"


def load_samples(data_dir: Optional[str | Path] = None, per_class: int = 1, out_dir: Optional[Path] = None) -> list[Sample]:
    """Extract ``per_class`` test images of every class; raise FileNotFoundError if no tarball."""
    data_dir = Path(data_dir) if data_dir else default_data_dir()
    tarball = data_dir / TEST_TARBALL if data_dir.is_dir() else data_dir
    if not tarball.is_file():
        raise FileNotFoundError(f"no CIFAR-10 test tarball at {tarball} (set --data or ${DATA_ENV})")
    chosen: dict[str, list[str]] = {}
    with tarfile.open(tarball, "r:gz") as tar:
        names = [m.name for m in tar.getmembers() if m.isfile() and m.name.lower().endswith(".jpg")]
        for name in sorted(names):
            parts = Path(name).parts
            if len(parts) < 2:
                continue
            files = chosen.setdefault(parts[-2], [])
            if len(files) < per_class:
                files.append(name)
        out_dir = out_dir or Path(tempfile.mkdtemp(prefix="clead-demo-gallery-"))
        samples = []
        for label in sorted(chosen):
            for name in chosen[label]:
                target = out_dir / f"{label}_{Path(name).name}"
                extracted = tar.extractfile(name)
                if extracted is None:
                    continue
                target.write_bytes(extracted.read())
                samples.append(Sample(target, label))
    if not samples:
        raise FileNotFoundError(f"{tarball} holds no <class>/<file>.jpg images")
    return samples
