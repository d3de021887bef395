"""Each sample kind: what its decoder makes of a sample, what the writer accepts, and how the stream
skips, counts and names the samples it cannot use."""

import io
import json
import warnings

import numpy as np
import pytest
import torch
import webdataset

from meltr.data.decoders import (
    CorruptSampleError,
    FeatureText,
    ImageLabel,
    TensorLabel,
    VideoLabel,
    VideoQA,
)
from meltr.data.stream import NoUsableSamplesError, eval_loader, train_loader
from meltr.data.text import WordPieceTokenizer
from meltr.data.writer import write_shards

WORDS = ["what", "colour", "is", "it", "red", "blue", "a", "dog", "runs", "left", "right"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    vocab = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    return WordPieceTokenizer(vocab, max_length=8)


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def raw(key: str, record: dict, **members) -> dict:
    """A sample as webdataset hands it to a decoder: member bytes by extension."""
    return {"__key__": key, "__url__": "shard.tar", "json": json.dumps(record).encode(), **members}


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- items of each kind


def test_feature_text_pads_truncates_and_tokenizes(tokenizer):
    features = np.arange(12, dtype=np.float16).reshape(6, 2)
    record = {"video_id": "v", "captions": ["a dog runs", "red"], "transcript": "it is red"}
    sample = raw("k", record | {"label": 1.5}, **{"features.npy": npy(features)})
    long = FeatureText(tokenizer, max_frames=4).eval_items(sample, generator(), False)
    short = FeatureText(tokenizer, max_frames=8).eval_items(sample, generator(), False)
    uniform = FeatureText(tokenizer, max_frames=3, frame_sampling="uniform")
    spread = uniform.eval_items(sample, generator(), False)[0]
    assert [item["caption"] for item in long] == ["a dog runs", "red"]
    torch.testing.assert_close(long[0]["features"], torch.tensor(features[:4], dtype=torch.float32))
    assert long[0]["feature_mask"].tolist() == [1, 1, 1, 1]
    assert short[0]["feature_mask"].tolist() == [1] * 6 + [0] * 2
    assert torch.equal(short[0]["features"][6:], torch.zeros(2, 2))
    torch.testing.assert_close(spread["features"], torch.tensor(features[[0, 2, 5]]).float())
    ids, mask = tokenizer.encode(["a dog runs"])
    assert torch.equal(long[0]["text_ids"], ids[0]) and torch.equal(long[0]["text_mask"], mask[0])
    assert torch.equal(long[0]["transcript_ids"], tokenizer.encode(["it is red"])[0][0])
    assert long[1]["caption_index"] == 1 and long[0]["label"] == 1.5


def test_video_qa_multiple_choice_and_open_ended(tokenizer, make_video):
    video = make_video(4)
    choice = {"video_id": "v", "question": "what colour", "answer": "blue", "answer_index": 1}
    choice["options"] = ["red", "blue"]
    decoder = VideoQA(tokenizer, num_frames=2, image_size=16, resize=16)
    item = decoder.train_item(raw("q1", choice, mp4=video), generator())
    assert item["video"].shape == (2, 3, 16, 16) and item["answer_index"] == 1
    expected, _ = tokenizer.encode(["what colour red", "what colour blue"])
    assert torch.equal(item["option_ids"], expected) and item["key"] == "q1"
    open_ended = {"video_id": "v", "question": "what colour", "answer": "green", "answer_index": -1}
    (item,) = decoder.eval_items(raw("q2", open_ended, mp4=video), generator(), False)
    assert "option_ids" not in item and item["answer_index"] == -1 and item["answer"] == "green"


def test_image_label_augmentation_is_a_padded_crop_and_a_flip(make_video):
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    sample = raw("i", {"image_id": "i", "label": 3}, **{"image.npy": npy(image)})
    decoder = ImageLabel(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), crop_padding=2, flip=True)
    pixels = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    (plain,) = decoder.eval_items(sample, generator(), False)
    assert torch.equal(plain["image"], pixels) and plain["label"] == 3
    draws = generator(5)
    top, left = (int(torch.randint(5, (), generator=draws)) for _ in range(2))
    flipped = bool(torch.rand((), generator=draws) < 0.5)
    expected = torch.nn.functional.pad(pixels, (2, 2, 2, 2))[:, top : top + 8, left : left + 8]
    expected = expected.flip(-1) if flipped else expected
    assert torch.equal(decoder.train_item(sample, generator(5))["image"], expected)


