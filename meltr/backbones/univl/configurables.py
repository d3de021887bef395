"""Gin registrations of the UniVL backbone (imported by ``meltr.train.configurables``).

Names: ``UniVL`` (``vocab_size`` comes from the tokenizer), ``load_univl_checkpoint``,
``UniVLLoss``, the transforms ``UniVLMasking`` and ``UniVLDecoderInputs`` (their tokenizer is the
recipe's), the optimizer ``BertAdam`` (scoped as ``backbone/BertAdam``; the training system
passes the parameters), and the generated feature dataset of the quick recipe:
``synthetic_features`` (the generator's arguments), ``synthetic_features_dir`` and
``synthetic_features_vocab`` (paths for the ``DATA_DIR`` / ``VOCAB`` macros).
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
from meltr.data import synthetic_features

MODULE = "meltr.backbones.univl"

gin.external_configurable(UniVL, module=MODULE, denylist=["vocab_size"])
gin.external_configurable(UniVLLoss, module=MODULE)
gin.external_configurable(
    load_univl_checkpoint, module=MODULE, denylist=["model", "path", "meta_loss", "trust_pickle"]
)
for transform in (UniVLMasking, UniVLDecoderInputs):
    gin.external_configurable(transform, module=MODULE, denylist=["tokenizer"])
gin.external_configurable(BertAdam, module=MODULE, denylist=["params"])

synthetic_features_dataset = gin.external_configurable(
    synthetic_features.cached_synthetic_features, "synthetic_features", module="meltr.data"
)


@gin.configurable(module="meltr.data")
def synthetic_features_dir() -> str:
    """The generated feature dataset's shard directory (generated on first use, with the
    ``synthetic_features.*`` bindings)."""
    return synthetic_features_dataset()["root"]


@gin.configurable(module="meltr.data")
def synthetic_features_vocab() -> str:
    """The generated feature dataset's ``vocab.txt``."""
    return synthetic_features_dataset()["vocab"]
