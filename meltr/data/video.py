"""Decoding a few frames of a video from its encoded bytes (PyAV), and choosing which frames."""

from __future__ import annotations

import io
import os

import av
import numpy as np
import torch


class VideoDecodeError(ValueError):
    """Video bytes that cannot be opened or decoded (corrupt file, no video stream, no frames)."""


def sample_frame_indices(
    num_total: int, num_frames: int, train: bool, generator: torch.Generator | None = None
) -> list[int]:
    """Pick `num_frames` frame indices out of `num_total`, one per equal temporal segment.

    Segment i covers the frames `[floor(i * num_total / num_frames), floor((i + 1) * num_total /
    num_frames))`, widened to at least one frame. Train picks a uniformly random frame inside each
    segment (drawn from `generator`); eval picks the segment centre `(start + end - 1) // 2`. When
    `num_total < num_frames` segments share frames, so frames repeat. Indices are non-decreasing.
    """
    if num_total < 1:
        raise ValueError(f"num_total must be >= 1, got {num_total}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    indices = []
    for i in range(num_frames):
        start = min(i * num_total // num_frames, num_total - 1)
        end = max((i + 1) * num_total // num_frames, start + 1)
        if train:
            offset = int(torch.randint(end - start, (), generator=generator))
            indices.append(start + offset)
        else:
            indices.append((start + end - 1) // 2)
    return indices


def _video_stream(container: av.container.InputContainer) -> av.VideoStream:
    if not container.streams.video:
        raise VideoDecodeError("the file has no video stream")
    return container.streams.video[0]


def _count_frames(video_bytes: bytes) -> int:
    """Number of frames of the first video stream: from the container header when it records one,
    otherwise by counting the stream's packets (demuxing only, no decoding)."""
    with av.open(io.BytesIO(video_bytes)) as container:
        stream = _video_stream(container)
        if stream.frames > 0:
            return stream.frames
        return sum(1 for packet in container.demux(stream) if packet.size > 0)


def _decode_indices(video_bytes: bytes, indices: list[int]) -> list[np.ndarray]:
    """RGB frames at the non-decreasing `indices`, decoding no further than the last one. If the
    stream ends early (a header that over-counts), missing indices get the last decoded frame."""
    wanted = sorted(set(indices))
    found: dict[int, np.ndarray] = {}
    last = None
    with av.open(io.BytesIO(video_bytes)) as container:
        for position, frame in enumerate(container.decode(_video_stream(container))):
            last = frame
            if position in wanted:
                found[position] = frame.to_ndarray(format="rgb24")
            if position >= wanted[-1]:
                break
    if last is None:
        raise VideoDecodeError("the video stream decodes to no frames")
    fallback = last.to_ndarray(format="rgb24")
    return [found.get(index, fallback) for index in indices]


def check_video_file(path: str | os.PathLike) -> None:
    """VideoDecodeError (with FFmpeg's reason) unless ``path`` opens as a video whose first frame
    decodes: what a converter can check of every clip without decoding it whole. Damage further
    into a stream is found when training reads it (the sample is then skipped and counted)."""
    try:
        with av.open(str(path)) as container:
            for _ in container.decode(_video_stream(container)):
                return
    except av.error.FFmpegError as error:
        raise VideoDecodeError(f"FFmpeg cannot decode the video: {error}") from error
    raise VideoDecodeError("the video stream decodes to no frames")


def read_clip(
    video_bytes: bytes, num_frames: int, train: bool, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Decode `num_frames` frames of an encoded video (any container/codec FFmpeg reads).

    Frames are chosen by `sample_frame_indices` (train: random inside each segment, using
    `generator`; eval: segment centres). Decoding stops after the last chosen frame.

    Returns:
        uint8 tensor `[num_frames, H, W, 3]`, RGB.

    Raises:
        VideoDecodeError: the bytes cannot be opened, hold no video stream, or decode to no frames.
    """
    try:
        num_total = _count_frames(video_bytes)
        if num_total == 0:
            raise VideoDecodeError("the video stream has no frames")
        indices = sample_frame_indices(num_total, num_frames, train, generator)
        frames = _decode_indices(video_bytes, indices)
    except av.error.FFmpegError as error:
        raise VideoDecodeError(f"FFmpeg cannot decode the video: {error}") from error
    return torch.from_numpy(np.stack(frames))
