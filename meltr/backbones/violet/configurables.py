"""Gin registrations of the Violet backbone (imported by ``meltr.train.configurables``), and
the generated QA dataset of the quick recipe as the paths for the ``DATA_DIR`` / ``VOCAB``
macros."""

import gin

from meltr.backbones.violet import (
    BlockwiseVideoMask,
    MaskTextTokens,
    Violet,
    VioletLoss,
    load_video_swin_checkpoint,
    load_violet_checkpoint,
    release_choice_text,
)
from meltr.data import synthetic_qa

MODULE = "meltr.backbones.violet"
LOADER_SUPPLIED = ["model", "path", "meta_loss", "trust_pickle"]

gin.external_configurable(Violet, module=MODULE, denylist=["vocab_size"])
gin.external_configurable(VioletLoss, module=MODULE)
gin.external_configurable(load_violet_checkpoint, module=MODULE, denylist=LOADER_SUPPLIED)
gin.external_configurable(load_video_swin_checkpoint, module=MODULE, denylist=LOADER_SUPPLIED)
gin.external_configurable(MaskTextTokens, module=MODULE, denylist=["tokenizer"])
gin.external_configurable(BlockwiseVideoMask, module=MODULE)
gin.external_configurable(release_choice_text, module=MODULE)

violet_synthetic_qa = gin.external_configurable(
    synthetic_qa.cached_synthetic_qa, "violet_synthetic_qa", module=MODULE
)


# They call the gin-configured generator above, so that ``violet_synthetic_qa.*`` bindings apply.
@gin.configurable(module=MODULE)
def violet_qa_data_dir() -> str:
    """The generated moving-shapes QA dataset's shard directory (generated on first use)."""
    return violet_synthetic_qa()["root"]


@gin.configurable(module=MODULE)
def violet_qa_vocab() -> str:
    """The generated moving-shapes QA dataset's ``vocab.txt``."""
    return violet_synthetic_qa()["vocab"]
