"""Loss sources: ``loss_source(model, batch) -> dict[str, Tensor]``, primary task first."""

from meltr.losses.allinone import AllInOneRetrievalLoss

__all__ = ["AllInOneRetrievalLoss"]
