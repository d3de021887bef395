"""Batched beam search over summed log-probabilities (no length penalty).

The release (UniVL's OpenNMT-derived ``Beam``) keeps ``beam_size`` hypotheses, extends every
one by every token, keeps the ``beam_size`` best, and stops when the best of them ends in EOS.
This search differs in one respect: a hypothesis that ends in EOS is set aside, finished, instead
of being extended further (the release keeps extending it with whatever follows EOS and later
cuts the text at the first [SEP]). A row stops once its best finished hypothesis scores at least
as high as every live one (log-probabilities are <= 0, so extensions never score higher), which
includes the release's condition; the rows still searching after ``max_length`` steps finish
with their best hypothesis, finished or not. With a beam that holds every prefix this is the
exact maximiser of the summed log-probability over all sequences of at most ``max_length``
tokens (ending at their first EOS); with ``beam_size=1`` it is greedy decoding.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

NextLogProbs = Callable[[Tensor, Tensor], Tensor]


def beam_search(
    next_log_probs: NextLogProbs,
    batch_size: int,
    *,
    beam_size: int,
    max_length: int,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor]:
    """The best sequence per row by summed log-probability.

    ``next_log_probs(prefixes, rows)`` returns the log-probabilities of the next token,
    ``[n * beam_size, V]``, for ``prefixes`` int64 ``[n * beam_size, t]`` (``beam_size``
    consecutive prefixes per row, each starting with ``bos_id``) of the rows ``rows`` int64
    ``[n]`` (indices into the batch of the rows still searching, ascending).

    Returns ``tokens`` int64 ``[batch_size, max_length]`` (the generated tokens after BOS, the EOS
    included when one was generated, then ``pad_id``) and ``scores`` ``[batch_size]`` (float32,
    the sums of their log-probabilities).
    """
    if beam_size < 1 or max_length < 1:
        raise ValueError(f"beam_size and max_length must be >= 1, got {beam_size} and {max_length}")
    k = beam_size
    prefixes = torch.full((batch_size, k, 1), bos_id, dtype=torch.long, device=device)
    # Only the first beam is alive at the start, so the first step ranks one prefix's tokens.
    scores = torch.full((batch_size, k), float("-inf"), device=device)
    scores[:, 0] = 0.0
    best_scores = torch.full((batch_size,), float("-inf"), device=device)
    best_tokens = torch.full((batch_size, max_length), pad_id, dtype=torch.long, device=device)
    rows = torch.arange(batch_size, device=device)
    for step in range(max_length):
        count, _, length = prefixes.shape
        log_probs = next_log_probs(prefixes.reshape(count * k, length), rows)
        vocab = log_probs.shape[-1]
        candidates = scores[..., None] + log_probs.view(count, k, vocab).to(scores.dtype)
        top, index = candidates.view(count, k * vocab).topk(k, dim=1)
        source, token = index // vocab, index % vocab
        prefixes = torch.cat(
            [prefixes.gather(1, source[..., None].expand(-1, -1, length)), token[..., None]], 2
        )
        ended = (token == eos_id) & (top > float("-inf"))
        _keep_best(best_scores, best_tokens, rows, prefixes, top.masked_fill(~ended, float("-inf")))
        scores = top.masked_fill(ended, float("-inf"))
        if step == max_length - 1:
            _keep_best(best_scores, best_tokens, rows, prefixes, scores)
            break
        searching = best_scores[rows] < scores.max(dim=1).values
        rows, prefixes, scores = rows[searching], prefixes[searching], scores[searching]
        if rows.numel() == 0:
            break
    return best_tokens, best_scores


def _keep_best(
    best_scores: Tensor, best_tokens: Tensor, rows: Tensor, prefixes: Tensor, candidates: Tensor
) -> None:
    """Where the best of ``candidates`` ``[n, k]`` beats ``best_scores[rows]``, store it and its
    sequence (``prefixes`` ``[n, k, t]`` without the BOS), in place."""
    score, beam = candidates.max(dim=1)
    better = score > best_scores[rows]
    if not better.any():
        return
    winners = rows[better]
    sequences = prefixes[better, beam[better], 1:]
    best_scores[winners] = score[better]
    # Earlier winners of a row are never longer, so this overwrites all of them.
    best_tokens[winners, : sequences.shape[1]] = sequences
