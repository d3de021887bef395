"""ALPRO at test size, for the backbone contract test (see ``meltr.backbones.contract``).

Video 3 frames of 16 px, 8-pixel patches; width 16, 2 TimeSformer blocks; BERT of 3 layers, the
first 2 text-only; 3 entities and 5 answers. PEM's prompter is a second tiny ALPRO (its own,
frozen module) over one prompt per entity."""

import torch

from meltr.backbones.alpro import (
    Alpro,
    AlproLoss,
    EntityCrop,
    EntityPrompter,
    load_alpro_checkpoint,
)
from meltr.backbones.contract import TinyBackbone, TinyVocab, bert_text, stack
from meltr.data.text import MaskTokens

VOCAB = TinyVocab(vocab_size=40)
FRAMES, SIZE, PATCH, ENTITIES, ANSWERS = 3, 16, 8, 3, 5
SIZES = dict(
    vocab_size=VOCAB.vocab_size,
    max_text_positions=16,
    width=16,
    text_layers=3,
    fusion_layer=2,
    text_heads=2,
    text_inner=32,
    image_size=SIZE,
    patch_size=PATCH,
    num_frames=FRAMES,
    video_depth=2,
    video_heads=2,
    mlp_ratio=2.0,
    proj_dim=8,
    num_entities=ENTITIES,
    num_answers=ANSWERS,
)


def _prompter() -> EntityPrompter:
    """A frozen tiny ALPRO (its weights from seed 1, the global RNG left as it was) over one
    prompt per entity; every crop kept (``ignore_threshold=0``)."""
    with torch.random.fork_rng():
        torch.manual_seed(1)
        network = Alpro(**SIZES)
        prompts = [
            bert_text(VOCAB, 6, 6, torch.Generator().manual_seed(e)) for e in range(ENTITIES)
        ]
    ids, mask = (torch.stack(parts) for parts in zip(*prompts, strict=True))
    return EntityPrompter(network, ids, mask, num_templates=1, ignore_threshold=0.0)


def _batch(generator: torch.Generator) -> dict:
    """3 clips with questions and answers, MLM-masked by ``MaskTokens`` and cropped by
    ``EntityCrop`` (PEM's region)."""
    masking, crop = MaskTokens(VOCAB, probability=0.5), EntityCrop(patch_size=PATCH)
    items = []
    for real, answer in zip((7, 5, 6), (0, 3, -1), strict=True):
        ids, mask = bert_text(VOCAB, 7, real, generator)
        video = torch.randn(FRAMES, 3, SIZE, SIZE, generator=generator)
        item = masking({"video": video, "text_ids": ids, "text_mask": mask}, generator)
        items.append(crop(item, generator) | {"answer_index": torch.tensor(answer)})
    return stack(items)


def tiny() -> TinyBackbone:
    return TinyBackbone(
        build=lambda: Alpro(**SIZES),
        loss_source=AlproLoss(("qa", "vtc", "vtm", "mlm", "pem"), prompter=_prompter()),
        batch=_batch,
        checkpoint_loader=load_alpro_checkpoint,
    )
