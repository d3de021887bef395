"""Gin registrations of the All-in-one backbone (imported by ``meltr.train.configurables``)."""

import gin

from meltr.backbones.allinone import AllInOne, AllInOneRetrievalLoss, load_allinone_checkpoint

gin.external_configurable(AllInOne, module="meltr.backbones.allinone", denylist=["vocab_size"])
gin.external_configurable(AllInOneRetrievalLoss, module="meltr.backbones.allinone")
gin.external_configurable(
    load_allinone_checkpoint,
    module="meltr.backbones.allinone",
    denylist=["model", "path", "meta_loss", "trust_pickle"],
)
