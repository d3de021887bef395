"""Tasks: one evaluator per task kind, with its model-selection metric (docs/ARCHITECTURE.md)."""

from meltr.tasks.captioning import Captioning
from meltr.tasks.classification import Classification
from meltr.tasks.qa import QuestionAnswering
from meltr.tasks.retrieval import Retrieval
from meltr.tasks.sentiment import Sentiment

__all__ = ["Captioning", "Classification", "QuestionAnswering", "Retrieval", "Sentiment"]
