"""Evaluation metrics (torch only)."""

from meltr.metrics.retrieval import retrieval_metrics

__all__ = ["retrieval_metrics"]
