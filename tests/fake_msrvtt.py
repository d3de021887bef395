"""A tiny fake MSRVTT release in the official layout (BACKBONES.md), shared by tests."""

import json
import pickle
from pathlib import Path

import numpy as np

from meltr.data.synthetic.moving_shapes import encode_mp4

NUM_VIDEOS, CAPTIONS_PER_VIDEO = 7, 3
TRAIN_9K = ["video0", "video1", "video2", "video3", "video4"]
TRAIN_7K = ["video0", "video1"]
TEST = ["video5", "video6"]
TEST_CAPTION_INDEX = {"video5": 2, "video6": 1}


def caption(video, j):
    return f"{video} caption {j}"


def make_release(root: Path) -> Path:
    """Write a fake official release into ``root``: tiny distinct mp4s, interleaved annotations,
    the 9k/7k/JSFusion lists and the JSFusion caption-choice pickle."""
    (root / "videos").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(NUM_VIDEOS):
        frames = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
        (root / "videos" / f"video{i}.mp4").write_bytes(encode_mp4(frames, fps=4, codec="mpeg4"))
    annotations = [
        {"image_id": f"video{i}", "caption": caption(f"video{i}", j), "id": j}
        for j in range(CAPTIONS_PER_VIDEO)
        for i in range(NUM_VIDEOS)
    ]
    (root / "MSR_VTT.json").write_text(json.dumps({"annotations": annotations}))
    (root / "train_list_9k.txt").write_text("\n".join(TRAIN_9K) + "\n")
    (root / "train_list_7k.txt").write_text("\n".join(TRAIN_7K) + "\n")
    (root / "val_list_jsfusion.txt").write_text("\n".join(TEST) + "\n")
    with open(root / "jsfusion_val_caption_idx.pkl", "wb") as file:
        pickle.dump(TEST_CAPTION_INDEX, file)
    return root
