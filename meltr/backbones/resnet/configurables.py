"""Gin registrations of the CIFAR ResNet backbone (imported by ``meltr.train.configurables``)."""

import gin

from meltr.backbones.resnet import CifarResNet, ImageClassificationLoss, load_resnet_checkpoint

gin.external_configurable(CifarResNet, module="meltr.backbones.resnet")
gin.external_configurable(ImageClassificationLoss, module="meltr.backbones.resnet")
gin.external_configurable(
    load_resnet_checkpoint,
    module="meltr.backbones.resnet",
    denylist=["model", "path", "meta_loss", "trust_pickle"],
)
