import numpy as np
import pytest
import torch

from meltr.data.transforms import resize_short_side, video_transform


def triangle_weights(in_size: int, out_size: int) -> np.ndarray:
    """`[out, in]` weights of antialiased bilinear resampling (PIL's triangle filter): the kernel is
    widened by the downscale factor, centred on each output pixel's centre, and normalised."""
    scale = in_size / out_size
    support = max(scale, 1.0)
    weights = np.zeros((out_size, in_size))
    for i in range(out_size):
        centre = (i + 0.5) * scale
        for j in range(in_size):
            weights[i, j] = max(0.0, 1.0 - abs(j + 0.5 - centre) / support)
        weights[i] /= weights[i].sum()
    return weights


def reference_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """`[..., H, W]` -> `[..., height, width]`, separable triangle filtering."""
    rows = triangle_weights(image.shape[-2], height)
    cols = triangle_weights(image.shape[-1], width)
    return np.einsum("ih,...hw,jw->...ij", rows, image, cols)


MEAN = np.array([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
STD = np.array([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)


def random_frames(num_frames: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(
        0, 256, (num_frames, height, width, 3), dtype=torch.uint8, generator=generator
    )


@pytest.mark.parametrize(
    "shape,size,expected_shape",
    [((37, 50), 16, (16, 22)), ((50, 37), 16, (22, 16)), ((9, 12), 20, (20, 27))],
)
def test_resize_short_side_matches_triangle_filter(shape, size, expected_shape):
    image = torch.rand(2, 3, *shape, dtype=torch.float64) * 255
    resized = resize_short_side(image, size)
    assert resized.shape == (2, 3, *expected_shape)
    expected = reference_resize(image.numpy(), *expected_shape)
    np.testing.assert_allclose(resized.numpy(), expected, atol=1e-6)


def test_eval_transform_is_resize_centre_crop_normalise():
    frames = random_frames(2, 30, 41)
    out = video_transform(frames, resize=20, image_size=16, train=False)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 16, 16)
    pixels = frames.permute(0, 3, 1, 2).double().numpy()
    resized = reference_resize(pixels, 20, 27)  # 41 * 20 / 30 = 27.33
    top, left = (20 - 16) // 2, (27 - 16) // 2
    expected = (resized[..., top : top + 16, left : left + 16] / 255 - MEAN) / STD
    np.testing.assert_allclose(out.numpy(), expected, atol=1e-4)


def test_train_crop_is_random_and_shared_by_all_frames():
    frames = random_frames(3, 24, 24, seed=1)
    pixels = frames.permute(0, 3, 1, 2).double().numpy()
    resized = (reference_resize(pixels, 10, 10) / 255 - MEAN) / STD
    offsets_seen = set()
    for seed in range(100):
        out = video_transform(frames, 10, 8, True, torch.Generator().manual_seed(seed)).numpy()
        matches = [
            (top, left)
            for top in range(3)
            for left in range(3)
            if np.allclose(out, resized[..., top : top + 8, left : left + 8], atol=1e-4)
        ]
        assert len(matches) == 1  # every frame matches the same window
        offsets_seen.add(matches[0])
    assert len(offsets_seen) == 9  # all 3 x 3 offsets occur


def test_train_crop_is_reproducible_from_the_generator():
    frames = random_frames(2, 20, 26)
    first = video_transform(frames, 16, 12, True, torch.Generator().manual_seed(5))
    second = video_transform(frames, 16, 12, True, torch.Generator().manual_seed(5))
    assert torch.equal(first, second)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="image_size"):
        video_transform(random_frames(1, 20, 20), resize=16, image_size=24, train=False)
    with pytest.raises(ValueError, match="uint8"):
        video_transform(torch.zeros(1, 20, 20, 3), resize=16, image_size=16, train=False)
    with pytest.raises(ValueError, match=r"\[F, H, W, 3\]"):
        video_transform(torch.zeros(1, 3, 20, 20, dtype=torch.uint8), 16, 16, False)
