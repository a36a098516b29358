"""Data loading (shared CIFAR-10, ImageFolder dirs and tarballs), errors, augmentation, sharding."""

from __future__ import annotations

import gzip
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training import CIFAR10_CLASSES
from training.data import BatchLoader, DatasetError, ImageSet, load_split, random_crop_flip, train_val_split

CLASSES = ("cat", "dog")


# ---------------------------------------------------------------------------------------
# The shared CIFAR-10
# ---------------------------------------------------------------------------------------
@pytest.mark.cifar
def test_shared_cifar10_test_split(cifar_root):
    test = load_split(str(cifar_root), "test")
    assert len(test) == 8000
    assert tuple(test.classes) == CIFAR10_CLASSES  # standard label order
    assert test.images.shape == (8000, 3, 32, 32) and test.images.dtype == torch.uint8
    assert torch.bincount(test.labels, minlength=10).tolist() == [800] * 10
    assert test.images.float().std() > 20  # decoded pixels, not an empty buffer


@pytest.mark.cifar
def test_shared_cifar10_second_load_is_fast(cifar_root):
    load_split(str(cifar_root), "train")  # decodes and caches on a first run
    start = time.perf_counter()
    train = load_split(str(cifar_root), "train")
    seconds = time.perf_counter() - start
    assert len(train) == 50_000 and tuple(train.classes) == CIFAR10_CLASSES
    assert seconds < 2.0, f"cached load took {seconds:.2f} s"


# ---------------------------------------------------------------------------------------
# Generated ImageFolder fixtures
# ---------------------------------------------------------------------------------------
def _write_folder(root: Path, per_class: int = 3, size: int = 32) -> dict[str, np.ndarray]:
    """``root/<class>/<i>.png`` with distinct random images; returns name -> pixels."""
    rng = np.random.default_rng(0)
    written = {}
    for c in CLASSES:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.png")
            written[f"{c}/{i}"] = pixels
    return written


def _tar(src: Path, out: Path, arcname: str) -> Path:
    with tarfile.open(out, "w:gz") as tar:
        tar.add(src, arcname=arcname)
    return out


def _check(data: ImageSet, written: dict[str, np.ndarray]) -> None:
    assert data.classes == list(CLASSES)
    assert len(data) == len(written)
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    # Sorted by class then file name: image k of class c is file c/k.png, pixel-exact (PNG).
    for k, (name, pixels) in enumerate(sorted(written.items())):
        assert torch.equal(data.images[k], torch.from_numpy(pixels).permute(2, 0, 1)), name


def test_image_folder_dir_loads(tmp_path):
    written = _write_folder(tmp_path / "imgs")
    _check(load_split(str(tmp_path / "imgs"), "test", cache_dir=str(tmp_path / "cache")), written)


def test_split_folders_load(tmp_path):
    written = _write_folder(tmp_path / "ds" / "train")
    _write_folder(tmp_path / "ds" / "test", per_class=1)
    cache = str(tmp_path / "cache")
    _check(load_split(str(tmp_path / "ds"), "train", cache_dir=cache), written)
    assert len(load_split(str(tmp_path / "ds"), "test", cache_dir=cache)) == 2


def test_tarball_of_image_folder_loads(tmp_path):
    written = _write_folder(tmp_path / "imgs")
    tar = _tar(tmp_path / "imgs", tmp_path / "imgs.tar.gz", "imgs")
    _check(load_split(str(tar), "train", cache_dir=str(tmp_path / "cache")), written)


def test_split_tarballs_dir_loads(tmp_path):
    """The layout of the shared CIFAR-10: <dir>/test.tar.gz holding <name>/test/<class>/<img>."""
    written = _write_folder(tmp_path / "src" / "test")
    (tmp_path / "ds").mkdir()
    _tar(tmp_path / "src", tmp_path / "ds" / "test.tar.gz", "mini")
    _check(load_split(str(tmp_path / "ds"), "test", cache_dir=str(tmp_path / "cache")), written)


def test_images_of_another_size_are_resized(tmp_path):
    _write_folder(tmp_path / "imgs", size=20)
    data = load_split(str(tmp_path / "imgs"), "test", cache_dir=str(tmp_path / "cache"))
    assert data.images.shape == (6, 3, 32, 32)


# ---------------------------------------------------------------------------------------
# Errors a user can act on
# ---------------------------------------------------------------------------------------
def test_missing_path_names_accepted_forms(tmp_path):
    with pytest.raises(DatasetError, match="does not exist") as info:
        load_split(str(tmp_path / "nope"), "test", cache_dir=str(tmp_path))
    assert "Accepted forms" in str(info.value) and "ImageFolder" in str(info.value)