def test_video_label_and_extra_arrays(make_video):
    codes = np.arange(2 * 7 * 7, dtype=np.int16).reshape(2, 7, 7)
    sample = raw("c", {"video_id": "c", "label": 7}, mp4=make_video(4), **{"vq.npy": npy(codes)})
    decoder = VideoLabel(num_frames=2, image_size=16, resize=16, arrays=("vq",))
    item = decoder.train_item(sample, generator())
    assert item["label"] == 7 and torch.equal(item["vq"], torch.from_numpy(codes))


# ---------------------------------------------------------------- what cannot be used


QA = {"video_id": "v", "question": "q", "answer": "a"}


@pytest.mark.parametrize(
    ("decoder_name", "record", "members", "reason"),
    [
        ("features", {"video_id": "v", "captions": ["red"]}, {}, "no .features.npy member"),
        ("features", {"video_id": "v", "captions": []}, "features", "'captions'"),
        ("features", {"video_id": "v", "captions": ["red"]}, "nan", "non-finite"),
        ("features", {"video_id": "v", "captions": ["red"]}, "broken", "invalid .features.npy"),
        ("image", {"image_id": "i", "label": -2}, "image", "'label'"),
        ("image", {"image_id": "i", "label": 1}, "float_image", "not uint8"),
        ("qa", QA, "mp4", "'answer_index'"),
        ("qa", QA | {"answer_index": 2, "options": ["x"]}, "mp4", "not an index"),
        ("label", {"video_id": "v", "label": 1}, "bad_mp4", "undecodable video"),
    ],
)
def test_unusable_samples_say_why(tokenizer, make_video, decoder_name, record, members, reason):
    decoders = {
        "features": FeatureText(tokenizer, max_frames=4),
        "image": ImageLabel(),
        "qa": VideoQA(tokenizer, num_frames=2, image_size=16, resize=16),
        "label": VideoLabel(num_frames=2, image_size=16, resize=16),
    }
    payloads = {
        "features": {"features.npy": npy(np.ones((3, 2), np.float32))},
        "nan": {"features.npy": npy(np.full((3, 2), np.nan, np.float32))},
        "broken": {"features.npy": b"not an array"},
        "image": {"image.npy": npy(np.zeros((4, 4, 3), np.uint8))},
        "float_image": {"image.npy": npy(np.zeros((4, 4, 3), np.float32))},
        "mp4": {"mp4": make_video(4)},
        "bad_mp4": {"mp4": b"\x00\x00\x00\x18ftypmp42 not a video"},
    }
    sample = raw("bad", record, **(payloads[members] if members else {}))
    with pytest.raises(CorruptSampleError, match=reason):
        decoders[decoder_name].train_item(sample, generator())


# ---------------------------------------------------------------- writer and stream, every kind


def image_sample(index: int, split: str = "train") -> dict:
    image = np.full((4, 4, 3), index, np.uint8)
    record = {"image_id": f"i{index}", "label": index % 3, "split": split}
    return {"__key__": f"i{index}", "image.npy": image, "json": record}


def write_raw(path, samples):
    with webdataset.TarWriter(str(path)) as sink:
        for sample in samples:
            sink.write(sample)


class Key:
    """A ``write_shards`` description."""

    def __init__(self, key: str) -> None:
        self.key = key


def without_image_id(description):
    return image_sample(0) | {"json": {"label": 0, "split": "train"}}


def without_image(description):
    return {"__key__": "i0", "json": image_sample(0)["json"]}


def test_the_writer_checks_each_kind_and_the_stream_reads_it_back(tmp_path):
    with pytest.raises(ValueError, match="'i0'.*image_id"):
        write_shards([Key("i0")], without_image_id, tmp_path, "train", ImageLabel)
    with pytest.raises(ValueError, match="missing member.*image.npy"):
        write_shards([Key("i0")], without_image, tmp_path, "train", ImageLabel)
    keys = [Key(f"i{index}") for index in range(6)]
    write_shards(keys, lambda d: image_sample(int(d.key[1:])), tmp_path, "train", ImageLabel, 4)
    decoder = ImageLabel(crop_padding=0)
    batches = list(eval_loader(tmp_path, decoder, 4, split="train", num_workers=0))
    assert [batch["image_id"] for batch in batches] == [["i0", "i1", "i2", "i3"], ["i4", "i5"]]
    assert batches[0]["label"].tolist() == [0, 1, 2, 0]
    stored = batches[1]["image"][0] * decoder.std + decoder.mean  # normalisation undone
    torch.testing.assert_close(stored, torch.full((3, 4, 4), 4 / 255))


