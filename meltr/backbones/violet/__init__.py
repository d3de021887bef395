"""Violet (Video Swin + BERT cross transformer): the model, the official-checkpoint loaders
(``ckpt_violet_pretrain.pt``, ``ckpt_video-swin.pt``), the loss source (``vtm`` / ``qa`` /
``cls`` primary; ``vtm``, ``mtm``, ``mvm`` auxiliary) and the masking transforms (MTM text
masking, blockwise MVM video masking)."""

from meltr.backbones.violet.checkpoint import load_video_swin_checkpoint, load_violet_checkpoint
from meltr.backbones.violet.losses import VioletLoss
from meltr.backbones.violet.model import Violet
from meltr.backbones.violet.transforms import (
    BlockwiseVideoMask,
    MaskTextTokens,
    release_choice_text,
)

__all__ = [
    "BlockwiseVideoMask",
    "MaskTextTokens",
    "Violet",
    "VioletLoss",
    "load_video_swin_checkpoint",
    "load_violet_checkpoint",
    "release_choice_text",
]
