"""The generated moving-shapes QA dataset: codes against a per-cell loop, questions and answers
against the scene each clip renders, reuse of a complete dataset."""

import json
import tarfile

import numpy as np
import torch

from meltr.data.decoders import VideoQA
from meltr.data.synthetic.generation import item_rng
from meltr.data.synthetic.moving_shapes import sample_scene
from meltr.data.synthetic.video_qa import (
    COLOUR_ANSWERS,
    colour_codes,
    generate_synthetic_qa,
    qa_vocab,
)
from meltr.data.text import WordPieceTokenizer


def test_colour_codes_quantise_each_cells_mean_colour():
    generator = np.random.default_rng(0)
    frames = generator.integers(0, 256, (2, 12, 12, 3), dtype=np.uint8)
    codes = colour_codes(frames, grid=3, levels=4)
    for t in range(2):
        for row in range(3):
            for col in range(3):
                cell = frames[t, 4 * row : 4 * row + 4, 4 * col : 4 * col + 4].reshape(-1, 3)
                r, g, b = (min(3, int(mean * 4 // 256)) for mean in cell.mean(axis=0))
                assert codes[t, row, col] == 16 * r + 4 * g + b
    assert codes.dtype == np.int16


def members(path):
    samples = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, name = member.name.split(".", 1)
            samples.setdefault(key, {})[name] = tar.extractfile(member).read()
    return samples


def test_questions_and_answers_describe_the_rendered_scene(tmp_path):
    paths = generate_synthetic_qa(tmp_path, num_train=6, num_val=2, num_test=2, samples_per_shard=4)
    assert len(paths["train"]) == 2 and len(paths["val"]) == 1
    samples = members(paths["train"][0])
    for index, key in enumerate(sorted(samples)):
        scene = sample_scene(item_rng(0, "train", index), 32)
        record = json.loads(samples[key]["json"])
        assert record["question"] == (
            f"what colour is the {scene.size} {scene.shape} moving {scene.direction} ?"
        )
        assert COLOUR_ANSWERS[record["answer_index"]] == record["answer"] == scene.colour

    tokenizer = WordPieceTokenizer(paths["vocab"], max_length=16)
    decoder = VideoQA(tokenizer, num_frames=4, image_size=32, resize=32, arrays=("vq",))
    key = sorted(samples)[0]
    (item,) = decoder.eval_items(samples[key] | {"__key__": key}, torch.Generator(), False)
    assert item["vq"].shape == (4, 4, 4) and int(item["text_mask"].sum()) == 11
    assert qa_vocab()[int(item["text_ids"][0])] == "[CLS]" and 1 not in item["text_ids"].tolist()

    stamp = {path: (tmp_path / path).stat().st_mtime_ns for path in ("train-000000.tar",)}
    assert (
        generate_synthetic_qa(tmp_path, num_train=6, num_val=2, num_test=2, samples_per_shard=4)
        == paths
    )
    assert {path: (tmp_path / path).stat().st_mtime_ns for path in stamp} == stamp


def test_direction_questions_are_multiple_choice(tmp_path):
    paths = generate_synthetic_qa(
        tmp_path, question="direction", num_train=3, num_val=0, num_test=1
    )
    assert paths["val"] == []
    for index, key in enumerate(sorted(samples := members(paths["train"][0]))):
        scene = sample_scene(item_rng(0, "train", index), 32)
        record = json.loads(samples[key]["json"])
        assert record["options"] == ["left", "right", "up", "down"]
        assert record["options"][record["answer_index"]] == scene.direction
        assert scene.colour in record["question"] and scene.shape in record["question"]
