"""Checkpoint files: the previous ``last.pt`` is kept, a truncated or corrupt one is refused with
an error naming it, and resuming falls back to the previous good checkpoint with a warning.
(That a run killed with SIGKILL resumes to the same weights is in ``test_train.py``.)"""

from __future__ import annotations

import pytest
import torch

from training.checkpoint import (BEST, LAST, CheckpointError, load_checkpoint, load_resumable, previous_of,
                                 save_checkpoint)


def state(epoch: int) -> dict:
    torch.manual_seed(epoch)
    return {"model": {"w": torch.randn(64, 64)}, "model_name": "tiny_cnn", "epoch": epoch}


def truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def flip_bytes(path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(0, len(data), 97):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


CORRUPTIONS = {
    "truncated": truncate,
    "cut_to_a_header": lambda p: truncate(p, 0.01),
    "empty": lambda p: p.write_bytes(b""),
    "bit_rot": flip_bytes,
    "not_a_torch_file": lambda p: p.write_bytes(b"this is not a checkpoint" * 100),
}


def test_saving_last_keeps_the_previous_one(tmp_path):
    save_checkpoint(tmp_path / LAST, state(1))
    assert not previous_of(tmp_path / LAST).exists()
    save_checkpoint(tmp_path / LAST, state(2))
    assert previous_of(tmp_path / LAST).name == "last.prev.pt"
    assert load_checkpoint(tmp_path / "last.prev.pt")["epoch"] == 1
    assert load_checkpoint(tmp_path / LAST)["epoch"] == 2
    save_checkpoint(tmp_path / BEST, state(2))
    save_checkpoint(tmp_path / BEST, state(3))
    assert not previous_of(tmp_path / BEST).exists(), "only last.pt keeps a previous copy"


@pytest.mark.parametrize("corrupt", sorted(CORRUPTIONS))
def test_a_corrupt_checkpoint_is_a_clear_error_naming_the_file(tmp_path, corrupt):
    path = tmp_path / LAST
    save_checkpoint(path, state(1))
    CORRUPTIONS[corrupt](path)
    with pytest.raises(CheckpointError, match=f"cannot read checkpoint {path}"):
        load_checkpoint(path)


@pytest.mark.parametrize("corrupt", sorted(CORRUPTIONS))
def test_resume_falls_back_to_the_previous_good_checkpoint(tmp_path, corrupt):
    path = tmp_path / LAST
    save_checkpoint(path, state(1))
    save_checkpoint(path, state(2))
    CORRUPTIONS[corrupt](path)
    with pytest.warns(RuntimeWarning, match=rf"{path}.*resuming from the previous checkpoint .*last\.prev\.pt"):
        loaded = load_resumable(path)
    assert loaded["epoch"] == 1
    torch.testing.assert_close(loaded["model"]["w"], state(1)["model"]["w"])


def test_a_good_last_is_loaded_without_a_warning(tmp_path, recwarn):
    save_checkpoint(tmp_path / LAST, state(1))
    save_checkpoint(tmp_path / LAST, state(2))
    assert load_resumable(tmp_path / LAST)["epoch"] == 2
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_no_previous_checkpoint_means_the_error_names_the_file(tmp_path):
    path = tmp_path / LAST
    save_checkpoint(path, state(1))
    truncate(path)
    with pytest.raises(CheckpointError, match=str(path)):
        load_resumable(path)


def test_both_corrupt_names_both_files(tmp_path):
    path = tmp_path / LAST
    save_checkpoint(path, state(1))
    save_checkpoint(path, state(2))
    truncate(path)
    flip_bytes(previous_of(path))
    with pytest.raises(CheckpointError) as info:
        load_resumable(path)
    assert str(path) in str(info.value) and str(previous_of(path)) in str(info.value)


def test_a_missing_last_with_a_previous_one_resumes_from_it(tmp_path):
    """A crash between the two renames of save_checkpoint leaves only last.prev.pt."""
    path = tmp_path / LAST
    save_checkpoint(path, state(1))
    save_checkpoint(path, state(2))
    path.unlink()
    with pytest.warns(RuntimeWarning):
        assert load_resumable(path)["epoch"] == 1


def test_a_dict_that_is_no_checkpoint_is_refused(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a clead training checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
