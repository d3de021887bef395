"""When a run's state may be checkpointed, and which checkpoints stay once it has diverged.

A run is *healthy* when its latest inner update was applied: the learner found the task losses,
the meta loss ``M``, ``dM/dl``, the gradient and the updated weights finite
(``MetaLearner.consecutive_skips == 0``). Only a healthy state is checkpointed; while updates are
being skipped, no checkpoint (``last``, ``best``, or one at a preemption signal) is written, so a
run in a bad state never writes over the last good one.

That the latest update was applied does not prove the saved state can be trained from: weights
at 5e5 after one huge step, or a meta network at 1e6 that makes ``M`` NaN from the next batch on,
are finite, and no threshold on a magnitude tells a diverged value from a large, legitimate one.
What does tell is the next update: a checkpoint is *good* once an inner update from its state
was applied. When a run stops because it diverged (``train.max_consecutive_skips`` skipped
updates in a row, or a parameter that became non-finite in an update), the checkpoints saved at
its last applied update, from which every later update failed, are moved to
``checkpoints/set_aside/`` (``<name>.diverged``: kept, never resumed from, never saved over), and
the newest remaining checkpoint, the last good one, is named.
"""

from __future__ import annotations

from pathlib import Path

from meltr.train.saved_checkpoints import newest_readable, saved_checkpoints, set_aside


class TrainingStopped(RuntimeError):
    """The run stopped itself: it diverged (non-finite values, see the message); the last good
    checkpoint was kept."""


def unhealthy_reason(consecutive_skips: int, last_skip: str | None) -> str | None:
    """Why the learner's current state must not be checkpointed (None: it may be)."""
    if consecutive_skips == 0:
        return None
    return f"the latest {consecutive_skips} inner update(s) were skipped ({last_skip})"


def keep_good_checkpoints(checkpoints: Path, last_applied_step: int) -> str:
    """Set aside the checkpoints saved at or after ``last_applied_step`` (the step of the last
    applied inner update of a run that then diverged); return a sentence naming what was moved
    and the last good checkpoint that remains (or saying there is none)."""
    moved = [
        f"{saved.path.name} (step {saved.step}) to {set_aside(saved, 'diverged')}"
        for saved in saved_checkpoints(checkpoints)
        if saved.step is not None and saved.step >= last_applied_step
    ]
    sentence = ""
    if moved:
        sentence = (
            f"Every update from the state saved at step {last_applied_step} failed, so its "
            f"checkpoint was set aside: {', '.join(moved)}. "
        )
    good = newest_readable(checkpoints)
    if good is not None:
        return sentence + f"The last good checkpoint is {good.path} (step {good.step})"
    return sentence + (
        f"{checkpoints} holds no good checkpoint: the run diverged before its first one, and "
        "--resume starts it again from step 0"
    )


def diverged(what: str, checkpoints: Path, last_applied: int, is_main: bool) -> TrainingStopped:
    """The error that stops a run diverged as ``what`` says, once its checkpoints in
    ``checkpoints`` from ``last_applied`` (the step of the last applied update) on are set aside
    (``keep_good_checkpoints``, by the main process ``is_main``); its message says how to go on."""
    kept = keep_good_checkpoints(checkpoints, last_applied) + ". " if is_main else ""
    return TrainingStopped(
        f"{what}. No checkpoint was saved after step {last_applied}, the last applied "
        f"update. {kept}Lower the learning rates (or check the data) and continue with "
        "--resume, e.g. --resume --backbone/AdamW.lr=..."
    )
