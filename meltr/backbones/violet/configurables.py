"""Gin registrations of the Violet backbone (imported by ``meltr.train.configurables``); the
generated QA dataset of the quick recipe (``violet_synthetic_qa``, ``violet_qa_data_dir``,
``violet_qa_vocab``) is registered with the other built-in datasets by
``meltr.data.configurables``."""

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

MODULE = "meltr.backbones.violet"
LOADER_SUPPLIED = ["model", "path", "meta_loss", "trust_pickle"]

gin.external_configurable(Violet, module=MODULE, denylist=["vocab_size"])
gin.external_configurable(VioletLoss, module=MODULE)
gin.external_configurable(load_violet_checkpoint, module=MODULE, denylist=LOADER_SUPPLIED)
gin.external_configurable(load_video_swin_checkpoint, module=MODULE, denylist=LOADER_SUPPLIED)
gin.external_configurable(MaskTextTokens, module=MODULE, denylist=["tokenizer"])
gin.external_configurable(BlockwiseVideoMask, module=MODULE)
gin.external_configurable(release_choice_text, module=MODULE)
