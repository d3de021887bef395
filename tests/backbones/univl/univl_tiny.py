"""Tiny UniVL sizes, a tiny vocabulary and batches in the feature + text layout, shared by the
tests in this folder."""

from dataclasses import dataclass, field

import torch

from meltr.backbones.univl import UniVLDecoderInputs, UniVLMasking
from meltr.backbones.univl.contract import FRAMES, SIZES, TEXT_LENGTH

# The contract's sizes without the sentiment head, without dropout.
TINY = {key: value for key, value in SIZES.items() if key != "sentiment_head"} | dict(dropout=0.0)


@dataclass(frozen=True)
class TinyVocab:
    """What the transforms read from a tokenizer; the special ids are deliberately not BERT's."""

    vocab_size: int = TINY["vocab_size"]
    pad_id: int = 7
    unk_id: int = 11
    cls_id: int = 5
    sep_id: int = 9
    mask_id: int = 13
    special_ids: frozenset = field(default_factory=lambda: frozenset({5, 7, 9, 11, 13}))


VOCAB = TinyVocab()
ORDINARY = [i for i in range(VOCAB.vocab_size) if i not in VOCAB.special_ids]


def tiny_items(seed: int = 0, text_lengths=(8, 5, 3, 6), frame_counts=(5, 3, 1, 4)) -> list:
    """Items of the feature + text kind: ``[CLS] words [SEP] [PAD]...`` and zero-padded
    features, each then masked and given decoder inputs by the package's transforms."""
    generator = torch.Generator().manual_seed(seed)
    masking, decoder_inputs = UniVLMasking(tokenizer=VOCAB), UniVLDecoderInputs(tokenizer=VOCAB)
    items = []
    for index, (length, frames) in enumerate(zip(text_lengths, frame_counts, strict=True)):
        ids = torch.full((TEXT_LENGTH,), VOCAB.pad_id)
        words = torch.tensor(ORDINARY)[
            torch.randint(len(ORDINARY), (length - 2,), generator=generator)
        ]
        ids[0], ids[1 : length - 1], ids[length - 1] = VOCAB.cls_id, words, VOCAB.sep_id
        mask = (torch.arange(TEXT_LENGTH) < length).long()
        features = torch.zeros(FRAMES, TINY["video_dim"])
        features[:frames] = 2.0 * torch.randn(frames, TINY["video_dim"], generator=generator) + 1.0
        item = {
            "text_ids": ids,
            "text_mask": mask,
            "features": features,
            "feature_mask": (torch.arange(FRAMES) < frames).long(),
            "video_id": f"video{index}",
            "caption": f"caption {index}",
        }
        items.append(decoder_inputs(masking(item, generator), generator))
    return items


def collate(items: list) -> dict:
    return {
        key: torch.stack([item[key] for item in items])
        if isinstance(items[0][key], torch.Tensor)
        else [item[key] for item in items]
        for key in items[0]
    }


def tiny_batch(seed: int = 0, **kwargs) -> dict:
    return collate(tiny_items(seed, **kwargs))
