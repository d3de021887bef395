"""The one construction path: from the parsed gin recipe to the objects a run uses.

``tools/train.py``, ``tools/evaluate.py`` and ``tools/inspect_checkpoint.py`` all build through
here, so a recipe that evaluates is the recipe that trains. Every mistake a configuration can make
(a missing binding, a value a component refuses, a path that is not there, a data-side factory
that needs a tokenizer the recipe lacks) becomes a ``ConfigError`` naming the binding, raised
before anything is read from the data or written.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gin
import torch
from torch import nn

from meltr.backbones.checkpoint import LoadReport
from meltr.objective import capture_rng, restore_rng
from meltr.train.config import ConfigError
from meltr.train.distributed import (
    check_meta_learning_supported,
    mean_over_ranks,
    reduced_loss_source,
)
from meltr.train.recipe import Recipe, RunSettings


def _name(factory: Any) -> str:
    factory = getattr(factory, "__wrapped__", factory)
    return getattr(factory, "__name__", type(factory).__name__)


def construct(binding: str, factory: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``factory(*args, **kwargs)``; a ValueError or TypeError becomes a ConfigError naming the
    binding and the factory (a component refusing the values the recipe gave it)."""
    try:
        return factory(*args, **kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{binding} = {_name(factory)}: {error}") from None


def read_recipe() -> tuple[RunSettings, Recipe]:
    """The parsed recipe's ``train.*`` settings and ``Recipe.*`` components (gin fills both);
    applies ``train.num_threads``.

    A missing or invalid binding is a ConfigError naming it.
    """
    settings = construct("train", gin.get_configurable("train"))
    if settings.num_threads is not None:
        torch.set_num_threads(settings.num_threads)
    recipe = construct("Recipe", gin.get_configurable("Recipe"))
    return settings, recipe


def call_with_tokenizer(binding: str, factory: Callable[..., Any], tokenizer: Any) -> Any:
    """``factory(tokenizer=tokenizer)`` if its signature has a ``tokenizer`` parameter, else
    ``factory()``. ConfigError when it requires a tokenizer and the recipe has none."""
    # gin's wrapper of a class hides the signature; its __init__ keeps the original one.
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        parameters = inspect.signature(inspect.unwrap(target)).parameters
    except (TypeError, ValueError):  # builtins without a signature
        parameters = {}
    wants = "tokenizer" in parameters
    if wants and tokenizer is None and parameters["tokenizer"].default is inspect.Parameter.empty:
        raise ConfigError(
            f"{binding} = {_name(factory)} needs a tokenizer, but the recipe has none: bind "
            "Recipe.tokenizer (e.g. @WordPieceTokenizer) and set VOCAB"
        )
    return construct(binding, factory, **({"tokenizer": tokenizer} if wants else {}))


def task_names(loss_source: Any, model: nn.Module, probe_batch: Any | None) -> list[str]:
    """The loss source's task names, primary first: its ``tasks`` attribute, else the keys of one
    call on ``probe_batch`` (without gradients, the global RNG restored afterwards)."""
    tasks = getattr(loss_source, "tasks", None)
    if tasks is not None:
        return list(tasks)
    if probe_batch is None:
        raise ConfigError(
            f"the loss source {_name(loss_source)} has no 'tasks' attribute; the number of tasks "
            "is only known from a batch"
        )
    rng = capture_rng()
    try:
        with torch.no_grad():
            return list(loss_source(model, probe_batch))
    finally:
        restore_rng(rng)


@dataclass
class Components:
    """What ``build`` makes. ``meta_loss`` is None until the number of tasks is known (a loss
    source without a ``tasks`` attribute); ``load_report`` is the checkpoint loader's report."""

    settings: RunSettings
    recipe: Recipe
    tokenizer: Any
    model: nn.Module
    decoder: Any
    task: Any
    transforms: list[Callable[[dict, torch.Generator], dict]] = field(default_factory=list)
    meta_loss: nn.Module | None = None
    load_report: LoadReport | None = None

    def build_meta_loss(self, num_tasks: int) -> nn.Module:
        """``Recipe.meta_loss(num_tasks=...)`` (stored and returned)."""
        self.meta_loss = construct("Recipe.meta_loss", self.recipe.meta_loss, num_tasks=num_tasks)
        return self.meta_loss


def build(settings: RunSettings, recipe: Recipe, probe_batch: Any | None = None) -> Components:
    """Build the tokenizer, model, decoder, training transforms and task; the meta loss when the
    number of tasks is known (``loss_source.tasks``, or a call on ``probe_batch``). Nothing is
    moved to a device and no checkpoint is read (see ``load_initial_checkpoint``)."""
    tokenizer = (
        None
        if recipe.tokenizer is None
        else construct("Recipe.tokenizer", recipe.tokenizer, settings.vocab)
    )
    model_arguments = {} if tokenizer is None else {"vocab_size": tokenizer.vocab_size}
    model = construct("Recipe.model", recipe.model, **model_arguments)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"Recipe.model = {_name(recipe.model)} did not build an nn.Module")
    components = Components(
        settings=settings,
        recipe=recipe,
        tokenizer=tokenizer,
        model=model,
        decoder=call_with_tokenizer("Recipe.decoder", recipe.decoder, tokenizer),
        task=call_with_tokenizer("Recipe.task", recipe.task, tokenizer),
        transforms=[
            call_with_tokenizer("Recipe.train_transforms", transform, tokenizer)
            for transform in recipe.train_transforms
        ],
    )
    if getattr(recipe.loss_source, "tasks", None) is not None or probe_batch is not None:
        components.build_meta_loss(len(task_names(recipe.loss_source, model, probe_batch)))
    return components


