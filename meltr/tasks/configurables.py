"""Gin registrations of the tasks (imported by ``meltr.train.configurables``)."""

import gin

from meltr.tasks.captioning import Captioning
from meltr.tasks.classification import Classification
from meltr.tasks.qa import QuestionAnswering
from meltr.tasks.retrieval import Retrieval
from meltr.tasks.sentiment import Sentiment

for task in (Retrieval, Classification, QuestionAnswering, Sentiment):
    gin.external_configurable(task, module="meltr.tasks")
gin.external_configurable(Captioning, module="meltr.tasks", denylist=["tokenizer"])
