"""All-in-one (ViT-B/16 shared by text and video): model, official-checkpoint loader, the
retrieval loss source (``itc`` primary, ``mlm``, ``vtm``). Its batch transform is BERT MLM masking
(``meltr.data.text.MaskTokens``)."""

from meltr.backbones.allinone.checkpoint import load_allinone_checkpoint
from meltr.backbones.allinone.losses import AllInOneRetrievalLoss
from meltr.backbones.allinone.model import AllInOne

__all__ = ["AllInOne", "AllInOneRetrievalLoss", "load_allinone_checkpoint"]
