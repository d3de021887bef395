"""Frames as the Violet release stores and uses them, turned into the mp4 member of a shard.

The release keeps a few frames per video as base64 JPEG strings in a pickle (``img_<ds>.pkl`` =
``{video: [base64 JPEG, ...]}``) and its dVAE codes in another (``<ds>_vq.pkl`` = ``{video:
int16 [T, 7, 7]}``). Its model sees each frame padded to a square (black, centred) and resized
to 224 px. Here the frames are decoded with PyAV, padded and resized the same way once, at
conversion, and written as one lossless mp4 (H.264 in RGB, ``libx264rgb`` at crf 0), so that the
decoders read them like any clip and see exactly the pixels the release's model sees: with
``resize == image_size`` nothing is cropped and each stored frame is one model frame. (A lossy
yuv420p mp4 would subsample the chroma a second time: on a test image mpeg4 at quantiser 2 came
out at 33 dB PSNR, the lossless file at about 1.4x the bytes of the JPEGs.)
"""

from __future__ import annotations

import base64
import binascii
import io
import pickle
from collections.abc import Sequence
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F

MP4_FPS = 5  # the frames' rate in the mp4 (any rate: every stored frame is read)


class FrameDecodeError(ValueError):
    """A stored frame that is not a decodable image."""


def read_pickle(path: str | Path, what: str) -> object:
    """The object pickled in ``path`` (a release file you trust: pickles can run code);
    FileNotFoundError / ValueError naming the file and what it should hold."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        with open(path, "rb") as file:
            return pickle.load(file)
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as error:
        raise ValueError(f"{path} is not a readable pickle ({error}); expected {what}") from error


def load_frame_pickle(path: str | Path) -> dict[str, list]:
    """``{video: [encoded frame, ...]}`` from an ``img_<ds>.pkl`` (frames: base64 strings or raw
    JPEG bytes). ValueError naming the file and the first bad entry."""
    frames = read_pickle(path, "the frame pickle {video: [base64 JPEG, ...]}")
    if not isinstance(frames, dict):
        raise ValueError(f"{path}: expected a dict video -> frames, got {type(frames).__name__}")
    for video, encoded in frames.items():
        if (
            not isinstance(encoded, list | tuple)
            or not encoded
            or not all(isinstance(frame, str | bytes) for frame in encoded)
        ):
            raise ValueError(f"{path}: entry {video!r} is not a non-empty list of encoded frames")
    return frames


def load_vq_pickle(path: str | Path) -> dict[str, np.ndarray]:
    """``{video: int [T, g, g]}`` from a ``<ds>_vq.pkl`` (dVAE codes of each stored frame, in
    ``[0, 8192)``). ValueError naming the file and the first bad entry."""
    codes = read_pickle(path, "the dVAE code pickle {video: int16 [T, 7, 7]}")
    if not isinstance(codes, dict):
        raise ValueError(f"{path}: expected a dict video -> codes, got {type(codes).__name__}")
    checked = {}
    for video, value in codes.items():
        array = np.asarray(value)
        if array.ndim != 3 or array.shape[1] != array.shape[2] or array.dtype.kind not in "iu":
            raise ValueError(
                f"{path}: codes of {video!r} are {array.dtype} {array.shape}, not integer [T, g, g]"
            )
        checked[video] = array.astype(np.int16)
    return checked


def decode_frame(encoded: str | bytes) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]`` of one stored frame: a base64 string (the release's pickles) or
    raw image bytes, decoded with PyAV."""
    try:
        data = base64.b64decode(encoded, validate=True) if isinstance(encoded, str) else encoded
    except binascii.Error as error:
        raise FrameDecodeError(f"not base64: {error}") from error
    try:
        with av.open(io.BytesIO(data)) as container:
            frame = next(container.decode(video=0))
            return frame.to_ndarray(format="rgb24")
    except (av.error.FFmpegError, StopIteration, IndexError) as error:
        raise FrameDecodeError(f"undecodable image: {error}") from error


def square_frames(frames: Sequence[np.ndarray], size: int) -> np.ndarray:
    """uint8 ``[T, size, size, 3]``: each ``[H, W, 3]`` frame padded with black to a centred
    square (the odd pixel, if any, at the bottom / right), then resized to ``size`` (bilinear,
    antialiased), as the release prepares its frames."""
    squares = []
    for frame in frames:
        height, width = frame.shape[:2]
        side = max(height, width)
        top, left = (side - height) // 2, (side - width) // 2
        padded = np.zeros((side, side, 3), dtype=np.uint8)
        padded[top : top + height, left : left + width] = frame
        pixels = torch.from_numpy(padded).permute(2, 0, 1)[None].float()
        resized = F.interpolate(
            pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        squares.append(resized[0].round().clamp(0, 255).byte().permute(1, 2, 0).numpy())
    return np.stack(squares)


def encode_lossless_mp4(frames: np.ndarray, fps: int = MP4_FPS) -> bytes:
    """uint8 RGB ``[T, H, W, 3]`` as a lossless mp4 (``libx264rgb``, crf 0, one thread): it
    decodes to exactly ``frames``."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream(
            "libx264rgb", rate=fps, options={"crf": "0", "preset": "medium", "threads": "1"}
        )
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "rgb24"
        stream.codec_context.thread_count = 1
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def frames_to_mp4(encoded_frames: Sequence[str | bytes], size: int) -> bytes:
    """The mp4 of the stored frames: decoded, squared (see :func:`square_frames`), encoded."""
    if size < 2:
        raise ValueError(f"the frame size must be at least 2 pixels, got {size}")
    frames = [decode_frame(encoded) for encoded in encoded_frames]
    return encode_lossless_mp4(square_frames(frames, size))


def check_codes(codes: np.ndarray, num_frames: int, video: str) -> np.ndarray:
    """``codes`` when they cover ``num_frames`` frames, else ValueError naming the video."""
    if codes.shape[0] != num_frames:
        raise ValueError(
            f"{video}: {codes.shape[0]} frames of dVAE codes for {num_frames} stored frames"
        )
    return codes
