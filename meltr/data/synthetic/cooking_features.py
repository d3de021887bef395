"""A generated feature-sequence + text dataset (the feature + text kind): cooking steps.

Each clip is one cooking step: an action (cut, stir, pour, fry, wash, peel) on an ingredient (8 of
them) at a place (pan, bowl, board, pot), done slowly or quickly: 384 combinations. The clip is a
sequence of ``T`` feature vectors (``T`` drawn in ``[min_frames, max_frames]``), standing in for
UniVL's S3D features. Every attribute value has a fixed random prototype vector (one table per
dataset seed, entries N(0, 1)); frame ``t`` is the sum of the ingredient's, the place's and the
speed's prototypes, plus the action's prototype on the frames of the action segment (a random run
of at least half of the clip), plus N(0, ``noise``^2) noise in every entry. So the features encode
every attribute, noisily, and the action only on part of the clip.

Captions name all four attributes through synonyms and sentence templates ("the cook chops the
onion on a cutting board quickly", "gently stir the egg in a bowl"); training clips carry
``captions_per_train_video`` distinct captions, validation and test clips
``references_per_eval_video`` (the references of captioning, the queries of retrieval). Each clip
also has a transcript, what the cook might say ("okay now we take the onion and the board"): it
names the ingredient, and the place half of the time, but never the action or the speed.

Every clip is a pure function of ``(seed, split, index)`` and the arguments.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np

from meltr.data.cache import cache_folder
from meltr.data.decoders import FeatureText
from meltr.data.synthetic.generation import (
    DatasetPlan,
    check_minimums,
    generate_dataset,
    item_rng,
    text_lines,
)
from meltr.data.synthetic.words import vocabulary
from meltr.data.writer import Sample

# action -> its verbs as (base, third person, gerund, participle)
ACTIONS: dict[str, tuple[tuple[str, str, str, str], ...]] = {
    "cut": (
        ("cut", "cuts", "cutting", "cut"),
        ("chop", "chops", "chopping", "chopped"),
        ("slice", "slices", "slicing", "sliced"),
        ("dice", "dices", "dicing", "diced"),
    ),
    "stir": (
        ("stir", "stirs", "stirring", "stirred"),
        ("mix", "mixes", "mixing", "mixed"),
        ("whisk", "whisks", "whisking", "whisked"),
    ),
    "pour": (("pour", "pours", "pouring", "poured"),),
    "fry": (
        ("fry", "fries", "frying", "fried"),
        ("saute", "sautes", "sauteing", "sauteed"),
        ("sear", "sears", "searing", "seared"),
    ),
    "wash": (("wash", "washes", "washing", "washed"), ("rinse", "rinses", "rinsing", "rinsed")),
    "peel": (("peel", "peels", "peeling", "peeled"),),
}
INGREDIENTS = ("onion", "tomato", "carrot", "potato", "egg", "chicken", "garlic", "pepper")
# place -> (phrases in captions, nouns in transcripts)
PLACES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "pan": (("in a pan", "in the pan", "in a skillet"), ("pan", "skillet")),
    "bowl": (("in a bowl", "in the bowl"), ("bowl",)),
    "board": (("on a cutting board", "on the board"), ("board",)),
    "pot": (("in a pot", "in the pot"), ("pot",)),
}
SPEEDS = {"slow": ("slowly", "gently", "carefully"), "fast": ("quickly", "rapidly", "fast")}
SUBJECTS = ("a person", "the cook", "someone", "a chef")
# {subject}, {third}, {gerund}, {participle}, {base}: the verb; {ingredient}, {place}, {speed}
TEMPLATES = (
    "{subject} {third} the {ingredient} {place} {speed}",
    "{speed} {base} the {ingredient} {place}",
    "{base} the {ingredient} {speed} {place}",
    "the {ingredient} is being {participle} {speed} {place}",
    "{subject} is {gerund} the {ingredient} {place} {speed}",
)
TRANSCRIPTS = (
    "now we {take} the {ingredient}",
    "okay {take} some {ingredient}",
    "next the {ingredient}",
)
TRANSCRIPT_VERBS = ("need", "take", "use", "grab")
# The random stream of the prototype table: ``[seed, PROTOTYPE_STREAM]`` (two numbers) never
# equals a clip's ``[seed, split code, index]``.
PROTOTYPE_STREAM = 3


@dataclass(frozen=True)
class CookingStep:
    """What one clip shows; frames ``[action_start, action_end)`` show the action."""

    action: str
    ingredient: str
    place: str
    speed: str
    num_frames: int
    action_start: int
    action_end: int


@dataclass(frozen=True)
class FeatureClipDescription:
    """The recipe of one clip (see ``write_shards``): everything ``materialise_feature_clip``
    needs."""

    key: str
    split: str
    index: int
    seed: int
    feature_dim: int
    min_frames: int
    max_frames: int
    noise: float
    num_captions: int


def attribute_prototypes(seed: int, feature_dim: int) -> dict[str, np.ndarray]:
    """``{"action:cut": [D], "ingredient:onion": [D], ...}``: the fixed N(0, 1) prototype of every
    attribute value of the dataset with this seed (the same for every split and clip)."""
    names = [f"action:{a}" for a in ACTIONS] + [f"ingredient:{i}" for i in INGREDIENTS]
    names += [f"place:{p}" for p in PLACES] + [f"speed:{s}" for s in SPEEDS]
    table = np.random.default_rng([seed, PROTOTYPE_STREAM]).standard_normal(
        (len(names), feature_dim)
    )
    return dict(zip(names, table, strict=True))


def sample_step(rng: np.random.Generator, min_frames: int, max_frames: int) -> CookingStep:
    """Draw the attributes, the length and the action segment (at least half of the frames)."""
    num_frames = int(rng.integers(min_frames, max_frames + 1))
    length = int(rng.integers(-(-num_frames // 2), num_frames + 1))
    start = int(rng.integers(0, num_frames - length + 1))
    return CookingStep(
        action=str(rng.choice(list(ACTIONS))),
        ingredient=str(rng.choice(INGREDIENTS)),
        place=str(rng.choice(list(PLACES))),
        speed=str(rng.choice(list(SPEEDS))),
        num_frames=num_frames,
        action_start=start,
        action_end=start + length,
    )


def render_features(
    step: CookingStep, prototypes: dict[str, np.ndarray], noise: float, rng: np.random.Generator
) -> np.ndarray:
    """The clip's features, float32 ``[num_frames, D]`` (module docstring)."""
    static = (
        prototypes[f"ingredient:{step.ingredient}"]
        + prototypes[f"place:{step.place}"]
        + prototypes[f"speed:{step.speed}"]
    )
    frames = np.repeat(static[None], step.num_frames, axis=0)
    frames[step.action_start : step.action_end] += prototypes[f"action:{step.action}"]
    frames += noise * rng.standard_normal(frames.shape)
    return frames.astype(np.float32)


