"""The ALPRO-layout QA converter on a tiny fake of the release's MSVD-QA folder: records and
video bytes in the shards against the fake's own, answers outside the vocabulary kept as -1,
missing videos named, and the shards read back by the ``VideoQA`` decoder."""

import importlib.util
import io
import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from shard_samples import read_samples

from meltr.data.decoders import VideoQA
from meltr.data.text import WordPieceTokenizer

ROOT = Path(__file__).resolve().parents[2]
VOCABULARY = {"man": 1, "dog": 0, "play": 2}
QUESTIONS = {
    "train": [("what is running ?", "dog", "vid1", "what"), ("who plays ?", "man", "vid2", "who")],
    "val": [("what does the man do ?", "play", "vid2", "what")],
    "test": [("who is there ?", "woman", "vid1", "who"), ("what is it ?", "dog", "vid9", "what")],
}


def avi_bytes(colour: int, frames: int = 6) -> bytes:
    """A tiny AVI (mpeg4) of uniform frames of grey level ``colour``."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="avi") as container:
        stream = container.add_stream("mpeg4", rate=5, options={"qmin": "2", "qmax": "2"})
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for _ in range(frames):
            image = np.full((32, 32, 3), colour, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def make_release(root: Path) -> dict[str, bytes]:
    (root / "txt").mkdir(parents=True)
    (root / "videos").mkdir()
    (root / "txt" / "train_ans2label.json").write_text(json.dumps(VOCABULARY))
    for split, rows in QUESTIONS.items():
        lines = [
            json.dumps({"question": q, "answer": a, "video_id": v, "answer_type": t})
            for q, a, v, t in rows
        ]
        (root / "txt" / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    videos = {"vid1": avi_bytes(40), "vid2": avi_bytes(200)}
    for name, data in videos.items():
        (root / "videos" / f"{name}.avi").write_bytes(data)
    return videos


def load_script():
    spec = importlib.util.spec_from_file_location("cli", ROOT / "datasets" / "alpro_msvd_qa.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_questions_become_video_qa_samples_with_the_answer_labels(tmp_path, capsys):
    videos = make_release(tmp_path / "msvd_qa")
    out = tmp_path / "shards"
    arguments = ["--root", str(tmp_path / "msvd_qa"), "--out", str(out)]
    script = load_script()
    assert script.main(arguments) == 2
    assert "test0000001 (test: no video vid9{.avi,.mp4} in videos/)" in capsys.readouterr().err
    assert not out.exists()  # nothing written before the check
    assert script.main([*arguments, "--skip-missing"]) == 0
    assert "test: 1 shards" in capsys.readouterr().out

    assert (out / "answers.txt").read_text().split() == ["dog", "man", "play"]
    expected = {
        "train": [("train0000000", "dog", 0, "vid1"), ("train0000001", "man", 1, "vid2")],
        "val": [("val0000000", "play", 2, "vid2")],
        "test": [("test0000000", "woman", -1, "vid1")],  # outside the vocabulary
    }
    for split, rows in expected.items():
        samples = read_samples(out, split)
        assert sorted(samples) == [key for key, *_ in rows]
        for (key, answer, index, video), (question, *_, kind) in zip(
            rows, [r for r in QUESTIONS[split] if r[2] != "vid9"], strict=True
        ):
            record = json.loads(samples[key]["json"])
            assert record == {
                "video_id": video,
                "question": question,
                "answer": answer,
                "answer_index": index,
                "answer_type": kind,
                "split": split,
            }
            assert samples[key]["mp4"] == videos[video]


def test_the_decoder_reads_the_avi_samples(tmp_path):
    make_release(tmp_path / "msvd_qa")
    from meltr.data.converters.alpro_qa import convert_alpro_qa

    convert_alpro_qa(tmp_path / "msvd_qa", tmp_path / "shards", skip_missing=True)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "who", "plays", "?"]))
    decoder = VideoQA(WordPieceTokenizer(vocab, 8), num_frames=4, image_size=32, resize=32)
    (sample,) = [
        s for s in read_samples(tmp_path / "shards", "train").values() if b"vid2" in s["json"]
    ]
    (item,) = decoder.eval_items(sample, torch.Generator(), random_view=False)
    assert item["video"].shape == (4, 3, 32, 32) and item["answer_index"] == 1
    grey = (200 / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(item["video"].mean((0, 2, 3)), grey, atol=0.05, rtol=0)


def test_malformed_annotations_are_named(tmp_path):
    from meltr.data.converters.alpro_qa import convert_alpro_qa

    root = tmp_path / "msvd_qa"
    make_release(root)
    (root / "txt" / "val.jsonl").write_text('{"question": "q ?", "video_id": "vid1"}\n')
    with pytest.raises(ValueError, match=r"val.jsonl:1 has no string field\(s\) \['answer'\]"):
        convert_alpro_qa(root, tmp_path / "out", skip_missing=True)
    (root / "txt" / "train_ans2label.json").write_text(json.dumps({"a": 0, "b": 2}))
    with pytest.raises(ValueError, match="labels are not 0 .. 1"):
        convert_alpro_qa(root, tmp_path / "out", skip_missing=True)
