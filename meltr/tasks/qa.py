"""Video question answering: multiple-choice and open-ended accuracy over a split."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor, nn

from meltr.metrics.classification import OUT_OF_VOCABULARY, answer_accuracy
from meltr.tasks.common import (
    ItemCounts,
    check_views,
    concat_over_ranks,
    eval_mode,
    sum_over_views,
    to_device,
)


class QuestionAnswering:
    """Accuracy (percent) of the answer ``model(mode="qa", **inputs)["logits"]`` ranks first,
    against ``batch["answer_index"]``.

    ``input_keys`` are the batch keys fed to the model: ``("video", "text_ids", "text_mask")``
    for open-ended QA (logits over the answer vocabulary), ``("video", "option_ids",
    "option_mask")`` for multiple choice (one logit per option). An ``answer_index`` of -1 (the
    true answer is outside the answer vocabulary) counts as wrong and stays in the denominator;
    how many there were is reported as ``num_out_of_vocabulary`` (0 for multiple choice). With
    ``views > 1`` the softmax probabilities of the views are averaged before the argmax. Selects
    on ``accuracy``, higher is better.
    """

    selection_metric = "accuracy"
    higher_is_better = True

    def __init__(self, input_keys: tuple[str, ...] = ("video", "text_ids", "text_mask")) -> None:
        if not input_keys:
            raise ValueError("input_keys must name at least one batch key")
        self.input_keys = tuple(input_keys)

    @torch.no_grad()
    def _probabilities(
        self, model: nn.Module, batches: Iterable[Mapping], device: torch.device
    ) -> tuple[Tensor, Tensor, ItemCounts]:
        """Every rank's answer probabilities ``[N, C]`` and answer indices ``[N]``, in rank
        order, and this rank's counts."""
        probabilities, answers, counts = [], [], ItemCounts()
        for batch in batches:
            counts.add(batch, "answer_index")
            logits = model(mode="qa", **to_device(batch, self.input_keys, device))["logits"]
            answer_index = torch.as_tensor(batch["answer_index"]).cpu()
            if logits.dim() != 2 or logits.shape[0] != len(answer_index):
                raise ValueError(
                    f"mode='qa' returned logits {tuple(logits.shape)} for a batch of "
                    f"{len(answer_index)} questions; expected [B, answers or options]"
                )
            bad = (answer_index < OUT_OF_VOCABULARY) | (answer_index >= logits.shape[1])
            if bad.any():
                raise ValueError(
                    f"answer_index {answer_index[bad].tolist()} outside [-1, {logits.shape[1]}) "
                    f"for logits over {logits.shape[1]} answers"
                )
            probabilities.append(logits.float().softmax(dim=1).cpu())
            answers.append(answer_index)
        return (*concat_over_ranks(probabilities, answers), counts)

    def evaluate(
        self,
        model: nn.Module,
        batches: Callable[[int | None], Iterable[Mapping]],
        device: torch.device,
        split: str,
        views: int = 1,
    ) -> dict[str, float]:
        """``<split>/accuracy``, ``<split>/num_out_of_vocabulary``, ``<split>/num_items`` and
        ``<split>/num_corrupt``."""
        check_views(views, supports_views=True, task="question answering")
        with eval_mode(model):
            total, answers, counts = sum_over_views(
                lambda view: self._probabilities(model, batches(view), device), views, "questions"
            )
        metrics = answer_accuracy(total.argmax(dim=1), answers)
        result = {f"{split}/{name}": float(value) for name, value in metrics.items()}
        return result | counts.metrics(split)
