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
