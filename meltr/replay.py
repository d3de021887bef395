"""Which batches a meta step sees, and when meta steps run.

``ReplayBuffer``: the recent training batches the meta step draws B_pri and B_aux from, and the
dedicated generator of every draw (the global RNG is never used for them). ``MetaSchedule``: on
which calls of ``MetaLearner.step`` a meta step runs, and whether before or after the inner
update.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from meltr.arguments import require_choice, require_int

EVICTIONS = ("oldest", "weighted")
# The schedule -> whether its meta step runs before the inner update (else after it).
SCHEDULES = {"meltr": True, "release": False}


class ReplayBuffer:
    """Up to ``capacity`` recent batches (``batches``, oldest first; 0 keeps none) and the
    generator of the draws from them, seeded with ``seed``.

    ``eviction``: which batch leaves when a new one exceeds ``capacity``: ``"oldest"`` (the UniVL
    release) or ``"weighted"`` (the All-in-one and Violet releases: one of the ``capacity``
    older batches at random, the i-th oldest with probability proportional to i, drawn as
    ``torch.multinomial(torch.arange(1., capacity + 1), 1, generator=...)``).
    """

    def __init__(self, capacity: int, eviction: str, seed: int) -> None:
        self.capacity = require_int("replay", capacity, 0)
        self.eviction = require_choice("eviction", eviction, EVICTIONS)
        self.generator = torch.Generator().manual_seed(seed)
        self.batches: collections.deque = collections.deque()

    def remember(self, batch: Any) -> None:
        """Append ``batch``, evicting one batch beyond ``capacity`` (nothing when it is 0)."""
        if self.capacity == 0:
            return
        self.batches.append(batch)
        if len(self.batches) <= self.capacity:
            return
        if self.eviction == "oldest":
            self.batches.popleft()
            return
        weights = torch.arange(1.0, self.capacity + 1, dtype=torch.float64)
        index = int(torch.multinomial(weights, 1, generator=self.generator))
        del self.batches[index]

    def forget(self, batch: Any) -> None:
        """Take ``batch`` back out if it is the newest entry (it joined before its inner update,
        which was then skipped)."""
        if self.batches and self.batches[-1] is batch:
            self.batches.pop()

    def draw_pair(self, fallback: Any) -> tuple[Any, Any]:
        """B_pri and B_aux, drawn independently and uniformly as
        ``torch.randint(len(batches), (2,), generator=...)``; both ``fallback`` (no draw) while
        the buffer is empty."""
        if not self.batches:
            return fallback, fallback
        i, j = torch.randint(len(self.batches), (2,), generator=self.generator).tolist()
        return self.batches[i], self.batches[j]

    def draw(self, fallback: Any) -> Any:
        """One batch drawn uniformly as ``torch.randint(len(batches), (1,), generator=...)``;
        while the buffer is empty ``fallback`` is the only candidate (drawn the same way)."""
        candidates = list(self.batches) or [fallback]
        return candidates[int(torch.randint(len(candidates), (1,), generator=self.generator))]

    def state_dict(self) -> dict[str, Any]:
        """``generator`` (its state) and ``buffer`` (the batches, oldest first)."""
        return {"generator": self.generator.get_state(), "buffer": list(self.batches)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.batches.clear()
        self.batches.extend(state["buffer"])

    @contextlib.contextmanager
    def kept_generator(self) -> Iterator[None]:
        """Restore the generator on exit (draws made inside leave no trace)."""
        state = self.generator.get_state()
        try:
            yield
        finally:
            self.generator.set_state(state)


@dataclass(frozen=True)
class MetaSchedule:
    """When meta steps run and which batches they may draw (``name``), every ``every`` calls.

    ``"meltr"``: before the inner update, on calls ``every, 2 * every, ...`` of
    ``MetaLearner.step``; the current batch joins the buffer first, so it can be drawn (its
    forward is then reused). ``"release"`` (the MELTR release's loop): after the inner update,
    at the updated weights, on calls ``1, every + 1, 2 * every + 1, ...`` (its iterations 0, K,
    2K); draws come from the earlier batches only (the current batch while the buffer is
    empty), and the current batch joins the buffer afterwards.
    """

    name: str
    every: int

    def __post_init__(self) -> None:
        require_int("meta_every", self.every, 1)
        require_choice("schedule", self.name, tuple(SCHEDULES))

    @property
    def before_update(self) -> bool:
        """Whether the meta step runs before the inner update of its call (else after it)."""
        return SCHEDULES[self.name]

    def is_due(self, call: int) -> bool:
        """Whether call number ``call`` (from 1) of ``step`` runs a meta step."""
        first = self.every if self.before_update else 1
        return (call - first) % self.every == 0
