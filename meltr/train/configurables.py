"""Every gin registration of the project, in one place (the core modules stay gin-free).

Names as recipes write them: ``MetaLearner``, ``MetaLossTransformer``, ``LinearMetaLoss``, the
solvers ``Identity`` / ``Neumann`` / ``ConjugateGradient`` / ``Unrolled``, the optimizers
``Adam`` / ``AdamW`` / ``SGD`` (scoped: ``backbone/AdamW``, ``meta/Adam``),
``warmup_linear_schedule``, ``AllInOne``, ``AllInOneRetrievalLoss``, ``WordPieceTokenizer``,
``train_loader``, ``eval_loader``, ``synthetic_dataset`` / ``synthetic_data_dir`` /
``synthetic_vocab`` and the entry point ``train``.

Arguments the training loop supplies itself (the model, the parameters an optimizer gets, the
vocabulary size, the number of tasks, data positions) are denylisted, so binding one is an error
at parse time instead of being silently overridden.
"""

import gin
import torch

import meltr
from meltr import solvers
from meltr.backbones.allinone import AllInOne, AllInOneRetrievalLoss
from meltr.data import pipeline
from meltr.data.text import WordPieceTokenizer
from meltr.train import data_paths, schedule
from meltr.train.loop import train

LEARNER_SUPPLIED = ["model", "meta_loss", "loss_source", "optimizer", "meta_optimizer"]

gin.external_configurable(meltr.MetaLearner, module="meltr", denylist=LEARNER_SUPPLIED)
gin.external_configurable(meltr.MetaLossTransformer, module="meltr", denylist=["num_tasks"])
gin.external_configurable(meltr.LinearMetaLoss, module="meltr", denylist=["num_tasks"])
for solver in (solvers.Identity, solvers.Neumann, solvers.ConjugateGradient, solvers.Unrolled):
    gin.external_configurable(solver, module="meltr.solvers")

for optimizer in (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD):
    gin.external_configurable(optimizer, module="torch.optim", denylist=["params"])
gin.external_configurable(
    schedule.warmup_linear_schedule, module="meltr.train", denylist=["optimizer", "total_steps"]
)

gin.external_configurable(AllInOne, module="meltr.backbones.allinone", denylist=["vocab_size"])
gin.external_configurable(AllInOneRetrievalLoss, module="meltr.backbones.allinone")

gin.external_configurable(WordPieceTokenizer, module="meltr.data", denylist=["vocab_path"])
gin.external_configurable(
    pipeline.train_loader,
    module="meltr.data",
    denylist=["data_dir", "tokenizer", "batch_size", "seed", "start_batch"],
)
gin.external_configurable(
    pipeline.eval_loader,
    module="meltr.data",
    denylist=["data_dir", "tokenizer", "batch_size", "view"],
)
gin.external_configurable(data_paths.synthetic_dataset, module="meltr.train")
gin.external_configurable(data_paths.synthetic_data_dir, module="meltr.train")
gin.external_configurable(data_paths.synthetic_vocab, module="meltr.train")

__all__ = ["train"]
