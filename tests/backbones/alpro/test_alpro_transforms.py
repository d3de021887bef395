"""PEM's crop (``EntityCrop``) against the release's ``random_erase`` rules, checked on its
outputs."""

import pytest
import torch

from meltr.backbones.alpro import EntityCrop
from meltr.data.transforms import IMAGENET_MEAN, IMAGENET_STD

BLACK = torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)])


def test_crop_keeps_the_pixels_of_the_region_and_blackens_the_rest():
    video = torch.randn(3, 3, 64, 48)
    item = {"video": video, "other": 1}
    out = EntityCrop(patch_size=8)(item, torch.Generator().manual_seed(0))
    assert item.keys() == {"video", "other"}  # the input is not mutated
    region = out["pem_region"]
    assert region.shape == (8, 6) and region.dtype == torch.bool
    inside = region.repeat_interleave(8, 0).repeat_interleave(8, 1)
    crop = out["pem_crop"]
    assert torch.equal(crop[..., inside], video[..., inside])
    outside = crop.permute(0, 2, 3, 1)[:, ~inside]  # [T, pixels, 3]
    assert torch.equal(outside, BLACK.expand_as(outside))


def test_regions_are_patch_aligned_rectangles_of_the_drawn_area():
    """Over many draws: a non-empty rectangle of whole patches inside the frame. Before rounding
    down to the 8-pixel grid (each side loses under 8 pixels) its area ``s`` is 0.3 to 0.5 of
    the frame and its aspect h / w in [0.3, 1 / 0.3]."""
    crop = EntityCrop(patch_size=8)
    generator = torch.Generator().manual_seed(1)
    for _ in range(300):
        top, left, h, w = crop.rectangle(96, 96, generator)
        assert min(top, left, h, w) >= 0 and h > 0 and w > 0
        assert top % 8 == left % 8 == h % 8 == w % 8 == 0
        assert top + h <= 96 and left + w <= 96
        assert h * w <= 0.5 * 96 * 96
        assert (h + 8) * (w + 8) > 0.3 * 96 * 96
        assert h / (w + 8) < 1 / 0.3 and w / (h + 8) < 1 / 0.3  # aspect h / w in [0.3, 1 / 0.3]


def test_draws_come_from_the_generator_only():
    video = torch.randn(2, 3, 32, 32)
    first = EntityCrop(patch_size=8)({"video": video}, torch.Generator().manual_seed(3))
    torch.manual_seed(123)
    second = EntityCrop(patch_size=8)({"video": video}, torch.Generator().manual_seed(3))
    assert torch.equal(first["pem_region"], second["pem_region"])


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="not a multiple of patch_size=8"):
        EntityCrop(patch_size=8)({"video": torch.zeros(2, 3, 20, 16)}, torch.Generator())
    with pytest.raises(ValueError, match="after 1000 draws"):
        EntityCrop(patch_size=8)({"video": torch.zeros(2, 3, 8, 8)}, torch.Generator())
    with pytest.raises(KeyError, match="lacks 'video'"):
        EntityCrop()({"frames": 1}, torch.Generator())
