"""The release recipes run the MELTR release's meta-learning loop: the learner that
gin/allinone_msrvtt.gin builds steps as the release's loop (tests/release_loop.py) with the
release's constants written here, and every release recipe binds its backbone's loop
(docs/release.md)."""

import copy

import gin
import pytest
import torch
from release_loop import release_loop
from torch import nn

import meltr
import meltr.train.configurables  # noqa: F401  (the gin registrations)
from meltr.train.build import construct
from meltr.train.config import parse_gin

# MELTR's allinone/ (docs/release.md): meta step every 5 on two of the last 10 batches, weighted
# eviction, gamma 0.1, meta gradient clipped to 1, Adam(1e-4, (0.9, 0.98), wd 3e-5) on the meta
# network (dim 128, 8 heads, ff 128, scale hidden 128); AdamW(3e-4, wd 0.01, (0.9, 0.98)).
ALLINONE = {"every": 5, "replay": 10, "eviction": "weighted", "gamma": 0.1, "clip": 1.0}


class TwoTasks(nn.Module):
    """A small regression backbone with a primary and an auxiliary loss, in float64."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def two_task_losses(model: nn.Module, batch: dict) -> dict:
    out = model(batch["x"])
    return {
        "itc": ((out[:, 0] - batch["y"]) ** 2).mean(),
        "mlm": nn.functional.softplus(out[:, 1] + batch["y"]).mean(),
    }


def batch(seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(6, 4, generator=generator, dtype=torch.float64),
        "y": torch.randn(6, generator=generator, dtype=torch.float64),
    }


def recipe_learner(bindings: list[str]):
    """The learner of gin/allinone_msrvtt.gin (its meta network, meta optimizer, optimizer and
    MetaLearner bindings) around the small backbone; the meta network in eval mode (its
    dropout masks are random draws the release and meltr take in different orders)."""
    parse_gin(["gin/allinone_msrvtt.gin"], bindings)
    try:
        recipe = construct("Recipe", gin.get_configurable("Recipe"))
        torch.manual_seed(0)
        model, meta = TwoTasks(), recipe.meta_loss(num_tasks=2).double().eval()
        learner = recipe.learner(
            model=model,
            meta_loss=meta,
            loss_source=two_task_losses,
            optimizer=recipe.optimizer(model.parameters()),
            meta_optimizer=recipe.meta_optimizer(meta.parameters()),
        )
    finally:
        gin.clear_config()
    return learner


def release_reference(learner) -> tuple[nn.Module, nn.Module]:
    """A copy of the learner's initial backbone and of its meta network's parameters in the
    release's network ``M = T(l)``, trained by the release's loop with the release's constants."""
    model = copy.deepcopy(learner.model)
    meta = meltr.MetaLossTransformer(
        2, dim=128, heads=8, ff_dim=128, scale_hidden=128, init="paper"
    ).double()
    parameters = dict(learner.meta_loss.named_parameters())
    meta.load_state_dict({k: v.detach().clone() for k, v in parameters.items()}, strict=False)
    meta.eval()
    release_loop(
        model,
        meta,
        BATCHES,
        lambda m, b: torch.stack(list(two_task_losses(m, b).values())),
        optimizer=torch.optim.AdamW(
            model.parameters(), lr=3e-4, weight_decay=0.01, betas=(0.9, 0.98)
        ),
        meta_optimizer=torch.optim.Adam(
            meta.parameters(), lr=1e-4, betas=(0.9, 0.98), weight_decay=3e-5
        ),
        seed=0,
        **ALLINONE,
    )
    return model, meta


BATCHES = [batch(100 + i) for i in range(16)]  # meta steps at 0, 5, 10, 15; evictions from 10


# Each departure from the release's loop changes the result well above the tolerance.
@pytest.mark.parametrize(
    ("bindings", "same"),
    [
        ([], True),
        (["MetaLearner.schedule = 'meltr'"], False),
        (["MetaLearner.eviction = 'oldest'"], False),
        (["MetaLearner.direct_grad = True"], False),
        (["MetaLossTransformer.init = 'sum'"], False),
    ],
    ids=["the recipe", "meltr's schedule", "oldest eviction", "direct gradient", "sum init"],
)
def test_allinone_release_recipe_steps_as_the_release_loop(bindings, same):
    learner = recipe_learner(bindings)
    model, meta = release_reference(learner)
    for b in BATCHES:
        learner.step(b)
    pairs = [
        *zip(learner.model.parameters(), model.parameters(), strict=True),
        *zip(learner.meta_loss.parameters(), meta.parameters(), strict=True),
    ]
    gap = max(float((a - b).detach().abs().max()) for a, b in pairs)
    # Finite-difference products (the recipe's) approximate the release's double backward.
    assert (gap < 1e-8) == same, gap


# schedule, eviction, init, dropout, direct_grad of each release (docs/release.md).
ALLINONE_LOOP = ("release", "weighted", "paper", 0.1, False)
UNIVL_LOOP = ("release", "oldest", "paper", 0.0, False)
VIOLET_LOOP = ("release", "weighted", "paper", 0.1, False)
RELEASE_RECIPES = {
    "allinone_msrvtt": ALLINONE_LOOP,
    "allinone_msrvtt_7k": ALLINONE_LOOP,
    "univl_youcook2_retrieval": UNIVL_LOOP,
    "univl_youcook2_caption": UNIVL_LOOP,
    "univl_youcook2_caption_transcript": UNIVL_LOOP,
    "univl_msrvtt_caption": UNIVL_LOOP,
    "univl_mosi": UNIVL_LOOP,
    "violet_msrvtt_retrieval": VIOLET_LOOP,
    "violet_tgif_action": VIOLET_LOOP,
    "violet_tgif_transition": VIOLET_LOOP,
    "violet_tgif_frame": VIOLET_LOOP,
    "violet_msvd_qa": VIOLET_LOOP,
    "violet_kinetics400": VIOLET_LOOP,
}


@pytest.mark.parametrize("name", sorted(RELEASE_RECIPES))
def test_each_release_recipe_binds_its_release_loop(name):
    parse_gin([f"gin/{name}.gin"], [])
    try:
        bound = tuple(
            gin.query_parameter(binding)
            for binding in (
                "MetaLearner.schedule",
                "MetaLearner.eviction",
                "MetaLossTransformer.init",
                "MetaLossTransformer.dropout",
                "MetaLearner.direct_grad",
            )
        )
    finally:
        gin.clear_config()
    assert bound == RELEASE_RECIPES[name]