def load_initial_checkpoint(components: Components) -> LoadReport | None:
    """Initialise the model (and, with ``train.checkpoint_meta_loss``, the meta loss) from
    ``CHECKPOINT``; None when no checkpoint is set. See ``load_official_checkpoint``."""
    settings = components.settings
    if settings.checkpoint is None:
        return None
    return load_official_checkpoint(components, settings.checkpoint, settings.checkpoint_meta_loss)


def load_official_checkpoint(
    components: Components, path: str, with_meta_loss: bool = False
) -> LoadReport:
    """Read ``path`` into the model (and the meta loss when ``with_meta_loss``) with
    ``Recipe.checkpoint_loader``, honouring ``train.trust_checkpoint_pickle``. ConfigError when the
    recipe has no loader or the file does not fit the model (the loader's error names the key)."""
    loader = components.recipe.checkpoint_loader
    if loader is None:
        raise ConfigError(
            f"cannot read {path}: the recipe has no Recipe.checkpoint_loader for official files"
        )
    if with_meta_loss and components.meta_loss is None:
        raise ConfigError("train.checkpoint_meta_loss needs the loss source's tasks attribute")
    components.load_report = construct(
        "Recipe.checkpoint_loader",
        loader,
        components.model,
        path,
        meta_loss=components.meta_loss if with_meta_loss else None,
        trust_pickle=components.settings.trust_checkpoint_pickle,
    )
    return components.load_report


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> the first GPU when there is one, else the CPU; otherwise ``torch.device``.
    ConfigError naming ``train.device`` when it asks for a GPU this machine does not have."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(
                f"train.device = {name!r}, but this machine has no CUDA device "
                "(torch.cuda.is_available() is False); use 'auto' or 'cpu'"
            )
        if device.index is not None and device.index >= count:
            raise ConfigError(
                f"train.device = {name!r}, but this machine has {count} CUDA device(s) "
                f"(cuda:0 ... cuda:{count - 1})"
            )
    return device


def build_learner(
    recipe: Recipe, settings: RunSettings, model: nn.Module, meta_loss: nn.Module, strategy: str
) -> tuple[Any, torch.optim.lr_scheduler.LRScheduler]:
    """The learner (``Recipe.learner`` with ``Recipe.optimizer`` over the model and
    ``Recipe.meta_optimizer`` over the meta loss) and the LR schedule (``Recipe.lr_schedule`` over
    ``train.steps``). Under a data-parallel ``strategy`` the loss source gives global-batch values
    and phi's gradient is averaged over the ranks; ConfigError for a solver or products the
    strategy cannot run."""
    sharded = strategy != "none"
    optimizer = construct("Recipe.optimizer", recipe.optimizer, model.parameters())
    meta_optimizer = (
        None
        if recipe.meta_optimizer is None
        else construct("Recipe.meta_optimizer", recipe.meta_optimizer, meta_loss.parameters())
    )
    lr_schedule = construct(
        "Recipe.lr_schedule", recipe.lr_schedule, optimizer, total_steps=settings.steps
    )
    loss_source = recipe.loss_source
    learner = construct(
        "Recipe.learner",
        recipe.learner,
        model=model,
        meta_loss=meta_loss,
        loss_source=reduced_loss_source(loss_source) if sharded else loss_source,
        optimizer=optimizer,
        meta_optimizer=meta_optimizer,
        **({"reduce": mean_over_ranks} if sharded else {}),
    )
    try:
        check_meta_learning_supported(
            strategy, learner.products.name, learner.solver, learner.aggregate
        )
    except ValueError as error:
        raise ConfigError(str(error)) from error
    return learner, lr_schedule
