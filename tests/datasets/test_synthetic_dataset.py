"""The synthetic generator: determinism, decoding, captions that match the pixels, vocab, cache."""

import io
import json
import os
import re
import tarfile

import av
import numpy as np
import pytest
from tokenizers import BertWordPieceTokenizer

from meltr.data.synthetic.generation import item_rng
from meltr.data.synthetic.moving_shapes import render_scene, sample_scene
from meltr.data.synthetic.video_captions import ensure_synthetic_dataset, generate_synthetic_dataset

# The test's own reading of caption words: canonical meanings, rough reference colours.
COLOUR_WORDS = {
    "red": "red", "crimson": "red", "scarlet": "red",
    "yellow": "yellow", "golden": "yellow",
    "green": "green", "emerald": "green",
    "cyan": "cyan", "turquoise": "cyan", "aqua": "cyan",
    "blue": "blue", "navy": "blue", "azure": "blue",
    "purple": "purple", "violet": "purple",
    "white": "white", "ivory": "white",
}  # fmt: skip
REFERENCE_RGB = {
    "red": (255, 0, 0), "yellow": (255, 255, 0), "green": (0, 160, 0), "cyan": (0, 255, 255),
    "blue": (0, 0, 255), "purple": (128, 0, 128), "white": (255, 255, 255),
}  # fmt: skip
DIRECTION_PHRASES = {
    "to the left": "left", "leftward": "left", "towards the left": "left",
    "to the right": "right", "rightward": "right", "towards the right": "right",
    "upward": "up", "towards the top": "up", "up": "up",
    "downward": "down", "towards the bottom": "down", "down": "down",
}  # fmt: skip
FAST_WORDS = {"quickly", "fast", "rapidly", "swiftly"}
SLOW_WORDS = {"slowly", "gently", "leisurely"}
SMALL_WORDS = {"small", "tiny", "little"}
LARGE_WORDS = {"large", "big", "huge"}
SHAPE_WORDS = {
    "circle": "circle", "disk": "circle", "ball": "circle", "dot": "circle",
    "square": "square", "box": "square", "block": "square",
    "triangle": "triangle", "wedge": "triangle",
}  # fmt: skip
BACKGROUND_PHRASE = re.compile(r"(?:on|over|against) an? (?:(\w+) )?(\w+) (?:background|backdrop)")

TINY = dict(num_train=5, num_test=3, num_frames=4, size=32, samples_per_shard=2)


def read_shards(paths):
    """{key: (mp4 bytes, json dict)} from shard files, with tarfile only."""
    samples = {}
    for path in paths:
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                data = tar.extractfile(member).read()
                mp4, meta = samples.get(key, (None, None))
                samples[key] = (data, meta) if ext == "mp4" else (mp4, json.loads(data))
    return samples


