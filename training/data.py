"""Datasets as uint8 tensors, cached, and a batch loader that augments on tensors.

Accepted sources (``load_split(source, split)``):

* ``cifar10``: torchvision's download (needs internet on first use);
* a directory holding ``train.tar.gz`` / ``test.tar.gz`` ImageFolder tarballs (the layout
  of ``../shared/data/cifar10``);
* a directory holding ``train/`` and ``test/`` ImageFolder trees, or one ImageFolder tree
  (``<class>/<image>``) used for whichever split is asked;
* a tarball of an ImageFolder tree (``.tar``, ``.tar.gz``, ``.tgz``), with or without
  split folders inside;
* a torchvision CIFAR-10 root (a directory containing ``cifar-10-batches-py``).

Decoding 50k JPEGs takes a while on a small CPU, so the decoded uint8 tensor is cached
(``$CLEAD_CACHE`` or ``~/.cache/clead``) and later loads memory-map it in well under 2 s.
Augmentation (random crop with padding, horizontal flip) runs batched on the tensors, on the
training device, so two CPU cores never starve the accelerator.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from training.flags import option

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".ppm", ".tif", ".tiff")
TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")
SPLITS = ("train", "test")
ACCEPTED_FORMS = (
    "'cifar10' (torchvision download); a directory with train.tar.gz/test.tar.gz; "
    "a directory with train/ and test/ ImageFolder trees; one ImageFolder tree "
    "(<class>/<image>); a .tar/.tar.gz/.tgz of an ImageFolder tree; a torchvision "
    "CIFAR-10 root containing cifar-10-batches-py"
)


class DatasetError(ValueError):
    """A data source that cannot be read, with what was expected."""


# Where the project keeps CIFAR-10 beside a checkout (every command's default --data).
DEFAULT_DATA_PATH = "../shared/data/cifar10"


@dataclass
class DataConfig:
    """Where the data comes from and how batches are formed."""

    data: str = option(DEFAULT_DATA_PATH, "--data", "'cifar10' (download) or a path (see training.data)")
    cache_dir: Optional[str] = option(None, "--cache-dir", "decoded-data cache (None: $CLEAD_CACHE or ~/.cache/clead)")
    image_size: int = 32  # images of another size are resized (bilinear) to this square size
    val_size: int = option(1000, "--val-size", "training images held out for validation / early stopping")
    split_seed: int = 0  # seed of the deterministic train/validation split
    limit: Optional[int] = option(None, "--limit", "train on the first N images of the (shuffled) train split")
    batch_size: int = option(128, "--batch-size", "batch size per process (the global batch is this * world size)")
    eval_batch_size: int = 256  # batch size for validation and evaluation
    augment: bool = option(True, "--augment", "random crop (4 px zero padding) + horizontal flip")
    crop_padding: int = 4  # pixels of zero padding before the random crop
    views: Optional[str] = option(None, "--fixed-views", "clead-fixed: file of precomputed adversarial views "
                                                         "(clead-train views)")


@dataclass
class ImageSet:
    """A split in memory: ``images`` uint8 (N, 3, H, W), ``labels`` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor) -> "ImageSet":
        return ImageSet(self.images[index], self.labels[index], list(self.classes))

    def head(self, n: Optional[int]) -> "ImageSet":
        return self if n is None or n >= len(self) else self.subset(torch.arange(n))


# ---------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    return Path(os.environ.get("CLEAD_CACHE", Path.home() / ".cache" / "clead"))


def load_split(source: str, split: str = "train", cache_dir: Optional[str] = None, image_size: int = 32) -> ImageSet:
    """Load one split of a dataset as uint8 tensors, decoding once and caching the result."""
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    if source.strip().lower() == "cifar10" and not Path(source).exists():
        return _cached(cache, f"torchvision-cifar10-{split}", lambda: _torchvision_cifar10(cache / "torchvision", split, True))
    path = Path(source).expanduser()
    if not path.exists():
        raise DatasetError(f"data source {source!r} does not exist. Accepted forms: {ACCEPTED_FORMS}")
    reader, key_path = _resolve(path, split)
    stat = key_path.stat()
    key = f"{key_path.resolve()}|{split}|{stat.st_size}|{stat.st_mtime_ns}|{image_size}"
    name = f"{key_path.name.split('.')[0]}-{split}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
    return _cached(cache, name, lambda: reader(image_size))


