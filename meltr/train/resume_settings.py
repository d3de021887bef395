"""Settings changed on ``--resume``: which apply, and which a resumed run refuses.

A resumed run is rebuilt from the current configuration (the run's ``config.gin`` plus what the
command line changes) and then takes its *state* from the checkpoint: the weights, the optimizers'
moments, the meta network, the counters, the random states, the data position and the replay
buffer. A changed setting therefore takes effect from the next step, with two definitions:

- the optimizers keep the hyperparameters they were built with (``backbone/AdamW.lr``,
  ``meta/Adam.lr``, betas, weight decay): a changed learning rate is the new base rate, which the
  schedule's multiplier keeps scaling (``meltr.train.checkpointing.restore``);
- the LR schedule is rebuilt for the current ``train.steps`` (and its other settings) and stepped
  to the checkpoint's step: extending a 30-step run to 60 continues at the 60-step schedule's rate
  for step 30, not at the 30-step schedule's end (zero).

A setting that defines restored state cannot take effect exactly and is refused (exit 2, naming
it): ``REFUSED`` below, and ``train.steps`` below the checkpoint's step. Settings that shape the
weights (model and meta-network sizes) are refused by the restore itself: the checkpoint does not
fit, and the error lists the settings changed since it was saved. Bindings present on one side
only (a component swapped out, whose ``Recipe.*`` binding then changes; a parameter a newer
version of the code added) are not compared.
"""

from __future__ import annotations

import gin

from meltr.train.config import ConfigError, config_to_dict, upgrade_saved_config

# The setting (scope and module prefixes dropped) -> why the checkpoint's state fixes it.
_STATE = "the checkpoint holds the state of the component it built"
REFUSED = {
    "train.seed": "the random states and the data order come from the checkpoint",
    "train.batch_size": "the data position counts batches of the saved size",
    "train_loader.shuffle_buffer": "the data position is a position in the saved shuffled stream",
    "MetaLearner.replay": "the replay buffer comes from the checkpoint",
    "MetaLearner.replay_seed": "the replay generator's state comes from the checkpoint",
    **{
        f"Recipe.{component}": _STATE
        for component in (
            "model",
            "meta_loss",
            "loss_source",
            "learner",
            "optimizer",
            "meta_optimizer",
            "tokenizer",
        )
    },
}


def setting_changes(saved_config: str) -> dict[str, tuple[object, object]]:
    """``{binding: (saved value, current value)}`` for every binding of the current operative gin
    config that ``saved_config`` (a run's ``config.gin``, read with the names renamed since)
    also binds, to another value; macros are compared through the bindings that use them."""
    saved = _resolved(config_to_dict(upgrade_saved_config(saved_config)[0]))
    current = _resolved(config_to_dict(gin.operative_config_str()))
    return {
        key: (saved[key], value)
        for key, value in current.items()
        if key in saved and not _is_macro(key) and saved[key] != value
    }


def changed_settings(saved_config: str) -> str:
    """``setting_changes`` in words (empty when nothing changed)."""
    return _describe(setting_changes(saved_config))


def _describe(changes: dict[str, tuple[object, object]]) -> str:
    return ", ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changes.items())


def check_resumed_settings(saved_config: str, step: int) -> str:
    """ConfigError naming every changed setting a run resumed at ``step`` cannot apply (module
    docstring); else the applied changes in words (empty when nothing changed)."""
    changes = setting_changes(saved_config)
    refused = [
        f"{key} ({old!r} -> {new!r}: {REFUSED[_name(key)]})"
        for key, (old, new) in changes.items()
        if _name(key) in REFUSED
    ]
    steps = changes.get("train.steps")
    if steps is not None and isinstance(steps[1], int) and steps[1] < step:
        refused.append(f"train.steps ({steps[0]!r} -> {steps[1]!r}: the checkpoint is at {step})")
    if refused:
        raise ConfigError(
            "--resume cannot apply these changed settings: "
            + "; ".join(refused)
            + ". Resume with the saved values, or start a new run (another --output)"
        )
    return _describe(changes)


def _name(key: str) -> str:
    """``scope/module.Configurable.param`` -> ``Configurable.param``."""
    return ".".join(key.rsplit("/", 1)[-1].split(".")[-2:])


def _is_macro(key: str) -> bool:
    return "." not in key


def _resolved(flat: dict[str, object]) -> dict[str, object]:
    """``flat`` with every ``%MACRO`` reference replaced by the macro's value."""
    macros = {key: value for key, value in flat.items() if _is_macro(key)}

    def resolve(value: object) -> object:
        if isinstance(value, str) and value.startswith("%") and value[1:] in macros:
            return resolve(macros[value[1:]])
        if isinstance(value, list | tuple):
            return type(value)(resolve(item) for item in value)
        return value

    return {key: resolve(value) for key, value in flat.items()}
