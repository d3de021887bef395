"""Every generic gin registration, plus the discovery of the backbones' and tasks' own.

Names as recipes write them: the run ``train`` (settings) and ``Recipe`` (components);
``MetaLearner``, ``MetaLossTransformer``, ``LinearMetaLoss`` and the baseline combiners
(``FixedWeights``, ``UncertaintyWeighting``, ``DynamicWeightAverage``, ``RandomLossWeighting``,
``FAMO``); the solvers ``Identity`` / ``Neumann`` / ``ConjugateGradient`` / ``StocBIO`` /
``Unrolled``; ``TorchJDAggregation`` (``MetaLearner.aggregate``, the gradient-aggregation
baselines); the
optimizers ``Adam`` / ``AdamW`` / ``SGD`` (scoped: ``backbone/AdamW``, ``meta/Adam``); the
schedules ``warmup_linear_schedule``, ``multistep_schedule`` and ``constant_schedule``;
``Distributed``; the data side
``WordPieceTokenizer``, ``MaskTokens``, the decoders ``VideoCaptions``, ``VideoQA``,
``VideoLabel``, ``FeatureText``, ``ImageLabel``, ``TextLabel``, the streams ``train_loader`` /
``eval_loader`` and the built-in datasets ``synthetic_dataset`` / ``synthetic_data_dir`` /
``synthetic_vocab`` / ``synthetic_images`` / ``synthetic_images_dir``. Every ``configurables``
module under ``meltr.backbones`` and ``meltr.tasks`` is imported too, registering the backbones'
and tasks' names.

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
import meltr.tasks
from meltr import solvers, weighting
from meltr.data import decoders, stream, synthetic, synthetic_images
from meltr.data.text import MaskTokens, WordPieceTokenizer
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

gin.external_configurable(WordPieceTokenizer, module="meltr.data", denylist=["vocab_path"])
gin.external_configurable(MaskTokens, module="meltr.data", denylist=["tokenizer"])
for decoder in (
    decoders.VideoCaptions,
    decoders.VideoQA,
    decoders.FeatureText,
    decoders.TextLabel,
):
    gin.external_configurable(decoder, module="meltr.data", denylist=["tokenizer"])
for decoder in (decoders.VideoLabel, decoders.ImageLabel):
    gin.external_configurable(decoder, module="meltr.data")
gin.external_configurable(
    stream.train_loader,
    module="meltr.data",
    denylist=["data_dir", "decoder", "batch_size", "transforms", "seed", "start_batch"],
)
gin.external_configurable(
    stream.eval_loader,
    module="meltr.data",
    denylist=["data_dir", "decoder", "batch_size", "split", "view"],
)

synthetic_dataset = gin.external_configurable(
    synthetic.cached_synthetic_dataset, "synthetic_dataset", module="meltr.data"
)
synthetic_images = gin.external_configurable(
    synthetic_images.cached_synthetic_images, "synthetic_images", module="meltr.data"
)


# The built-in datasets as paths for the DATA_DIR / VOCAB macros. They call the gin-configured
# generators above, so that ``synthetic_dataset.*`` and ``synthetic_images.*`` bindings apply.
@gin.configurable(module="meltr.data")
def synthetic_data_dir() -> str:
    """The synthetic video dataset's shard directory (generated on first use)."""
    return synthetic_dataset()["root"]


@gin.configurable(module="meltr.data")
def synthetic_vocab() -> str:
    """The synthetic video dataset's ``vocab.txt``."""
    return synthetic_dataset()["vocab"]


@gin.configurable(module="meltr.data")
def synthetic_images_dir() -> str:
    """The synthetic image dataset's shard directory (generated on first use)."""
    return synthetic_images()["root"]


for package in (meltr.backbones, meltr.tasks):
    for module in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}."):
        if module.name.rsplit(".", 1)[-1] == "configurables":
            importlib.import_module(module.name)
