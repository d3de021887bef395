"""CIFAR ResNets for the image-only setting: model (classification and rotation heads), a state-dict
loader and the ``ce`` / ``mixup`` / ``rotation`` loss source. No batch transform: the augmentation
(pad-and-crop, flip) is the ``ImageLabel`` decoder's."""

from meltr.backbones.resnet.checkpoint import load_resnet_checkpoint
from meltr.backbones.resnet.losses import ImageClassificationLoss
from meltr.backbones.resnet.model import CifarResNet

__all__ = ["CifarResNet", "ImageClassificationLoss", "load_resnet_checkpoint"]