def decode(mp4):
    with av.open(io.BytesIO(mp4)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def nearest_colour(rgb):
    distances = {n: np.linalg.norm(np.subtract(rgb, ref)) for n, ref in REFERENCE_RGB.items()}
    return min(distances, key=distances.get)


def parse_caption(caption):
    words = re.findall(r"[a-z]+", caption)
    background = BACKGROUND_PHRASE.search(caption)
    background_colour = COLOUR_WORDS[background.group(2)]
    rest = (caption[: background.start()] + caption[background.end() :]).split()
    rest = [w.strip(".,") for w in rest]
    (colour,) = [COLOUR_WORDS[w] for w in rest if w in COLOUR_WORDS]
    (shape,) = [SHAPE_WORDS[w] for w in rest if w in SHAPE_WORDS]
    phrases = sorted(DIRECTION_PHRASES, key=len, reverse=True)
    direction = next(DIRECTION_PHRASES[p] for p in phrases if re.search(rf"\b{p}\b", caption))
    (speed,) = [
        "fast" if w in FAST_WORDS else "slow" for w in words if w in FAST_WORDS | SLOW_WORDS
    ]
    (size,) = [
        "small" if w in SMALL_WORDS else "large" for w in words if w in SMALL_WORDS | LARGE_WORDS
    ]
    return dict(colour=colour, background=background_colour, shape=shape, direction=direction,
                speed=speed, size=size)  # fmt: skip


def shape_masks(frames):
    """Per frame, the pixels far from the first frame's median colour (the background)."""
    background_rgb = np.median(frames[0].reshape(-1, 3), axis=0)
    return background_rgb, np.linalg.norm(frames.astype(float) - background_rgb, axis=-1) > 80


def measure_colour_and_motion(frames):
    """Colours, direction and speed that decoded frames show, estimated independently."""
    background_rgb, masks = shape_masks(frames)
    (ys, xs), (ye, xe) = np.nonzero(masks[0]), np.nonzero(masks[-1])
    shift = np.array([xe.mean() - xs.mean(), ye.mean() - ys.mean()]) / frames.shape[2]
    axis = int(np.argmax(np.abs(shift)))
    return dict(
        colour=nearest_colour(np.median(frames[0][masks[0]], axis=0)),
        background=nearest_colour(background_rgb),
        direction=[["left", "right"], ["up", "down"]][axis][int(shift[axis] > 0)],
        speed="fast" if np.abs(shift).max() > 0.27 else "slow",
    )


def measure_shape(frames):
    """Shape and size that exact (not encoded) frames show."""
    _, masks = shape_masks(frames)
    ys, xs = np.nonzero(masks[0])
    rows = ys - ys.min()
    height = rows.max() + 1
    top_to_bottom = (rows < height / 2).sum() / (rows >= height / 2).sum()
    fill = masks[0].sum() / (height * (xs.max() - xs.min() + 1))
    if top_to_bottom < 0.6:  # a triangle's upper half holds a third of its area
        shape = "triangle"
    else:  # a circle fills pi / 4 of its bounding box, a square all of it
        shape = "circle" if fill < 0.9 else "square"
    return dict(shape=shape, size="large" if height / frames.shape[2] > 0.32 else "small")


def file_bytes(paths):
    return [open(path, "rb").read() for path in paths]


def test_same_seed_same_bytes_and_another_seed_other_videos(tmp_path):
    one = generate_synthetic_dataset(tmp_path / "one", seed=7, **TINY)
    two = generate_synthetic_dataset(tmp_path / "two", seed=7, **TINY)
    other = generate_synthetic_dataset(tmp_path / "other", seed=8, **TINY)
    assert len(one["train"]) == 3 and len(one["test"]) == 2
    for split in ("train", "test"):
        assert file_bytes(one[split]) == file_bytes(two[split])
        videos = {mp4 for mp4, _ in read_shards(one[split]).values()}
        other_videos = {mp4 for mp4, _ in read_shards(other[split]).values()}
        assert not videos & other_videos
    assert file_bytes([one["vocab"]]) == file_bytes([two["vocab"]])


@pytest.mark.parametrize("codec", ["mpeg4", "libx264"])
def test_clips_decode_to_the_requested_frames_and_size_with_the_contracted_json(tmp_path, codec):
    paths = generate_synthetic_dataset(
        tmp_path, seed=1, captions_per_train_video=4, codec=codec, **TINY
    )
    for split, count, num_captions in (("train", 5, 4), ("test", 3, 1)):
        samples = read_shards(paths[split])
        assert sorted(samples) == [f"synth-{split}-{i:06d}" for i in range(count)]
        for key, (mp4, meta) in samples.items():
            assert decode(mp4).shape == (4, 32, 32, 3)
            assert meta["video_id"] == key and meta["split"] == split
            assert len(set(meta["captions"])) == len(meta["captions"]) == num_captions


def test_captions_describe_what_the_clip_shows(tmp_path):
    seed, size, num_frames = 5, 64, 6
    paths = generate_synthetic_dataset(
        tmp_path, num_train=16, num_test=8, num_frames=num_frames, size=size, seed=seed,
        captions_per_train_video=3,
    )  # fmt: skip
    for split in ("train", "test"):
        for key, (mp4, meta) in read_shards(paths[split]).items():
            index = int(key.rsplit("-", 1)[1])
            exact = render_scene(sample_scene(item_rng(seed, split, index), size), num_frames, size)
            decoded = decode(mp4)
            assert np.abs(decoded.astype(int) - exact).mean() < 8, key  # the mp4 is that scene
            shown = measure_colour_and_motion(decoded) | measure_shape(exact)
            for caption in meta["captions"]:
                assert parse_caption(caption) == shown, (key, caption)


def test_vocab_maps_every_caption_word_to_one_token(tmp_path):
    paths = generate_synthetic_dataset(tmp_path, seed=2, **TINY | dict(num_train=40, size=16))
    vocab = open(paths["vocab"]).read().split("\n")[:-1]
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert len(set(vocab)) == len(vocab)
    tokenizer = BertWordPieceTokenizer(paths["vocab"], lowercase=True)
    captions = [c for split in ("train", "test") for _, m in read_shards(paths[split]).values()
                for c in m["captions"]]  # fmt: skip
    assert len(captions) == 40 * 5 + 3
    for caption in captions:
        tokens = tokenizer.encode(caption, add_special_tokens=False).tokens
        assert tokens == re.findall(r"[a-z]+|[.,]", caption), caption


def test_ensure_reuses_a_matching_cache_and_replaces_another(tmp_path):
    first = ensure_synthetic_dataset(tmp_path, seed=4, **TINY)
    files = [first["manifest"], first["vocab"], *first["train"], *first["test"]]
    stamps = [os.stat(path).st_mtime_ns for path in files]
    again = ensure_synthetic_dataset(tmp_path, seed=4, workers=2, **TINY)
    assert again == first
    assert [os.stat(path).st_mtime_ns for path in files] == stamps

    with pytest.raises(ValueError, match=str(tmp_path)):
        generate_synthetic_dataset(tmp_path, seed=9, **TINY)
    replaced = ensure_synthetic_dataset(tmp_path, seed=9, **TINY | dict(num_train=1))
    assert json.load(open(replaced["manifest"]))["arguments"]["seed"] == 9
    assert len(replaced["train"]) == 1
    assert sorted(os.listdir(tmp_path)) == [
        "conversion.json",
        "manifest.json",
        "test-000000.tar",
        "test-000001.tar",
        "train-000000.tar",
        "vocab.txt",
    ]


def test_ensure_completes_a_dataset_with_a_lost_shard_keeping_the_others(tmp_path):
    paths = ensure_synthetic_dataset(tmp_path, seed=6, **TINY)
    original = file_bytes(paths["train"])
    kept = [os.stat(path).st_mtime_ns for path in paths["train"]]
    os.remove(paths["train"][1])
    assert ensure_synthetic_dataset(tmp_path, seed=6, **TINY) == paths
    assert file_bytes(paths["train"]) == original
    stamps = [os.stat(path).st_mtime_ns for path in paths["train"]]
    assert stamps[0] == kept[0] and stamps[2] == kept[2]


@pytest.mark.parametrize(
    "argument, value", [("size", 33), ("codec", "vp9"), ("num_frames", 1), ("num_train", -1)]
)
def test_bad_arguments_are_named(tmp_path, argument, value):
    with pytest.raises(ValueError, match=argument):
        generate_synthetic_dataset(tmp_path, **TINY | {argument: value})


# The held-out (shape, colour) pairs, written out: each colour with exactly one shape.
UNSEEN_PAIRS = {
    ("circle", "red"), ("circle", "cyan"), ("circle", "white"),
    ("square", "green"), ("square", "purple"),
    ("triangle", "yellow"), ("triangle", "blue"),
}  # fmt: skip
PRETRAIN_OPENINGS = re.compile(r"^(on an? |an? \w+ \w+ \w+ (moves|slides|travels|glides) )")
DOWNSTREAM_OPENINGS = re.compile(r"^(there is |an? \w+ \w+ \w+ on .* is \w+ing )")


@pytest.mark.parametrize("combinations", ["seen", "unseen"])
def test_combinations_and_phrasing_split_the_grammar(tmp_path, combinations):
    phrasing = "pretrain" if combinations == "seen" else "downstream"
    paths = generate_synthetic_dataset(
        tmp_path, num_train=24, num_test=8, num_frames=4, size=32, seed=3,
        combinations=combinations, phrasing=phrasing, captions_per_train_video=2,
    )  # fmt: skip
    pairs = set()
    for split in ("train", "test"):
        for _, meta in read_shards(paths[split]).values():
            for caption in meta["captions"]:
                parsed = parse_caption(caption)
                pairs.add((parsed["shape"], parsed["colour"]))
                opening = PRETRAIN_OPENINGS if phrasing == "pretrain" else DOWNSTREAM_OPENINGS
                other = DOWNSTREAM_OPENINGS if phrasing == "pretrain" else PRETRAIN_OPENINGS
                assert opening.match(caption) and not other.match(caption), caption
    assert pairs <= UNSEEN_PAIRS if combinations == "unseen" else not pairs & UNSEEN_PAIRS
    assert len(pairs) >= 5  # the restriction still leaves variety
    assert json.load(open(paths["manifest"]))["arguments"]["combinations"] == combinations


def test_all_combinations_draw_the_held_out_pairs_too():
    scenes = [sample_scene(item_rng(0, "train", i), 32) for i in range(300)]
    pairs = {(scene.shape, scene.colour) for scene in scenes}
    assert UNSEEN_PAIRS <= pairs and len(pairs) == 21
