"""What a backbone package hands the contract test (``tests/backbones/test_contract.py``), and the
helpers to write it.

Every package ``meltr/backbones/<name>/`` has a module ``contract.py`` with a function

    def tiny() -> TinyBackbone

describing the backbone at test size: a factory of a tiny model, its loss source with every task
it supports, a generated training batch as the data pipeline would deliver it (the backbone's
own batch transforms applied), and its checkpoint loader, if it has one. The contract test finds
the packages by itself and checks each against docs/ARCHITECTURE.md ("Backbones"): the loss
source, one ``MetaLearner`` step, ``fsdp_units()`` and the loader on the model's own weights.
Keep the sizes small: the test runs each backbone in seconds on a CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from meltr.backbones.checkpoint import LoadReport


def save_state_dict(model: nn.Module, directory: Path) -> Path:
    """``model.state_dict()`` saved with ``torch.save`` as ``directory/model.pt``; the path."""
    path = directory / "model.pt"
    torch.save(model.state_dict(), path)
    return path


@dataclass(frozen=True)
class TinyBackbone:
    """A backbone at test size.

    ``build()``: a fresh tiny model, its weights drawn from the global torch RNG (two calls
    under different seeds give different weights). ``loss_source``: the backbone's loss source
    with a ``tasks`` attribute, configured with as many of its tasks as one batch can feed.
    ``batch(generator)``: a training batch of at least 2 items drawn from ``generator`` only,
    with every key the loss source reads. ``checkpoint_loader``: the recipe's
    ``Recipe.checkpoint_loader`` (None for a backbone without one);
    ``write_checkpoint(model, directory) -> path``: the model's own weights written in a form
    the loader reads (by default a ``torch.save``'d state dict).
    """

    build: Callable[[], nn.Module]
    loss_source: Callable[[nn.Module, Mapping], Mapping[str, torch.Tensor]]
    batch: Callable[[torch.Generator], dict]
    checkpoint_loader: Callable[..., LoadReport] | None = None
    write_checkpoint: Callable[[nn.Module, Path], Path] = save_state_dict


@dataclass(frozen=True)
class TinyVocab:
    """A vocabulary of ``vocab_size`` ids with BERT's special tokens at 0..4 (what the masking
    transforms and a recipe's tokenizer expose)."""

    vocab_size: int
    pad_id: int = 0
    unk_id: int = 1
    cls_id: int = 2
    sep_id: int = 3
    mask_id: int = 4
    special_ids: frozenset[int] = field(default_factory=lambda: frozenset(range(5)))


def bert_text(
    vocab: TinyVocab, length: int, real: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[CLS] words [SEP] [PAD]...`` ids and their attention mask, int64 ``[length]``, with
    ``real`` tokens (``[CLS]`` and ``[SEP]`` included), the words drawn from the non-special
    ids."""
    ids = torch.full((length,), vocab.pad_id)
    ids[0], ids[real - 1] = vocab.cls_id, vocab.sep_id
    first_word = max(vocab.special_ids) + 1
    ids[1 : real - 1] = torch.randint(
        first_word, vocab.vocab_size, (real - 2,), generator=generator
    )
    return ids, (torch.arange(length) < real).long()


def stack(items: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The items' tensors stacked along a new dim 0 (the batch), key by key."""
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}
