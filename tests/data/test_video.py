import io

import av
import pytest
import torch

from meltr.data import video as video_module
from meltr.data.video import VideoDecodeError, read_clip, sample_frame_indices


def reference_segments(num_total: int, num_frames: int) -> list[list[int]]:
    """Frames of each equal segment, by the integer condition i*N < (j+1)*F <= (i+1)*N (N >= F)."""
    return [
        [j for j in range(num_total) if i * num_total < (j + 1) * num_frames <= (i + 1) * num_total]
        for i in range(num_frames)
    ]


@pytest.mark.parametrize("num_total,num_frames", [(8, 3), (30, 3), (10, 5), (7, 7), (100, 8)])
def test_eval_indices_are_segment_centres(num_total, num_frames):
    segments = reference_segments(num_total, num_frames)
    assert sum(len(s) for s in segments) == num_total
    expected = [segment[(len(segment) - 1) // 2] for segment in segments]
    assert sample_frame_indices(num_total, num_frames, train=False) == expected


@pytest.mark.parametrize("num_total,num_frames", [(8, 3), (11, 4)])
def test_train_indices_cover_each_segment_uniformly(num_total, num_frames):
    segments = reference_segments(num_total, num_frames)
    draws = 2000
    counts = torch.zeros(num_total)
    generator = torch.Generator().manual_seed(0)
    for _ in range(draws):
        indices = sample_frame_indices(num_total, num_frames, train=True, generator=generator)
        for index, segment in zip(indices, segments, strict=True):
            assert index in segment
            counts[index] += 1
    for segment in segments:
        expected = draws / len(segment)
        # binomial standard deviation, 5 sigma
        tolerance = 5 * (draws * (1 / len(segment)) * (1 - 1 / len(segment))) ** 0.5
        for j in segment:
            assert abs(counts[j] - expected) <= tolerance


def test_train_indices_are_reproducible_from_the_generator():
    first = sample_frame_indices(50, 4, True, torch.Generator().manual_seed(3))
    second = sample_frame_indices(50, 4, True, torch.Generator().manual_seed(3))
    assert first == second


@pytest.mark.parametrize("train", [False, True])
def test_short_videos_repeat_frames(train):
    generator = torch.Generator().manual_seed(0)
    assert sample_frame_indices(2, 4, train, generator) == [0, 0, 1, 1]
    assert sample_frame_indices(1, 3, train, generator) == [0, 0, 0]


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="num_total"):
        sample_frame_indices(0, 3, False)
    with pytest.raises(ValueError, match="num_frames"):
        sample_frame_indices(5, 0, False)


def test_read_clip_returns_the_segment_centre_frames(video_8_frames, decoded_frame_index):
    clip = read_clip(video_8_frames, num_frames=3, train=False)
    assert clip.dtype == torch.uint8 and clip.shape == (3, 32, 32, 3)
    # segments of 8 frames: [0, 1], [2, 3, 4], [5, 6, 7]
    assert [decoded_frame_index(frame) for frame in clip] == [0, 3, 6]


def test_read_clip_train_follows_the_generator(video_8_frames, decoded_frame_index):
    for seed in range(5):
        clip = read_clip(video_8_frames, 3, True, torch.Generator().manual_seed(seed))
        expected = sample_frame_indices(8, 3, True, torch.Generator().manual_seed(seed))
        assert [decoded_frame_index(frame) for frame in clip] == expected


def test_unknown_frame_count_is_counted(make_video, decoded_frame_index):
    video = make_video(7, container_format="matroska")
    with av.open(io.BytesIO(video)) as container:
        assert container.streams.video[0].frames == 0  # the case under test
    clip = read_clip(video, 3, train=False)
    # segments of 7 frames: [0, 1], [2, 3], [4, 5, 6]
    assert [decoded_frame_index(frame) for frame in clip] == [0, 2, 5]


def test_short_video_repeats_frames(make_video, decoded_frame_index):
    clip = read_clip(make_video(2, codec="libx264"), 4, train=False)
    assert [decoded_frame_index(frame) for frame in clip] == [0, 0, 1, 1]


def test_decoding_stops_after_the_last_needed_frame(video_8_frames, monkeypatch):
    decoded = []
    real_open = av.open

    class CountingContainer:
        def __init__(self, container):
            self.container = container
            self.streams = container.streams

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.container.close()

        def demux(self, *args):
            return self.container.demux(*args)

        def decode(self, *args):
            for frame in self.container.decode(*args):
                decoded.append(frame)
                yield frame

    monkeypatch.setattr(video_module.av, "open", lambda *a, **k: CountingContainer(real_open(*a)))
    read_clip(video_8_frames, 2, train=False)  # segments [0..3], [4..7] -> frames 1 and 5
    assert len(decoded) == 6


@pytest.mark.parametrize(
    "corrupt",
    [b"", b"not a video at all" * 10, "truncated"],
)
def test_undecodable_bytes_raise_video_decode_error(video_8_frames, corrupt):
    data = video_8_frames[: len(video_8_frames) // 2] if corrupt == "truncated" else corrupt
    with pytest.raises(VideoDecodeError):
        read_clip(data, 3, train=False)
