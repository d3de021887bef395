"""The gradient-aggregation baselines through torchjd, as ``MetaLearner.aggregate``.

PCGrad (Yu et al. 2020), CAGrad (Liu et al. 2021), Nash-MTL (Navon et al. 2022), Aligned-MTL
(Senushkin et al. 2023), IMTL-G (Liu et al. 2021), MGDA (Desideri 2012; Sener & Koltun 2018) and
UPGrad (Quinton & Rey 2024) are torchjd's aggregators (``gin/baselines/<name>.gin``); any other
``torchjd.aggregation`` aggregator can be named too. torchjd is an optional dependency
(``pip install 'meltr[aggregation]'``; CAGrad and Nash-MTL also need cvxpy:
``'meltr[aggregation-solvers]'``), imported when a ``TorchJDAggregation`` is made.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch

NEEDS_SOLVERS = ("CAGrad", "NashMTL")  # torchjd's cvxpy-based aggregators


class TorchJDAggregation:
    """``aggregate(rows) -> (gradient, weights)`` by the torchjd aggregator named ``aggregator``.

    ``rows[t]`` is task t's gradient as a list of tensors (one per parameter, the same shapes in
    every row). They are handed to torchjd as the ``.jac`` of stand-in tensors and combined by
    ``torchjd.autojac.jac_to_grad``, the routine that ends torchjd's own ``backward`` /
    ``mtl_backward`` step: the Jacobian's columns are the parameters' flattened entries in order,
    and ``weights`` (``[T]``) are the weights of its rows when the aggregator is a weighted one
    (all the named baselines are), else None.

    Args:
        aggregator: a class name of ``torchjd.aggregation`` (``"UPGrad"``, ``"PCGrad"``, ...).
        options: its keyword arguments; ``n_tasks`` (Nash-MTL) is supplied from the first call.

    Nash-MTL keeps state between steps (the previous weights, warm-starting its solver); that
    state is not checkpointed, so a resumed run starts it afresh.

    Raises ValueError (naming the binding) for an unknown aggregator, options it does not take,
    or a missing optional dependency.
    """

    def __init__(self, aggregator: str, options: Mapping[str, Any] | None = None) -> None:
        self.name = aggregator
        self.options = dict(options or {})
        extra = "aggregation-solvers" if aggregator in NEEDS_SOLVERS else "aggregation"
        self._install = f"pip install 'meltr[{extra}]'"
        try:  # optional dependency: imported only when an aggregation baseline is configured
            from torchjd import aggregation
            from torchjd.autojac import jac_to_grad
        except ImportError:
            raise ValueError(
                f"TorchJDAggregation.aggregator = {aggregator!r} needs torchjd: {self._install}"
            ) from None
        self._jac_to_grad = jac_to_grad
        factory = getattr(aggregation, aggregator, None)
        if not (inspect.isclass(factory) and issubclass(factory, aggregation.Aggregator)):
            raise ValueError(
                f"TorchJDAggregation.aggregator = {aggregator!r} is not an aggregator of "
                "torchjd.aggregation (e.g. 'UPGrad', 'PCGrad', 'MGDA', 'IMTLG', 'AlignedMTL', "
                "'CAGrad', 'NashMTL')"
            )
        self._factory = factory
        self._needs_tasks = "n_tasks" in inspect.signature(factory).parameters
        # Made now, so that bad options and missing solvers fail before training starts.
        made = self._make(num_tasks=1)
        self._aggregator = None if self._needs_tasks else made

    def _make(self, num_tasks: int) -> Any:
        options = self.options | ({"n_tasks": num_tasks} if self._needs_tasks else {})
        try:
            return self._factory(**options)
        except ImportError as error:
            raise ValueError(
                f"TorchJDAggregation.aggregator = {self.name!r}: {error} ({self._install})"
            ) from None
        except (TypeError, ValueError) as error:
            raise ValueError(f"TorchJDAggregation.options = {self.options!r}: {error}") from None

    def __call__(
        self, rows: Sequence[Sequence[torch.Tensor]]
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        if self._aggregator is None:
            self._aggregator = self._make(len(rows))
        stand_ins = []
        for index in range(len(rows[0])):
            stand_in = rows[0][index].detach().requires_grad_()  # its data is never read
            stand_in.jac = torch.stack([row[index] for row in rows])
            stand_ins.append(stand_in)
        weights = self._jac_to_grad(stand_ins, self._aggregator)
        return [stand_in.grad for stand_in in stand_ins], weights

    def __repr__(self) -> str:
        return f"TorchJDAggregation({self.name!r}, options={self.options!r})"
