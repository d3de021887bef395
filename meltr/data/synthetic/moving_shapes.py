"""Moving coloured shapes: the scenes of the generated clips, their frames and their captions.

Each clip shows one shape (circle, square or triangle; small or large; one of seven colours) moving
in a straight line (left, right, up or down; slowly or quickly) over a plain, striped or checkered
background of another colour. Captions name every attribute through synonyms and varied sentence
templates ("a tiny crimson disk slides fast leftward over an azure backdrop"), so matching a caption
to its clip needs the video, not caption statistics. The captions dataset (``video_captions``) and
the QA dataset (``video_qa``) draw their clips here.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import av
import numpy as np

from meltr.data.synthetic.drawing import shape_mask
from meltr.data.synthetic.words import vocabulary

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
CODECS = ("mpeg4", "libx264")


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
        frames[t][shape_mask(scene.shape, xs - cx, ys - cy, radius)] = colour
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


def build_vocab() -> list[str]:
    """BERT-format vocabulary: the special tokens (``[PAD]`` = 0), then every grammar word."""
    phrases = [word for _, words in COLOURS.values() for word in words]
    tables = (SHAPES, TEXTURES, {k: v[1] for k, v in {**SIZES, **SPEEDS, **DIRECTIONS}.items()})
    phrases += [phrase for table in tables for words in table.values() for phrase in words]
    phrases += [word for pair in VERBS for word in pair] + list(BACKGROUND_NOUNS)
    phrases += [re.sub(r"\{\w+\}", " ", template) for template in TEMPLATES]
    return vocabulary([*phrases, "a an ."])


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
