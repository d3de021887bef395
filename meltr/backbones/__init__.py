"""Backbones: one package per foundation model (torch only).

Each package supplies what a recipe needs from its backbone (docs/ARCHITECTURE.md, "Backbones"):
the model (which names its FSDP units with ``fsdp_units()``), the official-checkpoint loader
(``load(model, path, *, meta_loss=None, trust_pickle=False) -> LoadReport``), its loss source(s)
and its batch transforms (masking). Shared pieces live here: ``checkpoint`` (reading files,
``LoadReport``) and ``losses`` (contrastive, masked-token and rank-gathering helpers).
"""
