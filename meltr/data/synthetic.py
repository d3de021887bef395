"""A procedural video-text dataset: moving coloured shapes described by a small grammar.

Each clip shows one shape (circle, square or triangle; small or large; one of seven colours) moving
in a straight line (left, right, up or down; slowly or quickly) over a plain, striped or checkered
background of another colour. Captions name every attribute through synonyms and varied sentence
templates ("a tiny crimson disk slides fast leftward over an azure backdrop"), so matching a caption
to its clip needs the video, not caption statistics. Train clips carry several captions, test clips
exactly one.

Every clip is a pure function of ``(seed, split, index)`` and the rendering arguments, so the same
arguments always give the same bytes, whatever the number of workers.
"""

from __future__ import annotations

import functools
import inspect
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from meltr.data.cache import cache_root, generation_lock
from meltr.data.decoders import VideoCaptions
from meltr.data.writer import RECORD, Sample, shard_path, write_shards

# colour name -> (RGB rendered, words used in captions). Pairwise far apart in RGB so that video
# compression never makes one look like another.
COLOURS: dict[str, tuple[tuple[int, int, int], tuple[str, ...]]] = {
    "red": ((215, 40, 40), ("red", "crimson", "scarlet")),
    "yellow": ((235, 215, 40), ("yellow", "golden")),
    "green": ((50, 170, 70), ("green", "emerald")),
    "cyan": ((40, 200, 210), ("cyan", "turquoise", "aqua")),
    "blue": ((40, 80, 225), ("blue", "navy", "azure")),
    "purple": ((170, 50, 170), ("purple", "violet")),
    "white": ((235, 235, 235), ("white", "ivory")),
}
SHAPES = {
    "circle": ("circle", "disk", "ball", "dot"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle", "wedge"),
}
# size name -> (shape radius as a fraction of the frame side, words)
SIZES = {"small": (0.12, ("small", "tiny", "little")), "large": (0.2, ("large", "big", "huge"))}
# speed name -> (distance travelled over the clip as a fraction of the frame side, words)
SPEEDS = {
    "slow": (0.15, ("slowly", "gently", "leisurely")),
    "fast": (0.4, ("quickly", "fast", "rapidly", "swiftly")),
}
# direction name -> (unit step (dx, dy) in image coordinates, y pointing down; phrases)
DIRECTIONS = {
    "left": ((-1, 0), ("to the left", "leftward", "towards the left")),
    "right": ((1, 0), ("to the right", "rightward", "towards the right")),
    "up": ((0, -1), ("up", "upward", "towards the top")),
    "down": ((0, 1), ("down", "downward", "towards the bottom")),
}
TEXTURES = {"plain": ("", "plain"), "striped": ("striped",), "checkered": ("checkered", "checked")}
TEXTURE_SHADE = 28  # how much darker the second tone of a striped / checkered background is
VERBS = (
    ("moves", "moving"),
    ("slides", "sliding"),
    ("travels", "travelling"),
    ("glides", "gliding"),
)
BACKGROUND_NOUNS = ("background", "backdrop")
TEMPLATES = (
    "{subject} {verb} {motion} on {background}",
    "{subject} {verb} {motion} over {background}",
    "on {background}, {subject} {verb} {motion}",
    "{subject} on {background} is {gerund} {motion}",
    "there is {subject} {gerund} {motion} against {background}",
)
# Sentence templates by phrasing: "pretrain" clips use the first three, "downstream" clips the
# gerund forms, "all" clips any (a new task phrasing for a pretrain-then-fine-tune setting).
PHRASINGS = {"all": TEMPLATES, "pretrain": TEMPLATES[:3], "downstream": TEMPLATES[3:]}
# Which (shape, colour) pairs clips may show: "unseen" ones are every third pair in table order
# (7 of the 21, each colour with one shape), "seen" the rest, so that a corpus of "seen" clips and
# a split of "unseen" ones share every attribute but no combination.
COMBINATIONS = ("all", "seen", "unseen")
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
CODECS = ("mpeg4", "libx264")
SPLIT_CODES = {"train": 0, "test": 1, "val": 2}
SPLITS = ("train", "val", "test")
MANIFEST_FORMAT = "meltr-synthetic-v1"
WORD_PATTERN = re.compile(r"[a-z]+|[.,]")


@dataclass(frozen=True)
class Scene:
    """What one clip shows. ``start`` is the shape centre in pixels (x, y) in the first frame."""

    shape: str
    colour: str
    size: str
    direction: str
    speed: str
    background: str
    texture: str
    start: tuple[float, float]


@dataclass(frozen=True)
class ClipDescription:
    """The recipe of one clip (see ``write_shards``): everything ``materialise_clip`` needs."""

    key: str
    split: str
    index: int
    seed: int
    num_frames: int
    size: int
    fps: int
    codec: str
    num_captions: int
    combinations: str = "all"
    phrasing: str = "all"


def is_unseen_pair(shape: str, colour: str) -> bool:
    """Whether (``shape``, ``colour``) is one of the pairs held out of ``combinations="seen"``."""
    return (list(SHAPES).index(shape) + list(COLOURS).index(colour)) % 3 == 0


def sample_scene(rng: np.random.Generator, size: int, combinations: str = "all") -> Scene:
    """Draw attributes and a start position that keeps the shape inside a ``size``² frame; with
    ``combinations`` "seen" or "unseen", redraw until the (shape, colour) pair is of that kind."""
    while True:
        scene = _draw_scene(rng, size)
        unseen = is_unseen_pair(scene.shape, scene.colour)
        if combinations == "all" or unseen == (combinations == "unseen"):
            return scene


def _draw_scene(rng: np.random.Generator, size: int) -> Scene:
    colour, background = rng.choice(list(COLOURS), size=2, replace=False)
    size_name = str(rng.choice(list(SIZES)))
    speed = str(rng.choice(list(SPEEDS)))
    direction = str(rng.choice(list(DIRECTIONS)))
    radius = SIZES[size_name][0] * size
    travel = SPEEDS[speed][0] * size
    step = DIRECTIONS[direction][0]
    start = []
    for axis_step in step:
        low, high = radius, size - radius
        if axis_step > 0:
            high -= travel
        elif axis_step < 0:
            low += travel
        start.append(float(rng.uniform(low, high)))
    return Scene(
        shape=str(rng.choice(list(SHAPES))),
        colour=str(colour),
        size=size_name,
        direction=direction,
        speed=speed,
        background=str(background),
        texture=str(rng.choice(list(TEXTURES))),
        start=(start[0], start[1]),
    )


def render_scene(scene: Scene, num_frames: int, size: int) -> np.ndarray:
    """Frames of ``scene`` as uint8 ``[num_frames, size, size, 3]`` RGB."""
    centres = np.arange(size) + 0.5
    ys, xs = np.meshgrid(centres, centres, indexing="ij")
    frame = _background(scene, size)
    radius = SIZES[scene.size][0] * size
    travel = SPEEDS[scene.speed][0] * size
    step = np.array(DIRECTIONS[scene.direction][0], dtype=np.float64)
    colour = np.array(COLOURS[scene.colour][0], dtype=np.uint8)
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for t in range(num_frames):
        cx, cy = np.array(scene.start) + step * travel * t / (num_frames - 1)
        frames[t] = frame
        frames[t][_shape_mask(scene.shape, xs - cx, ys - cy, radius)] = colour
    return frames


def _background(scene: Scene, size: int) -> np.ndarray:
    base = np.array(COLOURS[scene.background][0], dtype=np.int16)
    period = max(size // 4, 2)
    cells = np.arange(size) // (period // 2)
    if scene.texture == "striped":
        shaded = np.broadcast_to(cells % 2 == 1, (size, size))
    elif scene.texture == "checkered":
        shaded = (cells[:, None] + cells[None, :]) % 2 == 1
    else:
        shaded = np.zeros((size, size), dtype=bool)
    image = np.broadcast_to(base, (size, size, 3)).copy()
    image[shaded] = np.clip(base - TEXTURE_SHADE, 0, 255)
    return image.astype(np.uint8)


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, radius: float) -> np.ndarray:
    """Pixels covered by ``shape`` centred at offset 0; ``radius`` is half its bounding box."""
    if shape == "circle":
        return dx**2 + dy**2 <= radius**2
    if shape == "square":
        return (np.abs(dx) <= radius) & (np.abs(dy) <= radius)
    # triangle, apex up: width grows linearly from 0 at the top to 2 * radius at the base
    return (np.abs(dy) <= radius) & (np.abs(dx) <= (dy + radius) / 2)


def describe_scene(scene: Scene, rng: np.random.Generator, phrasing: str = "all") -> str:
    """One caption of ``scene``: a random template of ``PHRASINGS[phrasing]`` filled with random
    synonyms."""

    def pick(words):
        return str(rng.choice(list(words)))

    colour = pick(COLOURS[scene.colour][1])
    subject = f"{pick(SIZES[scene.size][1])} {colour} {pick(SHAPES[scene.shape])}"
    speed, heading = pick(SPEEDS[scene.speed][1]), pick(DIRECTIONS[scene.direction][1])
    motion = f"{speed} {heading}" if rng.random() < 0.5 else f"{heading} {speed}"
    texture = pick(TEXTURES[scene.texture])
    background_words = [texture, pick(COLOURS[scene.background][1]), pick(BACKGROUND_NOUNS)]
    background = " ".join(word for word in background_words if word)
    verb, gerund = VERBS[int(rng.integers(len(VERBS)))]
    caption = pick(PHRASINGS[phrasing]).format(
        subject=_with_article(subject),
        verb=verb,
        gerund=gerund,
        motion=motion,
        background=_with_article(background),
    )
    return caption + "." if rng.random() < 0.5 else caption


def _with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def caption_words(caption: str) -> list[str]:
    """The words and punctuation of ``caption``, as a BERT basic tokenizer splits it."""
    return WORD_PATTERN.findall(caption.lower())


def build_vocab() -> list[str]:
    """BERT-format vocabulary: the special tokens (``[PAD]`` = 0), then every grammar word."""
    phrases = [word for _, words in COLOURS.values() for word in words]
    tables = (SHAPES, TEXTURES, {k: v[1] for k, v in {**SIZES, **SPEEDS, **DIRECTIONS}.items()})
    phrases += [phrase for table in tables for words in table.values() for phrase in words]
    phrases += [word for pair in VERBS for word in pair] + list(BACKGROUND_NOUNS)
    phrases += [re.sub(r"\{\w+\}", " ", template) for template in TEMPLATES]
    phrases += ["a an ."]
    words = {word for phrase in phrases for word in caption_words(phrase)}
    return list(SPECIAL_TOKENS) + sorted(words)


def encode_mp4(frames: np.ndarray, fps: int, codec: str = "mpeg4") -> bytes:
    """Encode uint8 RGB ``[F, H, W, 3]`` frames (H, W even) as an mp4 (yuv420p).

    ``"mpeg4"`` (constant quantiser 2) gives the same bytes on every call. ``"libx264"`` (crf 17,
    one thread) decodes to the same pixels every time but, with PyAV 18's x264, has been seen to
    emit a different first packet about once in a few thousand encodes.
    """
    if codec == "libx264":
        options = {"crf": "17", "preset": "veryfast", "threads": "1"}
    else:
        options = {"qmin": "2", "qmax": "2"}
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def clip_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of one clip, independent of every other clip."""
    return np.random.default_rng([seed, SPLIT_CODES[split], index])


def materialise_clip(description: ClipDescription) -> Sample:
    """Render, caption and encode one clip (the ``materialise`` of ``write_shards``)."""
    d = description
    rng = clip_rng(d.seed, d.split, d.index)
    scene = sample_scene(rng, d.size, d.combinations)
    captions: list[str] = []
    for _ in range(20 * d.num_captions):  # distinct captions; the grammar has thousands per scene
        caption = describe_scene(scene, rng, d.phrasing)
        if caption not in captions:
            captions.append(caption)
        if len(captions) == d.num_captions:
            break
    mp4 = encode_mp4(render_scene(scene, d.num_frames, d.size), d.fps, d.codec)
    return {
        "__key__": d.key,
        "mp4": mp4,
        "json": {"video_id": d.key, "captions": captions, "split": d.split},
    }


def generate_synthetic_dataset(
    out_dir: str | os.PathLike,
    num_train: int = 2048,
    num_test: int = 256,
    num_val: int = 0,
    num_frames: int = 8,
    size: int = 64,
    fps: int = 8,
    seed: int = 0,
    captions_per_train_video: int = 5,
    samples_per_shard: int = 256,
    codec: str = "mpeg4",
    combinations: str = "all",
    phrasing: str = "all",
    workers: int = 1,
) -> dict:
    """Write the synthetic dataset: train/test shards, ``vocab.txt`` and ``manifest.json``.

    ``combinations`` ("all", "seen", "unseen"; see ``is_unseen_pair``) restricts the (shape,
    colour) pairs every split shows, ``phrasing`` ("all", "pretrain", "downstream") the caption
    templates; the vocabulary is the same for all of them.

    Resumes an interrupted run with the same arguments (complete shards are kept). ``workers``
    processes write shards in parallel; it does not change the output.

    Returns:
        ``{"root", "vocab", "manifest": str, "train", "test": list[str] of shard paths}``.

    Raises:
        ValueError: a bad argument (named), or ``out_dir`` already holding shards generated
            with other arguments (use ``ensure_synthetic_dataset`` to replace them).
    """
    arguments = {
        "num_train": num_train,
        "num_test": num_test,
        "num_val": num_val,
        "num_frames": num_frames,
        "size": size,
        "fps": fps,
        "seed": seed,
        "captions_per_train_video": captions_per_train_video,
        "samples_per_shard": samples_per_shard,
        "codec": codec,
        "combinations": combinations,
        "phrasing": phrasing,
    }
    _check_arguments(arguments)
    out_dir = Path(out_dir)
    manifest = _read_manifest(out_dir)
    if manifest is not None and manifest.get("arguments") != arguments:
        raise ValueError(
            f"{out_dir} holds a synthetic dataset generated with other arguments "
            f"({manifest.get('arguments')}); use another directory or ensure_synthetic_dataset"
        )
    if manifest is None and _dataset_files(out_dir):
        raise ValueError(f"{out_dir} holds shards without a {MANIFEST_FORMAT} manifest.json")
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_manifest(out_dir, arguments, complete=False)

    shards = {}
    for split, count, num_captions in (
        ("train", num_train, captions_per_train_video),
        ("val", num_val, 1),
        ("test", num_test, 1),
    ):
        if split == "val" and not count:
            continue
        common = dict(num_frames=num_frames, size=size, fps=fps, codec=codec, seed=seed)
        common |= dict(combinations=combinations, phrasing=phrasing)
        descriptions = [
            ClipDescription(f"synth-{split}-{i:06d}", split, i, num_captions=num_captions, **common)
            for i in range(count)
        ]
        shards[split] = write_shards(
            descriptions,
            materialise_clip,
            out_dir,
            split,
            VideoCaptions,
            samples_per_shard,
            workers,
        )
    (out_dir / "vocab.txt").write_text("\n".join(build_vocab()) + "\n")
    _write_manifest(out_dir, arguments, complete=True)
    return _paths(out_dir, {split: len(paths) for split, paths in shards.items()})


def ensure_synthetic_dataset(cache_dir: str | os.PathLike, **kwargs) -> dict:
    """Return the dataset in ``cache_dir``, generating it only if it is not there already.

    ``kwargs`` are ``generate_synthetic_dataset``'s. A complete dataset generated with exactly the
    same arguments (``workers`` aside) is reused as is; one with other arguments is deleted and
    regenerated; an interrupted one with the same arguments is resumed.
    """
    generate = functools.partial(generate_synthetic_dataset, cache_dir, **kwargs)
    cache_dir = Path(cache_dir)
    manifest = _read_manifest(cache_dir)
    if manifest is not None and manifest.get("arguments") == _bound_arguments(kwargs):
        if manifest.get("complete"):
            paths = _paths(cache_dir, manifest["num_shards"])
            listed = [paths["vocab"], *(path for split in SPLITS for path in paths[split])]
            if all(Path(path).is_file() for path in listed):
                return paths
        if (cache_dir / RECORD).exists():  # interrupted: resume (without a record: regenerate)
            return generate()
    for path in _dataset_files(cache_dir):
        path.unlink()
    (cache_dir / "manifest.json").unlink(missing_ok=True)
    return generate()


def _bound_arguments(kwargs: dict) -> dict:
    """The manifest arguments ``generate_synthetic_dataset(dir, **kwargs)`` would record."""
    signature = inspect.signature(generate_synthetic_dataset)
    bound = signature.bind("_", **kwargs)
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    del arguments["out_dir"], arguments["workers"]
    return arguments


def _check_arguments(arguments: dict) -> None:
    minimum = {"num_train": 0, "num_test": 0, "num_val": 0, "num_frames": 2, "size": 16, "fps": 1}
    minimum |= {"captions_per_train_video": 1, "samples_per_shard": 1}
    for name, low in minimum.items():
        value = arguments[name]
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if arguments["size"] % 2:
        raise ValueError(f"size must be even (yuv420p), got {arguments['size']}")
    choices = {"codec": CODECS, "combinations": COMBINATIONS, "phrasing": tuple(PHRASINGS)}
    for name, allowed in choices.items():
        if arguments[name] not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {arguments[name]!r}")


def _dataset_files(directory: Path) -> list[Path]:
    """Files a generation writes into ``directory`` (shards, partial shards, vocab)."""
    if not directory.is_dir():
        return []
    patterns = [
        pattern for split in SPLITS for pattern in (f"{split}-*.tar", f".{split}-*.partial")
    ]
    found = [path for pattern in patterns for path in directory.glob(pattern)]
    return found + [path for path in (directory / "vocab.txt", directory / RECORD) if path.exists()]


def _read_manifest(directory: Path) -> dict | None:
    path = directory / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); delete it") from error
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path} is not a {MANIFEST_FORMAT} manifest")
    return manifest


def _write_manifest(directory: Path, arguments: dict, complete: bool) -> None:
    per_shard = arguments["samples_per_shard"]
    manifest = {
        "format": MANIFEST_FORMAT,
        "complete": complete,
        "arguments": arguments,
        "num_shards": {split: -(-arguments[f"num_{split}"] // per_shard) for split in SPLITS},
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _paths(directory: Path, num_shards: dict[str, int]) -> dict:
    """The dataset's paths; ``num_shards`` by split (a split absent or of 0 shards: ``[]``)."""
    return {
        "root": str(directory),
        **{
            split: [str(shard_path(directory, split, i)) for i in range(num_shards.get(split, 0))]
            for split in SPLITS
        },
        "vocab": str(directory / "vocab.txt"),
        "manifest": str(directory / "manifest.json"),
    }


def cached_synthetic_dataset(
    num_train: int = 512,
    num_test: int = 128,
    num_val: int = 64,
    num_frames: int = 4,
    size: int = 32,
    seed: int = 0,
    combinations: str = "all",
    phrasing: str = "all",
    workers: int = 2,
) -> dict:
    """The synthetic video dataset with these arguments, generated into ``cache_root() /
    synthetic-<arguments>`` if absent. Returns ``ensure_synthetic_dataset``'s paths."""
    arguments = dict(num_train=num_train, num_val=num_val, num_test=num_test)
    arguments |= dict(num_frames=num_frames, size=size, seed=seed)
    named = {"combinations": combinations, "phrasing": phrasing}
    suffix = "-".join(f"{name}{value}" for name, value in sorted(arguments.items()))
    suffix += "".join(f"-{value}" for value in named.values() if value != "all")
    arguments |= named
    directory = cache_root() / f"synthetic-{suffix}"
    with generation_lock(directory):
        return ensure_synthetic_dataset(directory, workers=workers, **arguments)
