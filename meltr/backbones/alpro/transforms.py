"""ALPRO's per-item training transform for PEM (docs/ARCHITECTURE.md, "Transforms"): the random
region of the video that the prompter labels and whose fused patch tokens PEM classifies.

ALPRO's MLM masking is BERT's (15 %, 80/10/10, the HF data collator):
``meltr.data.text.MaskTokens``.
"""

from __future__ import annotations

import math

import torch

from meltr.data.transforms import IMAGENET_MEAN, IMAGENET_STD

AREA = (0.3, 0.5)
ASPECT = (0.3, 1 / 0.3)
MAX_ATTEMPTS = 1000


class EntityCrop:
    """PEM's region, drawn as the release's ``random_erase`` draws it: an area ``s`` uniform in
    ``area`` times the frame's, an aspect ``r`` uniform in ``aspect``, width ``int(sqrt(s / r))``
    and height ``int(sqrt(s r))`` pixels, a top-left corner uniform over the frame; all four
    rounded down to multiples of ``patch_size``; drawn again until the rectangle is non-empty
    and inside the frame (ValueError after 1000 draws: frames too small for the patch size).

    Reads ``item[video_key]`` float ``[T, 3, H, W]`` (ImageNet-normalised; H, W multiples of
    ``patch_size``) and adds ``pem_crop`` (the video black outside the rectangle, in every
    frame, as the release zeroes pixels before normalising) and ``pem_region`` bool ``[H / p, W
    / p]`` (the patches inside it). Every draw comes from the sample's generator.
    """

    def __init__(
        self,
        patch_size: int = 16,
        area: tuple[float, float] = AREA,
        aspect: tuple[float, float] = ASPECT,
        video_key: str = "video",
    ) -> None:
        if patch_size < 1:
            raise ValueError(f"patch_size must be positive, got {patch_size}")
        if not 0 < area[0] <= area[1] <= 1 or not 0 < aspect[0] <= aspect[1]:
            raise ValueError(f"area {area} must lie in (0, 1] and aspect {aspect} be positive")
        self.patch_size, self.area, self.aspect, self.video_key = (
            patch_size,
            area,
            aspect,
            video_key,
        )
        black = [-mean / std for mean, std in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]
        self.black = torch.tensor(black)[:, None, None]

    def rectangle(self, height: int, width: int, generator: torch.Generator) -> tuple[int, ...]:
        """``(top, left, h, w)`` in pixels, multiples of ``patch_size``."""
        p = self.patch_size

        def uniform(low: float, high: float) -> float:
            return low + (high - low) * float(torch.rand((), generator=generator))

        for _ in range(MAX_ATTEMPTS):
            s = uniform(*self.area) * height * width
            r = uniform(*self.aspect)
            w, h = int(math.sqrt(s / r)), int(math.sqrt(s * r))
            left = int(torch.randint(width, (), generator=generator))
            top = int(torch.randint(height, (), generator=generator))
            w, h, left, top = w - w % p, h - h % p, left - left % p, top - top % p
            if w > 0 and h > 0 and left + w <= width and top + h <= height:
                return top, left, h, w
        raise ValueError(
            f"EntityCrop: no region of {self.area} of a {height}x{width} frame on a "
            f"{p}-pixel grid after {MAX_ATTEMPTS} draws"
        )

    def __call__(self, item: dict, generator: torch.Generator) -> dict:
        if self.video_key not in item:
            raise KeyError(f"EntityCrop: the item lacks {self.video_key!r}; it has {sorted(item)}")
        video = item[self.video_key]
        if video.dim() != 4 or video.shape[1] != 3:
            raise ValueError(
                f"EntityCrop: {self.video_key} must be [T, 3, H, W], got {video.shape}"
            )
        height, width = video.shape[2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"EntityCrop: frame size {height}x{width} is not a multiple of "
                f"patch_size={self.patch_size}"
            )
        top, left, h, w = self.rectangle(height, width, generator)
        crop = self.black.to(video.dtype).expand_as(video).clone()
        crop[..., top : top + h, left : left + w] = video[..., top : top + h, left : left + w]
        p = self.patch_size
        region = torch.zeros(height // p, width // p, dtype=torch.bool)
        region[top // p : (top + h) // p, left // p : (left + w) // p] = True
        return {**item, "pem_crop": crop, "pem_region": region}
