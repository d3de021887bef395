"""Loss source for fine-tuning a BERT on text classification with self-supervised auxiliaries.

- ``cls`` (primary): cross-entropy of the classifier on the pooled sentence.
- ``mlm``: masked language modelling (BERT, Devlin et al. 2019) on ``mlm_ids`` (15 % of the
  tokens selected, 80 % [MASK] / 10 % random / 10 % kept, by ``meltr.data.text.MaskTokens``),
  cross-entropy at the selected positions only.
- ``simcse``: unsupervised SimCSE (Gao et al. 2021): each sentence passed twice with independent
  dropout; ``-log softmax_j(cos(z_i, z'_j) / temperature)`` at ``j = i`` over the in-batch second
  views, averaged over the batch. The first view is the ``cls`` pass's pooled sentence, so the
  auxiliary costs one extra pass.

Exact in a data-parallel run (``meltr.backbones.losses``): ``simcse`` contrasts the views gathered
from all ranks, ``mlm`` divides by the mean masked-token count over ranks.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from meltr.backbones.losses import (
    IGNORE_INDEX,
    check_tasks,
    gather_across_ranks,
    masked_token_loss,
    require,
)

PRIMARY_TASK = "cls"
AUXILIARY_TASKS = ("mlm", "simcse")


def simcse_loss(first: Tensor, second: Tensor, temperature: float) -> Tensor:
    """Unsupervised SimCSE over two views ``[B, H]`` of the same sentences (row ``i`` of both is
    sentence ``i``): cross-entropy of ``cos(first_i, second_j) / temperature`` over ``j`` at
    ``j = i``, averaged over ``i``."""
    first = gather_across_ranks(F.normalize(first, dim=-1))
    second = gather_across_ranks(F.normalize(second, dim=-1))
    logits = first @ second.T / temperature
    return F.cross_entropy(logits, torch.arange(logits.shape[0], device=logits.device))


class TextClassificationLoss:
    """``loss_source(model, batch) -> {"cls": ..., <tasks[1:] in order>}`` for a
    :class:`~meltr.backbones.bert.model.BertTextModel` (module docstring: the losses).

    Batch keys read: ``text_ids``, ``text_mask``, ``label`` int64 ``[B]``, and ``mlm_ids`` /
    ``mlm_labels`` for mlm. Randomness (dropout) comes only from the global torch RNG.
    ``num_classes`` (when given) sets the chance level of ``cls`` for the training-health check.
    """

    def __init__(
        self,
        tasks: Iterable[str] = ("cls", "mlm", "simcse"),
        temperature: float = 0.05,
        num_classes: int | None = None,
    ) -> None:
        tasks = check_tasks(tasks, (PRIMARY_TASK,), AUXILIARY_TASKS)
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 2):
            raise ValueError(f"num_classes must be None or an integer >= 2, got {num_classes!r}")
        self.tasks, self.temperature, self.num_classes = tasks, temperature, num_classes

    def chance_levels(self, batch_size: int) -> dict[str, float]:
        """``cls``: ln(num_classes) (when given); ``simcse``: ln(batch_size), the loss of
        sentence views that carry nothing of their sentence."""
        levels = {} if self.num_classes is None else {"cls": math.log(self.num_classes)}
        if "simcse" in self.tasks:
            levels["simcse"] = math.log(batch_size)
        return levels

    def __call__(self, model: nn.Module, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        text_ids, text_mask, label = require(batch, "text_ids", "text_mask", "label")
        first = model(mode="classify", text_ids=text_ids, text_mask=text_mask)
        losses = {"cls": F.cross_entropy(first["logits"], label)}
        for task in self.tasks[1:]:
            if task == "mlm":
                mlm_ids, mlm_labels = require(batch, "mlm_ids", "mlm_labels")
                selected = mlm_labels.ne(IGNORE_INDEX)
                logits = model(
                    mode="mlm", text_ids=mlm_ids, text_mask=text_mask, mlm_positions=selected
                )["logits"]
                losses["mlm"] = masked_token_loss(logits[None], mlm_labels[selected][None])
            else:
                second = model(mode="embed", text_ids=text_ids, text_mask=text_mask)["sentence"]
                losses["simcse"] = simcse_loss(first["sentence"], second, self.temperature)
        return losses