def describe_step(step: CookingStep, rng: np.random.Generator) -> str:
    """One caption of ``step``: a random template filled with random synonyms."""

    def pick(options):
        return str(options[int(rng.integers(len(options)))])

    base, third, gerund, participle = ACTIONS[step.action][
        int(rng.integers(len(ACTIONS[step.action])))
    ]
    return pick(TEMPLATES).format(
        subject=pick(SUBJECTS),
        base=base,
        third=third,
        gerund=gerund,
        participle=participle,
        ingredient=step.ingredient,
        place=pick(PLACES[step.place][0]),
        speed=pick(SPEEDS[step.speed]),
    )


def transcribe_step(step: CookingStep, rng: np.random.Generator) -> str:
    """What the cook says: the ingredient, and the place half of the time."""
    template = TRANSCRIPTS[int(rng.integers(len(TRANSCRIPTS)))]
    text = template.format(
        take=TRANSCRIPT_VERBS[int(rng.integers(len(TRANSCRIPT_VERBS)))], ingredient=step.ingredient
    )
    if rng.random() < 0.5:
        nouns = PLACES[step.place][1]
        text += f" and the {nouns[int(rng.integers(len(nouns)))]}"
    return text


def build_vocab() -> list[str]:
    """BERT-format vocabulary: the special tokens (``[PAD]`` = 0), then every word the captions
    and transcripts use."""
    phrases = [word for verbs in ACTIONS.values() for verb in verbs for word in verb]
    phrases += [*INGREDIENTS, *SUBJECTS, *TRANSCRIPT_VERBS, "and the"]
    phrases += [phrase for places in PLACES.values() for group in places for phrase in group]
    phrases += [word for words in SPEEDS.values() for word in words]
    phrases += [re.sub(r"\{\w+\}", " ", template) for template in (*TEMPLATES, *TRANSCRIPTS)]
    return vocabulary(phrases)


