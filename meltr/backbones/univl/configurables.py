"""Gin registrations of the UniVL backbone (imported by ``meltr.train.configurables``).

Names: ``UniVL`` (``vocab_size`` comes from the tokenizer), ``load_univl_checkpoint``,
``UniVLLoss``, the transforms ``UniVLMasking`` and ``UniVLDecoderInputs`` (their tokenizer is the
recipe's), the optimizer ``BertAdam`` (scoped as ``backbone/BertAdam``; the training system
passes the parameters). The generated feature dataset of the quick recipe
(``synthetic_features``, ``synthetic_features_dir``, ``synthetic_features_vocab``) is registered
with the other built-in datasets by ``meltr.data.configurables``.
"""

import gin

from meltr.backbones.univl import (
    BertAdam,
    UniVL,
    UniVLDecoderInputs,
    UniVLLoss,
    UniVLMasking,
    load_univl_checkpoint,
)

MODULE = "meltr.backbones.univl"

gin.external_configurable(UniVL, module=MODULE, denylist=["vocab_size"])
gin.external_configurable(UniVLLoss, module=MODULE)
gin.external_configurable(
    load_univl_checkpoint, module=MODULE, denylist=["model", "path", "meta_loss", "trust_pickle"]
)
for transform in (UniVLMasking, UniVLDecoderInputs):
    gin.external_configurable(transform, module=MODULE, denylist=["tokenizer"])
gin.external_configurable(BertAdam, module=MODULE, denylist=["params"])