def test_unknown_split_lists_valid_ones(tmp_path):
    _write_folder(tmp_path / "imgs")
    with pytest.raises(DatasetError, match="unknown split 'val'.*train, test"):
        load_split(str(tmp_path / "imgs"), "val", cache_dir=str(tmp_path / "cache"))


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_tarball_raises_dataset_error(tmp_path, damage):
    _write_folder(tmp_path / "src" / "test", per_class=20)
    tar = _tar(tmp_path / "src", tmp_path / "test.tar.gz", "mini")
    (tmp_path / "ds").mkdir()
    target = tmp_path / "ds" / "test.tar.gz"
    if damage == "garbage":
        target.write_bytes(b"this is not a tarball" * 100)
    else:
        target.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    with pytest.raises(DatasetError, match="not a readable tar archive"):
        load_split(str(tmp_path / "ds"), "test", cache_dir=str(tmp_path / "cache"))


def test_corrupt_image_inside_tarball_is_named(tmp_path):
    _write_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "cat" / "9.png").write_bytes(b"not a png")
    tar = _tar(tmp_path / "imgs", tmp_path / "imgs.tar", "imgs")
    with pytest.raises(DatasetError, match="cannot decode image .*9.png"):
        load_split(str(tar), "test", cache_dir=str(tmp_path / "cache"))


def test_plain_file_and_empty_folder_are_rejected(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DatasetError, match="not a tarball"):
        load_split(str(tmp_path / "notes.txt"), "test", cache_dir=str(tmp_path / "cache"))
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images"):
        load_split(str(tmp_path / "empty"), "test", cache_dir=str(tmp_path / "cache"))


def test_gzip_of_non_tar_is_rejected(tmp_path):
    (tmp_path / "ds").mkdir()
    with gzip.open(tmp_path / "ds" / "test.tar.gz", "wb") as fh:
        fh.write(b"\x00" * 10 + b"plain gzip, no tar inside" * 50)
    with pytest.raises(DatasetError):
        load_split(str(tmp_path / "ds"), "test", cache_dir=str(tmp_path / "cache"))


# ---------------------------------------------------------------------------------------
# Augmentation, splitting and batching
# ---------------------------------------------------------------------------------------
def _images(n=16, size=8, seed=0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_augmentation_keeps_shape_and_range_and_is_seeded():
    x = _images()
    a = random_crop_flip(x, 2, torch.Generator().manual_seed(1))
    b = random_crop_flip(x, 2, torch.Generator().manual_seed(1))
    c = random_crop_flip(x, 2, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_augmentation_without_padding_is_identity_or_flip():
    x = _images()
    out = random_crop_flip(x, 0, torch.Generator().manual_seed(0))
    flipped = [torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x)]
    kept = [torch.equal(o, xi) for o, xi in zip(out, x)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert any(flipped) and any(kept)


def test_augmentation_crop_is_a_shift_with_zero_padding():
    x = torch.ones(64, 3, 8, 8)
    out = random_crop_flip(x, 4, torch.Generator().manual_seed(0))
    # Every crop keeps a block of ones (the image) and zero padding around it.
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    assert (out.flatten(1).sum(1) >= 3 * 4 * 4).all()


def _ids(n: int) -> ImageSet:
    """Images whose labels are their own index, to track which ones a loader yields."""
    return ImageSet(torch.zeros(n, 3, 4, 4, dtype=torch.uint8), torch.arange(n))


def test_train_val_split_is_deterministic_and_disjoint():
    data = _ids(100)
    train, val = train_val_split(data, 20, seed=3)
    train2, val2 = train_val_split(data, 20, seed=3)
    _, val3 = train_val_split(data, 20, seed=4)
    assert len(train) == 80 and len(val) == 20
    assert torch.equal(val.labels, val2.labels) and torch.equal(train.labels, train2.labels)
    assert not torch.equal(val.labels, val3.labels)
    assert not set(train.labels.tolist()) & set(val.labels.tolist())
    assert set(train.labels.tolist()) | set(val.labels.tolist()) == set(range(100))
    with pytest.raises(DatasetError):
        train_val_split(data, 100)


@pytest.mark.parametrize("n", [100, 101])
def test_sharded_loader_covers_everything_disjointly(n):
    data = _ids(n)
    seen = []
    for rank in range(2):
        loader = BatchLoader(data, 16, shuffle=True, seed=5, rank=rank, world_size=2)
        loader.set_epoch(1)
        seen.append(torch.cat([y for _, y in loader]).tolist())
    assert len(seen[0]) == len(seen[1]) == -(-n // 2)  # same step count on every rank
    assert set(seen[0]) | set(seen[1]) == set(range(n))
    # Disjoint, except the one sample padded onto the last rank when n is odd.
    assert len(set(seen[0]) & set(seen[1])) == n % 2


def test_loader_batches_are_unit_floats_and_epoch_seeded():
    data = ImageSet(torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8), torch.arange(40))
    loader = BatchLoader(data, 16, shuffle=True, augment=True, padding=2, seed=0)
    assert len(loader) == 3
    x, y = next(iter(loader))
    assert x.dtype == torch.float32 and x.shape == (16, 3, 8, 8) and 0 <= x.min() and x.max() <= 1
    order = lambda epoch: (loader.set_epoch(epoch), torch.cat([b for _, b in loader]))[1]  # noqa: E731
    assert torch.equal(order(0), order(0)) and not torch.equal(order(0), order(1))
    assert len(BatchLoader(data, 16, drop_last=True)) == 2
