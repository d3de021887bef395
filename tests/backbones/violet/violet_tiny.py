"""The tiny Violet configuration and batch builders used by the tests in this folder.

Video 3 frames of 32 px; Swin patch 4, two stages, window 2x2x2 (so both temporal and spatial
shifts run) -> a 4x4 token grid, cells of 8 px; width 16; vocabulary of 40 with the BERT special
tokens at 0..4 ([PAD], [UNK], [CLS], [SEP], [MASK])."""

import torch

from meltr.backbones.violet import Violet

PAD, UNK, CLS, SEP, MASK = range(5)
FRAMES, SIZE, GRID, CELL = 3, 32, 4, 8
TINY = dict(
    vocab_size=40,
    max_text_positions=12,
    width=16,
    cross_layers=2,
    cross_heads=2,
    cross_inner=32,
    swin_embed_dim=8,
    swin_depths=(2, 2),
    swin_heads=(1, 2),
    swin_window=(2, 2, 2),
    swin_drop_path=0.1,
    max_frames=4,
    max_grid=5,
    mvm_vocab_size=11,
    cls_id=CLS,
    sep_id=SEP,
)
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
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.startswith("enc_img.swin."):
                continue
            if parameter.dim() >= 2:
                parameter.normal_(0.0, 2.0 / parameter.shape[-1] ** 0.5)
            elif name.endswith("bias"):
                parameter.normal_(0.0, 0.1)
    return model


def texts(batch: int, length: int, generator: torch.Generator, lengths=None) -> tuple:
    """``[CLS] words [SEP] [PAD]...`` ids and masks, int64 ``[batch, length]``; ``lengths``
    (real tokens incl. [CLS] and [SEP]) default to a mix of full and padded texts."""
    lengths = lengths or [length - (i % 3) for i in range(batch)]
    ids = torch.full((batch, length), PAD)
    mask = torch.zeros(batch, length, dtype=torch.long)
    for row, real in enumerate(lengths):
        ids[row, 0], ids[row, real - 1] = CLS, SEP
        ids[row, 1 : real - 1] = torch.randint(
            5, TINY["vocab_size"], (real - 2,), generator=generator
        )
        mask[row, :real] = 1
    return ids, mask


def videos(batch: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(batch, FRAMES, 3, SIZE, SIZE, generator=generator)
