"""Gin registrations of the ALPRO backbone (imported by ``meltr.train.configurables``); the files
of the quick recipes (``alpro_quick_vocab``, ``alpro_quick_entities``) are registered with the
other built-in datasets by ``meltr.data.configurables``."""

import gin

from meltr.backbones.alpro import Alpro, AlproLoss, EntityCrop, load_alpro_checkpoint, load_prompter

MODULE = "meltr.backbones.alpro"
LOADER_SUPPLIED = ["model", "path", "meta_loss", "trust_pickle"]

gin.external_configurable(Alpro, module=MODULE, denylist=["vocab_size"])
gin.external_configurable(AlproLoss, module=MODULE)
gin.external_configurable(load_alpro_checkpoint, module=MODULE, denylist=LOADER_SUPPLIED)
gin.external_configurable(EntityCrop, module=MODULE)
gin.external_configurable(load_prompter, "alpro_prompter", module=MODULE)
