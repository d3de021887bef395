"""Tiny fakes of the files the Violet release and Kinetics-400 publish, in their layouts.

Frames: each video's stored frames are 24 x 32 (H x W) images of one colour per frame (video
``v``, frame ``t``: ``colour(v, t)``), JPEG-encoded with PyAV and base64'd, as in
``img_<ds>.pkl``. Codes: ``codes(v)`` int16 ``[5, 7, 7]``.
"""

import base64
import io
import json
import pickle
from pathlib import Path

import av
import numpy as np

from meltr.data.synthetic.moving_shapes import encode_mp4

FRAMES, HEIGHT, WIDTH = 5, 24, 32


def colour(video: int, frame: int) -> tuple[int, int, int]:
    return (40 + 30 * video, 60 + 25 * frame, 200 - 20 * video)


def frame_image(video: int, frame: int) -> np.ndarray:
    return np.broadcast_to(np.array(colour(video, frame), np.uint8), (HEIGHT, WIDTH, 3)).copy()


def jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="image2pipe") as container:
        stream = container.add_stream("mjpeg", rate=1)
        stream.width, stream.height, stream.pix_fmt = image.shape[1], image.shape[0], "yuvj420p"
        stream.options = {"qmin": "1", "qmax": "1"}
        frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuvj420p")
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    return buffer.getvalue()


def codes(video: int) -> np.ndarray:
    return (np.arange(FRAMES * 49).reshape(FRAMES, 7, 7) * (video + 1) % 8192).astype(np.int16)


def write_pickles(root: Path, dataset: str, videos: list[str], without_codes=()) -> None:
    """``img_<dataset>.pkl`` and ``<dataset>_vq.pkl`` for ``videos`` (video i = ``videos[i]``)."""
    frames = {
        name: [base64.b64encode(jpeg(frame_image(i, t))).decode() for t in range(FRAMES)]
        for i, name in enumerate(videos)
    }
    vq = {name: codes(i) for i, name in enumerate(videos) if name not in without_codes}
    root.mkdir(parents=True, exist_ok=True)
    (root / f"img_{dataset}.pkl").write_bytes(pickle.dumps(frames))
    (root / f"{dataset}_vq.pkl").write_bytes(pickle.dumps(vq))


TGIF_VIDEOS = ["tumblr_a", "tumblr_b", "tumblr_c"]
TGIF_ACTION = {
    "train": [
        {
            "question": "What does the woman do 3 times ?",
            **{f"option_{i}": o for i, o in enumerate(["jump", "roll", "step", "sway", "nod"])},
            "answer": 1,
            "video": "tumblr_a",
        },
        {
            "question": "What does the man do 2 times ?",
            **{f"option_{i}": o for i, o in enumerate(["clap", "wave", "bow", "spin", "hop"])},
            "answer": 4,
            "video": "tumblr_b",
        },
    ],
    "test": [
        {
            "question": "What does the cat do 4 times ?",
            **{f"option_{i}": o for i, o in enumerate(["lick", "purr", "jump", "blink", "yawn"])},
            "answer": 0,
            "video": "tumblr_c",
        },
        {
            "question": "What does the dog do 5 times ?",
            **{f"option_{i}": o for i, o in enumerate(["bark", "sit", "run", "roll", "dig"])},
            "answer": 2,
            "video": "tumblr_gone",  # not in the frame pickle
        },
    ],
}


def make_tgif(root: Path) -> Path:
    write_pickles(root, "tgif", TGIF_VIDEOS)
    (root / "txt_tgif-action.json").write_text(json.dumps(TGIF_ACTION))
    return root


MSVD_VIDEOS = ["vid_0_5", "vid_1_9"]
MSVD_VOCAB = ["man", "dog", "guitar"]
MSVD_QA = {
    "train": [
        {"video": "vid_0_5", "question": "who plays?", "answer": 0},
        {"video": "vid_1_9", "question": "what runs?", "answer": 1},
    ],
    "val": [{"video": "vid_0_5", "question": "what is played?", "answer": 2}],
    "test": [
        {"video": "vid_1_9", "question": "what barks?", "answer": 1},
        {"video": "vid_0_5", "question": "who sings?", "answer": -1},
    ],
    "vocab": MSVD_VOCAB,
}


