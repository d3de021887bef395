"""Backbones and their official-checkpoint loaders (torch only)."""

from meltr.models.allinone import AllInOne
from meltr.models.allinone_checkpoint import LoadReport, load_allinone_checkpoint

__all__ = ["AllInOne", "LoadReport", "load_allinone_checkpoint"]
