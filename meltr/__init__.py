"""MELTR: meta-learned combination of pretext-task losses for fine-tuning.

The core imports only torch, torchopt and the standard library.
"""

from meltr import solvers
from meltr.learner import MetaLearner, NonFiniteParametersError
from meltr.meta_loss import LinearMetaLoss, MetaLossTransformer

__all__ = [
    "LinearMetaLoss",
    "MetaLearner",
    "MetaLossTransformer",
    "NonFiniteParametersError",
    "solvers",
]
