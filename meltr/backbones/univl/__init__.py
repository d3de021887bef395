"""UniVL (text, video, cross and decoder transformers over S3D features): model, official-
checkpoint loader, the eight losses, the masking and decoder-input transforms, beam search."""

from meltr.backbones.univl.checkpoint import load_univl_checkpoint
from meltr.backbones.univl.losses import UniVLLoss
from meltr.backbones.univl.model import UniVL
from meltr.backbones.univl.transforms import UniVLDecoderInputs, UniVLMasking

__all__ = ["UniVL", "UniVLDecoderInputs", "UniVLLoss", "UniVLMasking", "load_univl_checkpoint"]
