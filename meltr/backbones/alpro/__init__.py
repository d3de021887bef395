"""ALPRO (TimeSformer + BERT with text-only and fusion layers): the model, the official-checkpoint
loader (``alpro_pretrain.pt``, the prompter's file, fine-tuned QA files), the loss source (``qa``
or ``vtc`` primary; ``vtc``, ``vtm``, ``mlm``, ``pem`` auxiliary), PEM's prompter and its crop
transform. MLM masking is ``meltr.data.text.MaskTokens``."""

from meltr.backbones.alpro.checkpoint import load_alpro_checkpoint
from meltr.backbones.alpro.losses import AlproLoss
from meltr.backbones.alpro.model import Alpro
from meltr.backbones.alpro.prompter import EntityPrompter, load_prompter, read_entities
from meltr.backbones.alpro.transforms import EntityCrop

__all__ = [
    "Alpro",
    "AlproLoss",
    "EntityCrop",
    "EntityPrompter",
    "load_alpro_checkpoint",
    "load_prompter",
    "read_entities",
]
