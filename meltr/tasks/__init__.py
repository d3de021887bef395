"""Tasks: one evaluator per task kind, with its model-selection metric (docs/ARCHITECTURE.md)."""

from meltr.tasks.classification import Classification
from meltr.tasks.qa import QuestionAnswering
from meltr.tasks.retrieval import Retrieval

__all__ = ["Classification", "QuestionAnswering", "Retrieval"]
