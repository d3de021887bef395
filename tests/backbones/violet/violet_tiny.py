"""The tiny Violet configuration and batch builders used by the tests in this folder.

Video 3 frames of 32 px; Swin patch 4, two stages, window 2x2x2 (so both temporal and spatial
shifts run) -> a 4x4 token grid, cells of 8 px; width 16; vocabulary of 40 with the BERT special
tokens at 0..4 ([PAD], [UNK], [CLS], [SEP], [MASK])."""

import torch
from tiny_text import CLS, MASK, SEP, bert_texts, redraw_weights  # noqa: F401 (ids re-exported)

from meltr.backbones.violet import Violet
from meltr.backbones.violet.contract import CELL, FRAMES, GRID, SIZE, SIZES  # noqa: F401

TINY = SIZES | dict(swin_drop_path=0.1)  # the contract's sizes, with drop path in the Swin
# Keyword arguments of official_violet.violet_shapes() matching TINY.
TINY_OFFICIAL = dict(
    vocab=40,
    positions=12,
    width=16,
    layers=2,
    inner=32,
    embed=8,
    depths=(2, 2),
    heads=(1, 2),
    window=(2, 2, 2),
    patch=(2, 4, 4),
    frames=4,
    grid=5,
    codes=11,
)


def tiny_model(seed: int = 0, **heads) -> Violet:
    """A tiny Violet whose weights outside the Swin are redrawn with std ``2 / sqrt(fan_in)``
    (biases std 0.1): at these widths BERT's std 0.02 leaves every readout nearly the same
    (all scores within 1e-3), under which a wrong pairing or a wrong input would go unnoticed."""
    torch.manual_seed(seed)
    model = Violet(**TINY, **heads)
    return redraw_weights(model, 2.0, keep=lambda name: name.startswith("enc_img.swin."))


def texts(batch: int, length: int, generator: torch.Generator, lengths=None) -> tuple:
    """``bert_texts`` over the tiny vocabulary."""
    return bert_texts(batch, length, TINY["vocab_size"], generator, lengths)


def videos(batch: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(batch, FRAMES, 3, SIZE, SIZE, generator=generator)
