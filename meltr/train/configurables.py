"""Every generic gin registration, plus the discovery of the backbones' and tasks' own.

Names as recipes write them: the run ``train`` (settings) and ``Recipe`` (components);
``MetaLearner``, ``MetaLossTransformer``, ``LinearMetaLoss`` and the baseline combiners
(``FixedWeights``, ``UncertaintyWeighting``, ``DynamicWeightAverage``, ``RandomLossWeighting``,
``FAMO``); the solvers ``Identity`` / ``Neumann`` / ``ConjugateGradient`` / ``StocBIO`` /
``Unrolled``; ``TorchJDAggregation`` (``MetaLearner.aggregate``, the gradient-aggregation
baselines); the
optimizers ``Adam`` / ``AdamW`` / ``SGD`` (scoped: ``backbone/AdamW``, ``meta/Adam``); the
schedules ``warmup_linear_schedule``, ``multistep_schedule`` and ``constant_schedule``;
``Distributed``. The data side (tokenizer, decoders, streams) and every built-in dataset are
registered by ``meltr.data.configurables``, imported here. Every ``configurables`` module under
``meltr.backbones`` and ``meltr.tasks`` is imported too, registering the backbones' and tasks'
names.

Arguments the training system supplies itself (the model, the parameters an optimizer gets, the
vocabulary size, the number of tasks, the tokenizer, data positions) are denylisted, so binding
one is an error at parse time instead of being silently overridden.
"""

import importlib
import pkgutil

import gin
import torch

import meltr
import meltr.backbones
import meltr.data.configurables  # noqa: F401 (registers the data side and the datasets)
import meltr.tasks
from meltr import solvers, weighting
from meltr.train import schedule
from meltr.train.aggregation import TorchJDAggregation
from meltr.train.recipe import Recipe, RunSettings

LEARNER_SUPPLIED = ["model", "meta_loss", "loss_source", "optimizer", "meta_optimizer"]

gin.external_configurable(RunSettings, "train", module="meltr.train")
gin.external_configurable(Recipe, module="meltr.train")

gin.external_configurable(meltr.MetaLearner, module="meltr", denylist=LEARNER_SUPPLIED)
for meta_loss in (
    meltr.MetaLossTransformer,
    meltr.LinearMetaLoss,
    weighting.FixedWeights,
    weighting.UncertaintyWeighting,
    weighting.DynamicWeightAverage,
    weighting.RandomLossWeighting,
    weighting.FAMO,
):
    gin.external_configurable(meta_loss, module="meltr", denylist=["num_tasks"])
for solver in solvers.SOLVERS:
    gin.external_configurable(solver, module="meltr.solvers")

gin.external_configurable(TorchJDAggregation, module="meltr.train")

for optimizer in (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD):
    gin.external_configurable(optimizer, module="torch.optim", denylist=["params"])
for lr_schedule in (
    schedule.warmup_linear_schedule,
    schedule.multistep_schedule,
    schedule.constant_schedule,
):
    gin.external_configurable(
        lr_schedule, module="meltr.train", denylist=["optimizer", "total_steps"]
    )

for package in (meltr.backbones, meltr.tasks):
    for module in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}."):
        if module.name.rsplit(".", 1)[-1] == "configurables":
            importlib.import_module(module.name)
