"""All-in-one at test size, for the backbone contract test (see ``meltr.backbones.contract``)."""

import torch

from meltr.backbones.allinone import AllInOne, AllInOneRetrievalLoss, load_allinone_checkpoint
from meltr.backbones.contract import TinyBackbone, TinyVocab, bert_text, stack
from meltr.data.text import MaskTokens

VOCAB = TinyVocab(vocab_size=50)
SIZES = dict(
    vocab_size=VOCAB.vocab_size,
    max_text_len=8,
    num_frames=2,
    image_size=16,
    patch_size=8,
    width=16,
    depth=2,
    heads=2,
    proj_dim=8,
)


def _batch(generator: torch.Generator) -> dict:
    """4 clips with captions (two of them padded), MLM-masked by ``MaskTokens``."""
    masking = MaskTokens(VOCAB, probability=0.5)
    items = []
    for real in (8, 6, 8, 5):
        ids, mask = bert_text(VOCAB, SIZES["max_text_len"], real, generator)
        video = torch.randn(SIZES["num_frames"], 3, 16, 16, generator=generator)
        items.append(masking({"text_ids": ids, "text_mask": mask, "video": video}, generator))
    return stack(items)


def tiny() -> TinyBackbone:
    return TinyBackbone(
        build=lambda: AllInOne(**SIZES),
        loss_source=AllInOneRetrievalLoss(("itc", "mlm", "vtm")),
        batch=_batch,
        checkpoint_loader=load_allinone_checkpoint,
    )