def make_msvd(root: Path) -> Path:
    write_pickles(root, "msvd", MSVD_VIDEOS)
    (root / "txt_msvd-qa.json").write_text(json.dumps(MSVD_QA))
    return root


FRAMEQA_HEADER = "gif_name\tquestion\tanswer\ttype\tvid_id\tkey\tdescription"
FRAMEQA_TRAIN = [  # answers: two x 3, cat x 2, red x 2, boat x 1
    ("tumblr_a", "how many men ?", "two"),
    ("tumblr_b", "what is on the bed ?", "cat"),
    ("tumblr_c", "how many cats ?", "two"),
    ("tumblr_a", "what colour is the car ?", "red"),
    ("tumblr_b", "what sleeps ?", "cat"),
    ("tumblr_c", "how many dogs ?", "two"),
    ("tumblr_a", "what colour is the hat ?", "red"),
    ("tumblr_b", "where is the man ?", "boat"),
]
FRAMEQA_TEST = [("tumblr_c", "what jumps ?", "cat"), ("tumblr_a", "where is it ?", "boat")]


def make_tgif_frameqa_tsv(root: Path) -> Path:
    write_pickles(root, "tgif", TGIF_VIDEOS)
    for name, rows in (("Train", FRAMEQA_TRAIN), ("Test", FRAMEQA_TEST)):
        lines = [FRAMEQA_HEADER]
        lines += [
            f"{g}\t{q}\t{a}\t0\tFRAMEQA{i}\t{i}\ta sentence ." for i, (g, q, a) in enumerate(rows)
        ]
        (root / f"{name}_frameqa_question.csv").write_text("\n".join(lines) + "\n")
    return root


MSRVTT_VIDEOS = ["video0", "video1", "video7010"]


def make_msrvtt(root: Path) -> Path:
    write_pickles(root, "msrvtt", MSRVTT_VIDEOS)
    train = [
        {"video_id": "video0", "caption": "a man sings"},
        {"video_id": "video1", "caption": "a dog runs"},
        {"video_id": "video0", "caption": "someone is singing"},
    ]
    (root / "train_9k.json").write_text(json.dumps({"sentences": train}))
    test = [{"video_id": "video7010", "caption": "a cat sleeps"}]
    (root / "test.json").write_text(json.dumps({"sentences": test}))
    return root


KINETICS_HEADER = "label,youtube_id,time_start,time_end,split,is_cc"
CLIP_FRAMES = 12


def clip_bytes(level: int) -> bytes:
    """A 12-frame 16 x 24 clip whose frame ``t`` is grey level ``level + 12 t``."""
    frames = np.stack([np.full((16, 24, 3), level + 12 * t, np.uint8) for t in range(CLIP_FRAMES)])
    return encode_mp4(frames, fps=12)


def make_kinetics(root: Path) -> Path:
    """train: 3 clips of 2 classes (one in a class folder, one flat, one missing); validate: 1."""
    rows = {
        "train": [
            ("abseiling", "aaa", 0, 10),
            ("zumba", "bbb", 5, 15),
            ("abseiling", "missing", 1, 11),
        ],
        "validate": [("zumba", "ccc", 3, 13)],
    }
    for split, split_rows in rows.items():
        lines = [KINETICS_HEADER] + [f"{lab},{y},{s},{e},{split},0" for lab, y, s, e in split_rows]
        (root / f"{split}.csv").parent.mkdir(parents=True, exist_ok=True)
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    (root / "train" / "abseiling").mkdir(parents=True)
    (root / "train" / "abseiling" / "aaa_000000_000010.mp4").write_bytes(clip_bytes(0))
    (root / "train" / "bbb_000005_000015.mp4").write_bytes(clip_bytes(40))
    (root / "val").mkdir()
    (root / "val" / "ccc_000003_000013.mp4").write_bytes(clip_bytes(80))
    return root
