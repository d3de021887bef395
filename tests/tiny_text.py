"""Tiny BERT-style inputs and weights shared by the backbones' tests (Violet, ALPRO): texts over a
vocabulary whose ids 0..4 are [PAD], [UNK], [CLS], [SEP], [MASK], and a redraw of a tiny model's
weights that keeps its outputs for different inputs apart."""

from collections.abc import Callable

import torch
from torch import nn

PAD, UNK, CLS, SEP, MASK = range(5)


def bert_texts(
    batch: int, length: int, vocab_size: int, generator: torch.Generator, lengths=None
) -> tuple:
    """``[CLS] words [SEP] [PAD]...`` ids and masks, int64 ``[batch, length]`` (words drawn from
    ids ``5 .. vocab_size - 1``); ``lengths`` (real tokens incl. [CLS] and [SEP]) default to a
    mix of full and padded texts."""
    lengths = lengths or [length - (i % 3) for i in range(batch)]
    ids = torch.full((batch, length), PAD)
    mask = torch.zeros(batch, length, dtype=torch.long)
    for row, real in enumerate(lengths):
        ids[row, 0], ids[row, real - 1] = CLS, SEP
        ids[row, 1 : real - 1] = torch.randint(5, vocab_size, (real - 2,), generator=generator)
        mask[row, :real] = 1
    return ids, mask


def redraw_weights(model: nn.Module, gain: float, keep: Callable[[str], bool]) -> nn.Module:
    """Redraw, in place, every parameter of ``model`` whose name ``keep`` rejects: matrices and
    tables with std ``gain / sqrt(fan_in)``, biases with std 0.1 (the global torch RNG)."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if keep(name):
                continue
            if parameter.dim() >= 2:
                parameter.normal_(0.0, gain / parameter.shape[-1] ** 0.5)
            elif name.endswith("bias"):
                parameter.normal_(0.0, 0.1)
    return model