def materialise_feature_clip(description: FeatureClipDescription) -> Sample:
    """Draw, render and caption one clip (the ``materialise`` of ``write_shards``)."""
    d = description
    rng = item_rng(d.seed, d.split, d.index)
    step = sample_step(rng, d.min_frames, d.max_frames)
    features = render_features(step, attribute_prototypes(d.seed, d.feature_dim), d.noise, rng)
    captions: list[str] = []
    for _ in range(50 * d.num_captions):  # distinct captions; the grammar has hundreds per step
        caption = describe_step(step, rng)
        if caption not in captions:
            captions.append(caption)
        if len(captions) == d.num_captions:
            break
    record = {
        "video_id": d.key,
        "captions": captions,
        "transcript": transcribe_step(step, rng),
        "split": d.split,
    }
    return {"__key__": d.key, "features.npy": features, "json": record}


def generate_synthetic_features(
    out_dir: str | os.PathLike,
    num_train: int = 1024,
    num_val: int = 128,
    num_test: int = 128,
    feature_dim: int = 32,
    min_frames: int = 4,
    max_frames: int = 12,
    noise: float = 1.0,
    seed: int = 0,
    captions_per_train_video: int = 4,
    references_per_eval_video: int = 3,
    samples_per_shard: int = 512,
    workers: int = 1,
    replace: bool = False,
) -> dict:
    """Write the dataset (train / val / test shards of the feature + text kind, ``vocab.txt``,
    ``manifest.json``) into ``out_dir``; reused or resumed as ``meltr.data.synthetic.generation``
    says.

    Returns ``{"root", "vocab", "manifest", "train", "val", "test"}`` (paths; a split of 0 clips
    has no shards). ValueError for a bad argument (named), or for ``out_dir`` holding another
    dataset unless ``replace``.
    """
    arguments = dict(num_train=num_train, num_val=num_val, num_test=num_test)
    arguments |= dict(feature_dim=feature_dim, min_frames=min_frames, max_frames=max_frames)
    arguments |= dict(noise=noise, seed=seed, captions_per_train_video=captions_per_train_video)
    arguments |= dict(references_per_eval_video=references_per_eval_video)
    arguments |= dict(samples_per_shard=samples_per_shard)
    _check_arguments(arguments)
    clip = dict(seed=seed, feature_dim=feature_dim, min_frames=min_frames, max_frames=max_frames)
    clip |= dict(noise=noise)
    splits = {}
    for split, count, num_captions in (
        ("train", num_train, captions_per_train_video),
        ("val", num_val, references_per_eval_video),
        ("test", num_test, references_per_eval_video),
    ):
        splits[split] = [
            FeatureClipDescription(
                f"cook-{split}-{i:06d}", split, i, num_captions=num_captions, **clip
            )
            for i in range(count)
        ]
    vocab = {"vocab.txt": text_lines(build_vocab())}
    plan = DatasetPlan(splits, materialise_feature_clip, FeatureText, samples_per_shard, vocab)
    paths = generate_dataset(out_dir, "synthetic-features", arguments, plan, workers, replace)
    return paths | {"vocab": os.path.join(paths["root"], "vocab.txt")}


def _check_arguments(arguments: dict) -> None:
    minimum = {"num_train": 1, "num_val": 0, "num_test": 1, "feature_dim": 1, "min_frames": 1}
    minimum |= {"max_frames": 1, "seed": 0, "samples_per_shard": 1}
    minimum |= {"captions_per_train_video": 1, "references_per_eval_video": 1}
    check_minimums(arguments, minimum)
    if arguments["max_frames"] < arguments["min_frames"]:
        raise ValueError(
            f"max_frames ({arguments['max_frames']}) must be >= min_frames "
            f"({arguments['min_frames']})"
        )
    noise = arguments["noise"]
    if not isinstance(noise, int | float) or isinstance(noise, bool) or not noise >= 0:
        raise ValueError(f"noise must be a number >= 0, got {noise!r}")


def cached_synthetic_features(
    num_train: int = 1024,
    num_val: int = 128,
    num_test: int = 128,
    feature_dim: int = 32,
    min_frames: int = 4,
    max_frames: int = 12,
    noise: float = 1.0,
    seed: int = 0,
) -> dict:
    """The generated feature dataset with these arguments, written into ``cache_root() /
    synthetic-features-<arguments>`` if absent. Returns ``generate_synthetic_features``' paths."""
    arguments = dict(num_train=num_train, num_val=num_val, num_test=num_test)
    arguments |= dict(feature_dim=feature_dim, min_frames=min_frames, max_frames=max_frames)
    arguments |= dict(noise=noise, seed=seed)
    directory = cache_folder("synthetic-features", arguments)
    return generate_synthetic_features(directory, replace=True, **arguments)