def tensor_sample(index: int, label: int | float, array: np.ndarray | None = None) -> dict:
    array = np.arange(6, dtype=np.int16).reshape(2, 3) + index if array is None else array
    record = {"tensor_id": f"t{index}", "label": label, "split": "train"}
    return {"__key__": f"t{index}", "json": record, "tensor.npy": array}


def test_tensor_label_round_trips_classes_and_targets_and_the_writer_checks_the_array(tmp_path):
    keys = [Key(f"t{index}") for index in range(3)]
    write_shards(
        keys,
        lambda d: tensor_sample(int(d.key[1:]), int(d.key[1:])),
        tmp_path,
        "train",
        TensorLabel,
    )
    (batch,) = eval_loader(tmp_path, TensorLabel(), 3, split="train", num_workers=0)
    expected = torch.arange(6.0).reshape(1, 2, 3) + torch.arange(3.0).reshape(3, 1, 1)
    assert batch["tensor"].dtype == torch.float32 and torch.equal(batch["tensor"], expected)
    assert batch["label"].tolist() == [0, 1, 2] and batch["tensor_id"] == ["t0", "t1", "t2"]
    target = TensorLabel().train_item(
        {
            "__key__": "t9",
            "json": json.dumps(tensor_sample(9, 2.5)["json"]).encode(),
            "tensor.npy": npy(np.array([True, False])),
        },
        generator(),
    )
    assert target["label"] == 2.5 and target["tensor"].tolist() == [1.0, 0.0]
    for bad, message in (
        (np.array(["a"]), "not a bool or number array"),
        (np.array([1.0, np.inf]), "not finite"),
        (np.array([1e39]), "not finite as float32"),
    ):
        with pytest.raises(ValueError, match=message):
            write_shards(
                [Key("t0")],
                lambda d, bad=bad: tensor_sample(0, 0, bad),
                tmp_path / "bad",
                "train",
                TensorLabel,
            )
    with pytest.raises(ValueError, match="'label' is -1"):
        write_shards(
            [Key("t0")], lambda d: tensor_sample(0, -1), tmp_path / "neg", "train", TensorLabel
        )


def test_corrupt_samples_of_any_kind_are_skipped_counted_and_named(tmp_path):
    good = [
        {
            "__key__": f"i{i}",
            "json": json.dumps(s["json"]).encode(),
            "image.npy": npy(s["image.npy"]),
        }
        for i, s in enumerate(image_sample(index) for index in range(3))
    ]
    bad = {"__key__": "broken", "json": b'{"image_id": "broken"', "image.npy": b"x"}
    write_raw(tmp_path / "train-000000.tar", [good[0], bad, good[1], good[2]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loader = train_loader(tmp_path, ImageLabel(), 4, num_workers=0, shuffle_buffer=1)
        batch = next(iter(loader))
    assert batch["num_corrupt"] == 1 and len(batch["image_id"]) == 3
    assert any("'broken'" in str(w.message) and "invalid json" in str(w.message) for w in caught)


def test_a_stream_with_no_usable_sample_stops_naming_shards_and_reasons(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "train-000000.tar").write_bytes(b"")
    with pytest.raises(NoUsableSamplesError, match="hold no readable sample.*train-000000.tar"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            next(iter(train_loader(empty, ImageLabel(), 2, num_workers=0)))

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    samples = [{"__key__": f"b{i}", "json": b"{", "image.npy": b"x"} for i in range(3)]
    write_raw(corrupt / "train-000000.tar", samples)
    loader = train_loader(corrupt, ImageLabel(), 2, num_workers=0, max_consecutive_corrupt=10)
    with pytest.raises(NoUsableSamplesError, match=r"last 10 samples.*invalid json \(10\)"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            next(iter(loader))
