"""Gin registrations of the tasks (imported by ``meltr.train.configurables``)."""

import gin

from meltr.tasks.classification import Classification
from meltr.tasks.qa import QuestionAnswering
from meltr.tasks.retrieval import Retrieval

for task in (Retrieval, Classification, QuestionAnswering):
    gin.external_configurable(task, module="meltr.tasks")