def _resolve(path: Path, split: str):
    """Pick the reader for ``path`` and the file whose stat keys the cache."""
    if path.is_file():
        if not path.name.endswith(TAR_SUFFIXES):
            raise DatasetError(f"{path} is a file but not a tarball ({', '.join(TAR_SUFFIXES)}). Accepted forms: {ACCEPTED_FORMS}")
        return (lambda size: _read_tar(path, split, size)), path
    for suffix in TAR_SUFFIXES:
        tar = path / f"{split}{suffix}"
        if tar.is_file():
            return (lambda size: _read_tar(tar, split, size)), tar
    if (path / "cifar-10-batches-py").is_dir():
        return (lambda size: _torchvision_cifar10(path, split, False)), path / "cifar-10-batches-py"
    if (path / split).is_dir():
        return (lambda size: _read_folder(path / split, size)), path / split
    if any(p.is_dir() for p in path.iterdir()) and not any((path / s).exists() for s in SPLITS):
        return (lambda size: _read_folder(path, size)), path
    raise DatasetError(f"{path} holds no {split!r} split. Accepted forms: {ACCEPTED_FORMS}")


def _cached(cache: Path, name: str, build) -> ImageSet:
    file = cache / f"{name}.pt"
    if file.is_file():
        try:
            blob = torch.load(file, weights_only=True, mmap=True)
            return ImageSet(blob["images"], blob["labels"], list(blob["classes"]))
        except (RuntimeError, KeyError, EOFError, OSError) as exc:
            warnings.warn(f"ignoring unreadable cache file {file} ({exc}); decoding again")
    data = build()
    cache.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(file.name + f".{os.getpid()}.tmp")
    torch.save({"images": data.images, "labels": data.labels, "classes": data.classes}, tmp)
    os.replace(tmp, file)
    return data


def _decode(raw: bytes, size: int, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(raw)) as img:
            img = img.convert("RGB")
            if img.size != (size, size):
                img = img.resize((size, size), Image.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(f"cannot decode image {where}: {exc}") from exc


def _stack(samples: list[tuple[str, str, np.ndarray]], origin: Path) -> ImageSet:
    if not samples:
        raise DatasetError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {origin}. Accepted forms: {ACCEPTED_FORMS}")
    samples.sort(key=lambda s: (s[0], s[1]))  # class, then file name: a stable order
    classes = sorted({s[0] for s in samples})
    index = {c: i for i, c in enumerate(classes)}
    images = torch.from_numpy(np.stack([s[2] for s in samples])).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([index[s[0]] for s in samples], dtype=torch.int64)
    return ImageSet(images, labels, classes)


def _read_tar(path: Path, split: str, size: int) -> ImageSet:
    """Read ``.../<class>/<image>`` members; if split folders exist inside, keep ``split``'s."""
    samples: list[tuple[str, str, np.ndarray]] = []
    try:
        with tarfile.open(path, "r:*") as tar:
            members = [m for m in tar if m.isfile() and m.name.lower().endswith(IMAGE_EXTENSIONS)]
            has_splits = any(split_of(m.name) for m in members)
            for m in members:
                parts = Path(m.name).parts
                if len(parts) < 2 or (has_splits and split_of(m.name) != split):
                    continue
                fh = tar.extractfile(m)
                samples.append((parts[-2], parts[-1], _decode(fh.read(), size, f"{path}:{m.name}")))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DatasetError(f"{path} is not a readable tar archive ({exc}); re-download or check the file") from exc
    return _stack(samples, path)


def split_of(member: str) -> Optional[str]:
    parts = Path(member).parts[:-2]
    return next((p for p in parts if p in SPLITS), None)


def _read_folder(root: Path, size: int) -> ImageSet:
    samples = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for file in sorted(class_dir.iterdir()):
            if file.suffix.lower() in IMAGE_EXTENSIONS:
                samples.append((class_dir.name, file.name, _decode(file.read_bytes(), size, str(file))))
    return _stack(samples, root)


def _torchvision_cifar10(root: Path, split: str, download: bool) -> ImageSet:
    from torchvision.datasets import CIFAR10  # heavy import, only when used

    try:
        ds = CIFAR10(str(root), train=split == "train", download=download)
    except RuntimeError as exc:
        raise DatasetError(f"torchvision CIFAR-10 at {root}: {exc}") from exc
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return ImageSet(images, torch.tensor(ds.targets, dtype=torch.int64), list(ds.classes))


def train_val_split(data: ImageSet, val_size: int, seed: int = 0) -> tuple[ImageSet, ImageSet]:
    """Deterministic split: the same ``seed`` always holds out the same ``val_size`` images."""
    if not 0 <= val_size < len(data):
        raise DatasetError(f"val_size must be in [0, {len(data)}), got {val_size}")
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    return data.subset(perm[val_size:].sort().values), data.subset(perm[:val_size].sort().values)


def load_train_val(cfg: DataConfig) -> tuple[ImageSet, ImageSet]:
    """Train split minus the validation hold-out, then ``limit``; and the hold-out.

    With ``cfg.views`` each training image carries its fixed adversarial view as three more
    channels (N, 6, H, W), so shuffling, ``limit`` and crop/flip treat the pair as one image;
    the validation hold-out keeps the clean channels only.
    """
    full = load_split(cfg.data, "train", cfg.cache_dir, cfg.image_size)
    if cfg.views:
        full = with_views(full, cfg.views)
    train, val = train_val_split(full, cfg.val_size, cfg.split_seed) if cfg.val_size else (full, full.head(0))
    val = ImageSet(val.images[:, :3], val.labels, list(val.classes))
    if cfg.limit is not None:
        # A seeded shuffle first, so the first N images cover every class.
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.split_seed + 1))
        train = train.subset(perm[: cfg.limit].sort().values)
    return train, val


