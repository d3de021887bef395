"""Checks of the inputs a backbone's ``forward`` receives, with errors that name the input."""

from __future__ import annotations

import torch
from torch import Tensor


def checked_text(
    text_ids: Tensor | None,
    text_mask: Tensor | None,
    max_length: int,
    name: str = "text_ids",
    mask_name: str = "text_mask",
) -> tuple[Tensor, Tensor]:
    """``(text_ids, mask as bool)`` for token ids ``[B, L]`` with ``L <= max_length`` and a mask of
    the same shape (all ones when None); ValueError naming the input (``name``, ``mask_name``)
    and the shapes otherwise."""
    if text_ids is None:
        raise ValueError(f"{name} is required for this mode")
    if text_ids.dim() != 2 or text_ids.shape[1] > max_length:
        raise ValueError(
            f"{name} must be [B, L] with L <= {max_length}, got {tuple(text_ids.shape)}"
        )
    if text_mask is None:
        return text_ids, torch.ones_like(text_ids, dtype=torch.bool)
    if text_mask.shape != text_ids.shape:
        raise ValueError(
            f"{mask_name} has shape {tuple(text_mask.shape)}, {name} {tuple(text_ids.shape)}"
        )
    return text_ids, text_mask.bool()
