"""Video captioning over a whole split: one generated caption per video against all its
references, scored as coco-caption scores (``meltr.metrics.captioning.caption_scores``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

import torch
from torch import nn

from meltr.metrics.captioning import CAPTION_METRICS, caption_scores
from meltr.ranks import is_data_parallel
from meltr.tasks.common import (
    ItemCounts,
    all_gather_objects,
    check_views,
    eval_mode,
    to_device,
)


class CaptionTokenizer(Protocol):
    """What the task needs of the recipe's tokenizer (``WordPieceTokenizer`` is one)."""

    cls_id: int
    sep_id: int
    pad_id: int

    def decode(self, ids: list[int]) -> str: ...


class Captioning:
    """Generates one caption per video (videos deduplicated by ``video_id``, the first item of a
    video feeding the model) with ``model(mode="generate", **video inputs, [text_ids, text_mask,]
    bos_id=[CLS], eos_id=[SEP], pad_id=[PAD], max_length, beam_size)["tokens"]``, decodes it with
    the tokenizer, and scores the split with ``caption_scores`` against every caption of the
    video in the split (each evaluation item's ``batch[reference_key]``).

    video_keys: the batch keys passed to the model under their own names (UniVL:
    ``("features", "feature_mask")``); transcript_keys: None (video only) or the batch keys of
    the encoder's text, passed as ``text_ids`` / ``text_mask`` (e.g. ``("transcript_ids",
    "transcript_mask")``).

    Metrics: ``<split>/BLEU-3``, ``BLEU-4``, ``METEOR``, ``ROUGE-L``, ``CIDEr``, each coco-caption's
    value **times 100** (the scale of the paper's tables for BLEU, METEOR and ROUGE-L, and of its
    MSRVTT CIDEr; its YouCook2 table prints CIDEr as the fraction, 1.90 for our 190),
    ``<split>/num_items`` (videos captioned), ``<split>/num_references`` and
    ``<split>/num_corrupt``. Selects on CIDEr, higher is better. In a distributed run every rank
    generates for its own videos and rank 0 runs the scorers (Java); every rank returns its
    result. One view only (features have no random views).
    """

    selection_metric = "CIDEr"
    higher_is_better = True

    def __init__(
        self,
        tokenizer: CaptionTokenizer,
        video_keys: tuple[str, ...] = ("features", "feature_mask"),
        transcript_keys: tuple[str, str] | None = None,
        reference_key: str = "caption",
        max_length: int = 20,
        beam_size: int = 5,
    ) -> None:
        for name, value in (("max_length", max_length), ("beam_size", beam_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if transcript_keys is not None and len(transcript_keys) != 2:
            raise ValueError(
                f"transcript_keys must be None or (ids key, mask key), got {transcript_keys!r}"
            )
        self.tokenizer = tokenizer
        self.video_keys = tuple(video_keys)
        self.transcript_keys = None if transcript_keys is None else tuple(transcript_keys)
        self.reference_key, self.max_length, self.beam_size = reference_key, max_length, beam_size

    def _inputs(self, batch: Mapping, rows: list[int], device: torch.device) -> dict:
        inputs = to_device(batch, self.video_keys, device)
        if self.transcript_keys is not None:
            ids, mask = to_device(batch, self.transcript_keys, device).values()
            inputs |= {"text_ids": ids, "text_mask": mask}
        return {key: value[rows] for key, value in inputs.items()}

    @torch.no_grad()
    def _generate(
        self, model: nn.Module, batches: Iterable[Mapping], device: torch.device
    ) -> tuple[dict[str, str], dict[str, list[str]], ItemCounts]:
        """This rank's ``{video_id: generated caption}``, ``{video_id: [references]}`` (in item
        order) and counts (``items``: videos captioned)."""
        predictions: dict[str, str] = {}
        references: dict[str, list[str]] = {}
        counts = ItemCounts()
        for batch in batches:
            counts.corrupt += int(batch.get("num_corrupt", 0))
            if self.reference_key not in batch or "video_id" not in batch:
                raise KeyError(
                    f"evaluation batch lacks {self.reference_key!r} or 'video_id'; it has "
                    f"{sorted(batch)}"
                )
            new_rows = []
            for row, (video_id, reference) in enumerate(
                zip(batch["video_id"], batch[self.reference_key], strict=True)
            ):
                if video_id not in references:
                    references[video_id] = []
                    new_rows.append(row)
                references[video_id].append(reference)
            if not new_rows:
                continue
            tokens = model(
                mode="generate",
                **self._inputs(batch, new_rows, device),
                bos_id=self.tokenizer.cls_id,
                eos_id=self.tokenizer.sep_id,
                pad_id=self.tokenizer.pad_id,
                max_length=self.max_length,
                beam_size=self.beam_size,
            )["tokens"].cpu()
            for row, sequence in zip(new_rows, tokens.tolist(), strict=True):
                predictions[batch["video_id"][row]] = self.tokenizer.decode(sequence)
            counts.items += len(new_rows)
        return predictions, references, counts

    def evaluate(
        self,
        model: nn.Module,
        batches: Callable[[int | None], Iterable[Mapping]],
        device: torch.device,
        split: str,
        views: int = 1,
    ) -> dict[str, float]:
        """The split's metrics (class docstring); ``batches(None)`` is one pass over it."""
        check_views(views, supports_views=False, task="captioning")
        with eval_mode(model):
            predictions, references, counts = self._generate(model, batches(None), device)
        shares = all_gather_objects((predictions, references))
        all_predictions: dict[str, str] = {}
        all_references: dict[str, list[str]] = {}
        for share_predictions, share_references in shares:
            all_predictions |= share_predictions
            for video_id, captions in share_references.items():
                all_references.setdefault(video_id, []).extend(captions)
        if not all_references:
            raise ValueError("the evaluation split is empty: its loader yielded no batch")
        scores = None
        if not is_data_parallel() or torch.distributed.get_rank() == 0:
            scores = caption_scores(all_predictions, all_references)
        scores = next(share for share in all_gather_objects(scores) if share is not None)
        result = {f"{split}/{name}": 100.0 * scores[name] for name in CAPTION_METRICS}
        result[f"{split}/num_references"] = float(sum(map(len, all_references.values())))
        return result | counts.metrics(split)