def with_views(data: ImageSet, path: str | os.PathLike) -> ImageSet:
    """``data`` with the views file's images appended as channels 3..5 (see ``training.views``)."""
    file = Path(path)
    if not file.is_file():
        raise DatasetError(f"--fixed-views: no such file {file} (make one with `clead-train views`)")
    blob = torch.load(file, weights_only=True, mmap=True)
    views, labels = blob.get("images"), blob.get("labels")
    if views is None or labels is None:
        raise DatasetError(f"{file} is not a views file (no 'images'/'labels'); make one with `clead-train views`")
    if tuple(views.shape) != tuple(data.images.shape) or not torch.equal(labels, data.labels):
        raise DatasetError(
            f"{file} holds views of another dataset: {tuple(views.shape)} images vs the train split's "
            f"{tuple(data.images.shape)}, or other labels; regenerate it with `clead-train views` on this --data")
    return ImageSet(torch.cat([data.images, views], dim=1), data.labels, list(data.classes))


# ---------------------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------------------
def random_crop_flip(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Random crop after zero padding, and horizontal flip, for a whole batch at once."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=generator) < 0.5
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dev = x.device
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    rows = (dy[:, None] + torch.arange(h)[None]).to(dev)  # (n, h)
    cols = dx[:, None] + torch.arange(w)[None]  # (n, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols).to(dev)
    batch = torch.arange(n, device=dev)[:, None, None]
    # Gather (n, h, w, c) then back to NCHW.
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


class BatchLoader:
    """Yields ``(x, y)`` with ``x`` float [0, 1] NCHW on ``device``.

    The uint8 images move to the device once; shuffling and augmentation are seeded by
    ``seed + epoch`` (call ``set_epoch``), so a resumed run sees the same batches. With
    ``world_size > 1`` each rank takes a disjoint shard of every epoch's permutation, padded
    so all ranks run the same number of steps (as DistributedSampler does).
    """

    def __init__(
        self,
        data: ImageSet,
        batch_size: int,
        device: torch.device | str = "cpu",
        shuffle: bool = False,
        augment: bool = False,
        padding: int = 4,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.images = data.images.to(self.device)
        self.labels = data.labels.to(self.device)
        self.batch_size, self.shuffle, self.augment, self.padding = batch_size, shuffle, augment, padding
        self.drop_last, self.seed, self.rank, self.world_size = drop_last, seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self, generator: torch.Generator) -> torch.Tensor:
        n = len(self.labels)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        if self.world_size > 1:
            per_rank = -(-n // self.world_size)
            order = torch.cat([order, order[: per_rank * self.world_size - n]])
            order = order[self.rank :: self.world_size]
        return order

    def __len__(self) -> int:
        n = -(-len(self.labels) // self.world_size)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = self._indices(generator)
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size].to(self.device)
            x = self.images[idx].float().div_(255)
            if self.augment:
                x = random_crop_flip(x, self.padding, generator)
            yield x, self.labels[idx]
