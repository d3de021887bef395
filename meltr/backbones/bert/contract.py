"""A BERT at test size, for the backbone contract test (see ``meltr.backbones.contract``). Its
checkpoint is a Hugging Face folder, so the model's own weights are written as one: a
``config.json`` and a ``model.safetensors``."""

import dataclasses
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from meltr.backbones.bert import (
    BertConfig,
    BertTextModel,
    TextClassificationLoss,
    load_bert_checkpoint,
)
from meltr.backbones.contract import TinyBackbone, TinyVocab, bert_text, stack
from meltr.data.text import MaskTokens

VOCAB = TinyVocab(vocab_size=30)
CONFIG = BertConfig(
    vocab_size=VOCAB.vocab_size,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=24,
    max_position_embeddings=16,
)
CLASSES, LENGTH = 3, 8


def _batch(generator: torch.Generator) -> dict:
    """4 labelled texts (two of them padded), MLM-masked by ``MaskTokens``."""
    masking = MaskTokens(VOCAB, probability=0.5)
    items = []
    for real, label in zip((8, 5, 7, 8), (0, 2, 1, 2), strict=True):
        ids, mask = bert_text(VOCAB, LENGTH, real, generator)
        item = {"text_ids": ids, "text_mask": mask, "label": torch.tensor(label)}
        items.append(masking(item, generator))
    return stack(items)


def write_folder(model: nn.Module, directory: Path) -> Path:
    """``directory/bert``: the model's ``config.json`` and weights, as in a Hugging Face folder."""
    folder = directory / "bert"
    folder.mkdir()
    config = {"model_type": "bert", **dataclasses.asdict(model.config)}
    (folder / "config.json").write_text(json.dumps(config))
    weights = {key: value.contiguous() for key, value in model.state_dict().items()}
    save_file(weights, str(folder / "model.safetensors"))
    return folder


def tiny() -> TinyBackbone:
    return TinyBackbone(
        build=lambda: BertTextModel(CONFIG, num_classes=CLASSES),
        loss_source=TextClassificationLoss(("cls", "mlm", "simcse"), num_classes=CLASSES),
        batch=_batch,
        checkpoint_loader=load_bert_checkpoint,
        write_checkpoint=write_folder,
    )
