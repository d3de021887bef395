"""The Violet-release and Kinetics-400 converters on tiny fakes of the published layouts: the
records, frames and codes in the shards against the fakes' own values, missing items named."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fake_violet_release import (
    CLIP_FRAMES,
    FRAMES,
    HEIGHT,
    MSVD_VOCAB,
    TGIF_ACTION,
    WIDTH,
    codes,
    colour,
    make_kinetics,
    make_msrvtt,
    make_msvd,
    make_tgif,
    make_tgif_frameqa_tsv,
)
from shard_samples import read_samples

from meltr.backbones.violet import release_choice_text
from meltr.data.converters.violet_release import MissingItemsError, convert_violet
from meltr.data.decoders import VideoQA
from meltr.data.text import WordPieceTokenizer
from meltr.data.video import read_clip

ROOT = Path(__file__).resolve().parents[2]


def load_script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "datasets" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def records(out: Path, split: str) -> list[dict]:
    return [json.loads(sample["json"]) for sample in read_samples(out, split).values()]


def expected_square(video: int, frame: int) -> np.ndarray:
    """The 32 x 32 frame: the 24 x 32 image of one colour centred on black (4 rows above and
    below); 32 px needs no resizing."""
    square = np.zeros((WIDTH, WIDTH, 3), np.uint8)
    top = (WIDTH - HEIGHT) // 2
    square[top : top + HEIGHT] = colour(video, frame)
    return square


def test_tgif_action_json_becomes_multiple_choice_samples_with_frames_and_codes(tmp_path, capsys):
    release, out = make_tgif(tmp_path / "tgif"), tmp_path / "shards"
    script = load_script("violet")
    arguments = ["--root", str(release), "--out", str(out), "--task", "tgif-action", "--size=32"]
    assert script.main(arguments) == 2
    assert "test0000001 (video tumblr_gone) (test: no frames in img_tgif.pkl)" in (
        capsys.readouterr().err
    )
    assert not out.exists()  # nothing written before the check
    assert script.main([*arguments, "--skip-missing"]) == 0

    train = read_samples(out, "train")
    assert sorted(train) == ["train0000000", "train0000001"]
    for key, entry in zip(sorted(train), TGIF_ACTION["train"], strict=True):
        options = [entry[f"option_{i}"] for i in range(5)]
        record = json.loads(train[key]["json"])
        assert record == {
            "video_id": entry["video"],
            "question": entry["question"],
            "options": options,
            "answer_index": entry["answer"],
            "answer": options[entry["answer"]],
            "split": "train",
        }
        video = int(entry["video"] == "tumblr_b")
        np.testing.assert_array_equal(np.load(io.BytesIO(train[key]["vq.npy"])), codes(video))
        frames = read_clip(train[key]["mp4"], FRAMES, train=False).numpy().astype(int)
        for t in range(FRAMES):
            # lossless after the JPEG: the padding exactly black, the image within the JPEG's
            # error of its colour
            error = np.abs(frames[t] - expected_square(video, t))
            assert error[:4].max() == 0 and error[28:].max() == 0 and error.max() <= 4, t
    assert [r["video_id"] for r in records(out, "test")] == ["tumblr_c"]
    assert not list(out.glob("val-*.tar"))  # the annotations have no val split


def test_multiple_choice_options_read_back_as_the_release_composes_them(tmp_path):
    out = tmp_path / "shards"
    convert_violet(make_tgif(tmp_path / "tgif"), out, "tgif-action", size=32, skip_missing=True)
    words = "what does the woman do 3 times ? options : jump roll step sway nod answer"
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words.split()]))
    tokenizer = WordPieceTokenizer(vocab, max_length=24)
    decoder = VideoQA(
        tokenizer, num_frames=5, image_size=32, resize=32, choice_text=release_choice_text
    )
    sample = read_samples(out, "train")["train0000000"] | {"__key__": "train0000000"}
    (item,) = decoder.eval_items(sample, torch.Generator(), random_view=False)
    # the release: question + 'Options: ' + ' '.join(options) + "Answer: " + option_i
    expected = [
        f"What does the woman do 3 times ?Options: jump roll step sway nodAnswer: {option}"
        for option in ["jump", "roll", "step", "sway", "nod"]
    ]
    ids, mask = tokenizer.encode(expected)
    assert torch.equal(item["option_ids"], ids) and torch.equal(item["option_mask"], mask)
    assert item["answer_index"] == 1 and item["video"].shape == (5, 3, 32, 32)


def test_msvd_open_ended_answers_index_the_vocabulary_and_val_is_written(tmp_path):
    out = tmp_path / "shards"
    result = convert_violet(make_msvd(tmp_path / "msvd"), out, "msvd-qa", size=32)
    assert set(result) >= {"train", "val", "test"}
    assert [(r["question"], r["answer"], r["answer_index"]) for r in records(out, "test")] == [
        ("what barks?", "dog", 1),
        ("who sings?", "", -1),  # outside the vocabulary: the release stores no word
    ]
    assert [r["answer"] for r in records(out, "val")] == ["guitar"]
    assert (out / "answers.txt").read_text().split() == MSVD_VOCAB


def test_tgif_frameqa_tsv_builds_the_answer_vocabulary_by_training_frequency(tmp_path):
    out = tmp_path / "shards"
    release = make_tgif_frameqa_tsv(tmp_path / "tgif")
    result = convert_violet(release, out, "tgif-frame", size=32, vq=False)
    assert result["annotation_source"] == "Train_frameqa_question.csv + Test_frameqa_question.csv"
    # counts: two 3, cat 2, red 2 (cat before red: alphabetical), boat 1
    assert (out / "answers.txt").read_text().split() == ["two", "cat", "red", "boat"]
    assert [(r["answer"], r["answer_index"]) for r in records(out, "test")] == [
        ("cat", 1),
        ("boat", 3),
    ]
    assert "vq.npy" not in next(iter(read_samples(out, "train").values()))


def test_msrvtt_sentences_group_into_one_sample_per_video(tmp_path):
    out = tmp_path / "shards"
    convert_violet(make_msrvtt(tmp_path / "msrvtt"), out, "msrvtt-9k", size=32)
    assert {r["video_id"]: r["captions"] for r in records(out, "train")} == {
        "video0": ["a man sings", "someone is singing"],
        "video1": ["a dog runs"],
    }
    (test,) = read_samples(out, "test").values()
    assert json.loads(test["json"])["captions"] == ["a cat sleeps"]
    np.testing.assert_array_equal(np.load(io.BytesIO(test["vq.npy"])), codes(2))


def test_missing_codes_are_named(tmp_path):
    release = make_msrvtt(tmp_path / "msrvtt")
    from fake_violet_release import MSRVTT_VIDEOS, write_pickles

    write_pickles(release, "msrvtt", MSRVTT_VIDEOS, without_codes=("video1",))
    with pytest.raises(MissingItemsError, match=r"video1 \(train: no codes in msrvtt_vq.pkl\)"):
        convert_violet(release, tmp_path / "out", "msrvtt-9k", size=32)


def test_kinetics_labels_splits_missing_clips_and_release_frame_positions(tmp_path, capsys):
    release, out = make_kinetics(tmp_path / "k400"), tmp_path / "shards"
    script = load_script("kinetics400")
    assert script.main(["--root", str(release), "--out", str(out)]) == 2
    assert "missing_000001_000011 (train: no clip file)" in capsys.readouterr().err
    assert script.main(["--root", str(release), "--out", str(out), "--skip-missing"]) == 0
    assert (out / "labels.txt").read_text().split() == ["abseiling", "zumba"]
    train = read_samples(out, "train")
    assert {k: json.loads(v["json"])["label"] for k, v in train.items()} == {
        "aaa_000000_000010": 0,
        "bbb_000005_000015": 1,
    }
    source = (release / "train" / "abseiling" / "aaa_000000_000010.mp4").read_bytes()
    assert train["aaa_000000_000010"]["mp4"] == source  # copied as it is
    assert [r["video_id"] for r in records(out, "test")] == ["ccc_000003_000013"]  # validate

    fixed = tmp_path / "fixed"
    assert (
        script.main(
            [
                "--root",
                str(release),
                "--out",
                str(fixed),
                "--skip-missing",
                "--frames",
                "5",
                "--size",
                "24",
            ]
        )
        == 0
    )
    (clip,) = read_samples(fixed, "test").values()
    frames = read_clip(clip["mp4"], 5, train=False).numpy().astype(float)
    # the release's positions int(12 / 6 * (i + 1)) = 2, 4, 6, 8, 10 of the grey ramp 80 + 12 t;
    # the 16 x 24 frames are padded to 24 x 24 (4 black rows above and below)
    positions = [int(CLIP_FRAMES / 6 * (i + 1)) for i in range(5)]
    assert frames.shape == (5, 24, 24, 3)
    np.testing.assert_allclose(
        frames[:, 8:16].mean(axis=(1, 2, 3)), [80 + 12 * p for p in positions], atol=2.0
    )
    assert frames[:, :3].max() < 8
