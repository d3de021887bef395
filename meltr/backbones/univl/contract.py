"""UniVL at test size, for the backbone contract test (see ``meltr.backbones.contract``): width
16, two layers per encoder and in the decoder, 10-dimensional frame features, every loss
(the eight pretraining losses and the sentiment regression)."""

import torch

from meltr.backbones.contract import TinyBackbone, TinyVocab, bert_text, stack
from meltr.backbones.univl import (
    UniVL,
    UniVLDecoderInputs,
    UniVLLoss,
    UniVLMasking,
    load_univl_checkpoint,
)
from meltr.backbones.univl.losses import TASKS

VOCAB = TinyVocab(vocab_size=30)
TEXT_LENGTH, FRAMES, FEATURES = 8, 5, 10
SIZES = dict(
    vocab_size=VOCAB.vocab_size,
    hidden_size=16,
    heads=2,
    intermediate_size=24,
    text_layers=2,
    visual_layers=2,
    cross_layers=2,
    decoder_layers=2,
    max_text_positions=12,
    max_frame_positions=8,
    max_cross_positions=20,
    video_dim=FEATURES,
    sentiment_head=True,
)


def _batch(generator: torch.Generator) -> dict:
    """4 feature sequences (some frames padded) with captions and sentiment labels, through
    ``UniVLMasking`` and ``UniVLDecoderInputs``."""
    masking, decoder_inputs = UniVLMasking(VOCAB), UniVLDecoderInputs(VOCAB)
    items = []
    for real, frames in zip((8, 5, 3, 6), (5, 3, 1, 4), strict=True):
        ids, mask = bert_text(VOCAB, TEXT_LENGTH, real, generator)
        features = torch.zeros(FRAMES, FEATURES)
        features[:frames] = torch.randn(frames, FEATURES, generator=generator)
        item = {
            "text_ids": ids,
            "text_mask": mask,
            "features": features,
            "feature_mask": (torch.arange(FRAMES) < frames).long(),
            "label": 3 * torch.rand((), generator=generator) - 1.5,
        }
        items.append(decoder_inputs(masking(item, generator), generator))
    return stack(items)


def tiny() -> TinyBackbone:
    return TinyBackbone(
        build=lambda: UniVL(**SIZES),
        loss_source=UniVLLoss(("align", *(task for task in TASKS if task != "align"))),
        batch=_batch,
        checkpoint_loader=load_univl_checkpoint,
    )
