import errno
import io
import random

import numpy as np
import pytest
import torch

from meltr.train import single_file
from meltr.train.checkpointing import (
    CheckpointError,
    capture_rng_state,
    read_training_file,
    restore_rng_state,
)
from meltr.train.single_file import save_atomic


def test_crash_while_saving_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.pt"
    save_atomic({"step": 1, "weights": torch.arange(4.0)}, path)

    def crash_halfway(obj, file):
        file.write(b"PK\x03\x04 half a zip file")
        raise KeyboardInterrupt  # e.g. the job is killed while writing

    monkeypatch.setattr(single_file.torch, "save", crash_halfway)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"step": 2, "weights": torch.zeros(4)}, path)

    restored = torch.load(path, weights_only=True)
    assert restored["step"] == 1
    assert torch.equal(restored["weights"], torch.arange(4.0))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left


class FullDisk:
    """A file on a disk with ``room`` bytes left: a longer write raises ENOSPC, as the kernel's."""

    def __init__(self, file, room: int) -> None:
        self.file, self.room = file, room

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.file.close()


def test_a_full_disk_raises_enospc_and_leaves_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_atomic({"step": 1, "weights": torch.arange(4.0)}, path)
    real_fdopen = single_file.os.fdopen
    monkeypatch.setattr(
        single_file.os, "fdopen", lambda *args: FullDisk(real_fdopen(*args), room=2000)
    )
    # torch.save itself turns the failed write into "RuntimeError: ... unexpected pos ..."
    with pytest.raises(RuntimeError, match="unexpected pos"):
        torch.save({"weights": torch.zeros(10_000)}, FullDisk(io.BytesIO(), room=2000))
    with pytest.raises(OSError) as raised:
        save_atomic({"step": 2, "weights": torch.zeros(10_000)}, path)
    assert raised.value.errno == errno.ENOSPC
    assert torch.load(path, weights_only=True)["step"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left


def test_save_replaces_existing_file(tmp_path):
    path = tmp_path / "best.pt"
    save_atomic({"step": 1}, path)
    save_atomic({"step": 2}, path)
    assert torch.load(path, weights_only=True) == {"step": 2}


def test_rng_state_round_trip_reproduces_all_generators():
    state = capture_rng_state()
    first = (torch.rand(3), random.random(), np.random.rand(3))
    restore_rng_state(state)
    second = (torch.rand(3), random.random(), np.random.rand(3))
    assert torch.equal(first[0], second[0])
    assert first[1] == second[1]
    assert np.array_equal(first[2], second[2])


def test_foreign_file_is_refused_with_its_name(tmp_path):
    path = tmp_path / "official.ckpt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="official.ckpt"):
        read_training_file(path)
