"""Violet at test size, for the backbone contract test (see ``meltr.backbones.contract``).

Video 3 frames of 32 px; Swin patch 4, two stages, window 2x2x2 -> a 4x4 token grid, cells of
8 px; width 16; the BERT special tokens at 0..4."""

import torch

from meltr.backbones.contract import TinyBackbone, TinyVocab, bert_text, stack
from meltr.backbones.violet import (
    BlockwiseVideoMask,
    MaskTextTokens,
    Violet,
    VioletLoss,
    load_violet_checkpoint,
)

VOCAB = TinyVocab(vocab_size=40)
FRAMES, SIZE, GRID, CELL, CODES = 3, 32, 4, 8, 11
SIZES = dict(
    vocab_size=VOCAB.vocab_size,
    max_text_positions=12,
    width=16,
    cross_layers=2,
    cross_heads=2,
    cross_inner=32,
    swin_embed_dim=8,
    swin_depths=(2, 2),
    swin_heads=(1, 2),
    swin_window=(2, 2, 2),
    max_frames=4,
    max_grid=5,
    mvm_vocab_size=CODES,
    cls_id=VOCAB.cls_id,
    sep_id=VOCAB.sep_id,
)


def _batch(generator: torch.Generator) -> dict:
    """3 clips with captions, masked by ``MaskTextTokens`` and ``BlockwiseVideoMask``, with
    dVAE codes ``vq`` (the shards' ``vq.npy``)."""
    text_masking = MaskTextTokens(VOCAB, probability=0.5)
    video_masking = BlockwiseVideoMask(cell_size=CELL)
    items = []
    for real in (7, 5, 6):
        ids, mask = bert_text(VOCAB, 7, real, generator)
        video = torch.randn(FRAMES, 3, SIZE, SIZE, generator=generator)
        item = text_masking({"text_ids": ids, "text_mask": mask, "video": video}, generator)
        codes = torch.randint(CODES, (FRAMES, GRID, GRID), generator=generator)
        items.append(video_masking(item, generator) | {"vq": codes.to(torch.int16)})
    return stack(items)


def tiny() -> TinyBackbone:
    return TinyBackbone(
        build=lambda: Violet(**SIZES),
        loss_source=VioletLoss(("vtm", "mtm", "mvm")),
        batch=_batch,
        checkpoint_loader=load_violet_checkpoint,
    )
