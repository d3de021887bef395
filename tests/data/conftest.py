"""Tiny videos and shards for the data tests, written here so the tests depend on no other module.

Helpers reach the tests as fixtures (returning the function), since several test folders have a
conftest and importing one by module name would be ambiguous."""

from __future__ import annotations

import io
import json
from pathlib import Path

import av
import numpy as np
import pytest
import webdataset


def frame_value(index: int) -> int:
    """Grey level of frame `index` in the test videos (far apart, so it survives lossy coding)."""
    return 20 + 25 * index


def frame_index(frame: np.ndarray) -> int:
    """Inverse of `frame_value` for a decoded frame (any layout; uses the mean grey level)."""
    return round((float(np.asarray(frame, dtype=np.float64).mean()) - 20) / 25)


def encode_video(
    num_frames: int,
    height: int = 32,
    width: int = 32,
    codec: str = "mpeg4",
    container_format: str = "mp4",
) -> bytes:
    """A video whose frame i is uniformly grey with level `frame_value(i)` (num_frames <= 9)."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=8)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(num_frames):
            image = np.full((height, width, 3), frame_value(index), np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def write_tar(path: Path, samples: list[dict]) -> None:
    """One shard: each sample a dict with `__key__` and raw-byte (or str/dict) fields."""
    with webdataset.TarWriter(str(path)) as sink:
        for sample in samples:
            sink.write(sample)


def make_sample(key: str, num_frames: int, captions: list[str], split: str = "train") -> dict:
    record = {"video_id": key, "captions": captions, "split": split}
    return {
        "__key__": key,
        "mp4": encode_video(num_frames),
        "json": json.dumps(record).encode("utf-8"),
    }


@pytest.fixture(scope="session")
def video_8_frames() -> bytes:
    return encode_video(8)


@pytest.fixture(scope="session")
def make_video():
    return encode_video


@pytest.fixture(scope="session")
def decoded_frame_index():
    return frame_index


@pytest.fixture(scope="session")
def shard_tools():
    """`(write_tar, make_sample)`."""
    return write_tar, make_sample
