"""Tiny All-in-one configurations shared by the tests in this folder."""

import pytest
import torch
from allinone_tiny import TINY

from meltr.backbones.allinone import AllInOne


@pytest.fixture
def tiny_model() -> AllInOne:
    torch.manual_seed(0)
    return AllInOne(**TINY)


@pytest.fixture
def tiny_batch() -> dict:
    """Batch of 4 in the layout of docs/ARCHITECTURE.md; sample 1 and 3 are padded."""
    generator = torch.Generator().manual_seed(1)
    batch_size, length = 4, TINY["max_text_len"]
    text_ids = torch.randint(5, TINY["vocab_size"], (batch_size, length), generator=generator)
    text_mask = torch.ones(batch_size, length, dtype=torch.long)
    text_mask[1, 5:] = 0
    text_mask[3, 6:] = 0
    text_ids = text_ids * text_mask
    mlm_labels = torch.full_like(text_ids, -100)
    mlm_labels[0, 2], mlm_labels[1, 1], mlm_labels[2, 4], mlm_labels[3, 3] = 7, 9, 11, 13
    mlm_ids = torch.where(mlm_labels != -100, torch.full_like(text_ids, 3), text_ids)
    size = TINY["image_size"]
    video = torch.randn(batch_size, TINY["num_frames"], 3, size, size, generator=generator)
    return {
        "video": video,
        "text_ids": text_ids,
        "text_mask": text_mask,
        "mlm_ids": mlm_ids,
        "mlm_labels": mlm_labels,
    }
