"""Violet's per-item training transforms (docs/ARCHITECTURE.md, "Transforms"): text masking for
MTM and blockwise video masking for MVM, as the release draws them; and the text the release
composes for each multiple-choice option (the decoder's ``choice_text``).

Each transform is called as ``transform(item, generator) -> new dict`` on one decoded training
item (no batch dimension), takes every random choice from ``generator`` and never mutates its
input.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from meltr.data.text import IGNORE_INDEX, MaskingVocab
from meltr.data.transforms import IMAGENET_MEAN, IMAGENET_STD

FILLS = ("black", "zero")


def release_choice_text(question: str, option: str, options: Sequence[str]) -> str:
    """The text of one multiple-choice option as MELTR's violet/ (and the Violet release) build
    it: ``question + "Options: " + " ".join(options) + "Answer: " + option``, with no space
    between the parts (so ``"... 3 times ?Options: jump roll ... fingersAnswer: roll"``: the
    tokenizer splits "?" from "Options" but reads "fingersAnswer" as one word, as the release's
    model saw it)."""
    return f"{question}Options: {' '.join(options)}Answer: {option}"


class MaskTextTokens:
    """MTM masking: each real, non-special token is replaced by [MASK] with ``probability``
    (always [MASK]: no 80/10/10), drawn again until at least one token of the text is masked.

    Reads ``item[ids_key]`` / ``item[mask_key]`` (int64 ``[L]``, or ``[..., L]``: one text per
    row, each guaranteed a masked token) and adds ``item[prefix + "_ids"]`` (the masked ids) and
    ``item[prefix + "_labels"]`` (the original id where masked, -100 elsewhere). Special tokens
    are the tokenizer's ``special_ids`` ([PAD], [UNK], [CLS], [SEP], [MASK]; the release excludes
    only [CLS], [SEP] and [PAD]). A text without a maskable token is left unmasked (all labels
    -100), where the release would loop for ever. ``tokenizer`` is any object with ``mask_id``
    and ``special_ids`` (``meltr.data.text.WordPieceTokenizer``).
    """

    def __init__(
        self,
        tokenizer: MaskingVocab,
        probability: float = 0.15,
        ids_key: str = "text_ids",
        mask_key: str = "text_mask",
        prefix: str = "mtm",
    ) -> None:
        if not 0.0 < probability <= 1.0:
            raise ValueError(f"probability must be in (0, 1], got {probability}")
        self.mask_id = tokenizer.mask_id
        self.special_ids = torch.tensor(sorted(tokenizer.special_ids))
        self.probability = probability
        self.ids_key, self.mask_key, self.prefix = ids_key, mask_key, prefix

    def __call__(self, item: dict, generator: torch.Generator) -> dict:
        for key in (self.ids_key, self.mask_key):
            if key not in item:
                raise KeyError(f"MaskTextTokens: the item lacks {key!r}; it has {sorted(item)}")
        ids, attention = item[self.ids_key], item[self.mask_key]
        if ids.shape != attention.shape:
            raise ValueError(
                f"MaskTextTokens: {self.ids_key} {tuple(ids.shape)} and {self.mask_key} "
                f"{tuple(attention.shape)} differ in shape"
            )
        maskable = attention.bool() & ~torch.isin(ids, self.special_ids.to(ids.dtype))
        selected = torch.zeros_like(maskable)
        pending = maskable.any(-1)
        while pending.any():
            draw = maskable & (torch.rand(ids.shape, generator=generator) < self.probability)
            selected = torch.where(pending[..., None], draw, selected)
            pending = pending & ~selected.any(-1)
        return {
            **item,
            f"{self.prefix}_ids": torch.where(selected, torch.full_like(ids, self.mask_id), ids),
            f"{self.prefix}_labels": torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX)),
        }


def block_extent_limit(cells: int) -> int:
    """The largest block side along an axis of ``cells`` cells: ``cells * 2 // 3 - 1`` (3 of 7,
    the release's ``randint(1, cells * 2 // 3)``), at least 1."""
    return max(1, cells * 2 // 3 - 1)


def blockwise_mask(frames: int, rows: int, cols: int, generator: torch.Generator) -> Tensor:
    """bool ``[frames, rows, cols]``: the union of ``frames`` random blocks.

    Each block spans ``t`` frames, ``h`` rows and ``w`` columns, with ``t`` uniform in
    ``[1, frames - 1]`` (1 for a single frame), ``h`` in ``[1, block_extent_limit(rows)]``, ``w``
    in ``[1, block_extent_limit(cols)]``, at an offset uniform over the positions where it fits;
    draws per block in the order t, h, w, then the three offsets.
    """
    mask = torch.zeros(frames, rows, cols, dtype=torch.bool)

    def uniform(low: int, high: int) -> int:
        return int(torch.randint(low, high + 1, (), generator=generator))

    for _ in range(frames):
        t = uniform(1, frames - 1) if frames > 1 else 1
        h = uniform(1, block_extent_limit(rows))
        w = uniform(1, block_extent_limit(cols))
        t0, h0, w0 = uniform(0, frames - t), uniform(0, rows - h), uniform(0, cols - w)
        mask[t0 : t0 + t, h0 : h0 + h, w0 : w0 + w] = True
    return mask


class BlockwiseVideoMask:
    """MVM masking: a :func:`blockwise_mask` over the video's grid of ``cell_size`` pixel cells
    (32 px: the 7x7 token and dVAE-code grid at 224 px), and the masked cells' pixels filled.

    Reads ``item[video_key]`` float ``[F, 3, S, S]`` (ImageNet-normalised, S a multiple of
    ``cell_size``) and adds ``item["mvm_mask"]`` bool ``[F, S / cell, S / cell]`` and
    ``item["masked_video"]`` (the video with every pixel of a masked cell set to the fill).
    ``fill="black"`` writes the normalised value of a black pixel, which is what the release
    does (it zeroes pixels in [0, 1] before its model normalises them); ``fill="zero"`` writes 0
    in normalised space (the mean colour).
    """

    def __init__(self, cell_size: int = 32, fill: str = "black", video_key: str = "video") -> None:
        if cell_size < 1:
            raise ValueError(f"cell_size must be positive, got {cell_size}")
        if fill not in FILLS:
            raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
        self.cell_size, self.video_key = cell_size, video_key
        black = [-mean / std for mean, std in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]
        self.fill_value = torch.tensor(black if fill == "black" else [0.0, 0.0, 0.0])

    def __call__(self, item: dict, generator: torch.Generator) -> dict:
        if self.video_key not in item:
            raise KeyError(f"BlockwiseVideoMask: the item lacks {self.video_key!r}")
        video = item[self.video_key]
        if video.dim() != 4 or video.shape[1] != 3:
            raise ValueError(
                f"BlockwiseVideoMask: {self.video_key} must be [F, 3, S, S], got "
                f"{tuple(video.shape)}"
            )
        frames, _, height, width = video.shape
        if height % self.cell_size or width % self.cell_size:
            raise ValueError(
                f"BlockwiseVideoMask: frame size {height}x{width} is not a multiple of "
                f"cell_size={self.cell_size}"
            )
        cells = blockwise_mask(frames, height // self.cell_size, width // self.cell_size, generator)
        pixels = cells.repeat_interleave(self.cell_size, 1).repeat_interleave(self.cell_size, 2)
        fill = self.fill_value.to(video.dtype)[:, None, None]
        masked = torch.where(pixels[:, None], fill, video)
        return {**item, "mvm_mask": cells, "masked_video": masked}
