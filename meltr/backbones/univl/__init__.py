"""UniVL (text, video, cross and decoder transformers over S3D features): model, official-
checkpoint loader, the eight losses (and the sentiment regression loss), the masking and
decoder-input transforms, beam search, the release's BertAdam optimizer."""

from meltr.backbones.univl.checkpoint import load_univl_checkpoint
from meltr.backbones.univl.losses import UniVLLoss
from meltr.backbones.univl.model import UniVL
from meltr.backbones.univl.optimizer import BertAdam
from meltr.backbones.univl.transforms import UniVLDecoderInputs, UniVLMasking

__all__ = [
    "BertAdam",
    "UniVL",
    "UniVLDecoderInputs",
    "UniVLLoss",
    "UniVLMasking",
    "load_univl_checkpoint",
]
