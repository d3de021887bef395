"""Frame transforms in plain torch: resize the short side, crop a square, normalise (ImageNet)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_short_side(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear (antialiased) resize of float frames `[F, C, H, W]` so that min(H, W) == size.

    The long side is scaled by the same factor and rounded to the nearest integer.
    """
    height, width = frames.shape[-2:]
    scale = size / min(height, width)
    new_size = (
        (size, max(size, round(width * scale)))
        if height <= width
        else (max(size, round(height * scale)), size)
    )
    return F.interpolate(
        frames, size=new_size, mode="bilinear", antialias=True, align_corners=False
    )


def crop_offsets(
    height: int, width: int, size: int, train: bool, generator: torch.Generator | None = None
) -> tuple[int, int]:
    """Top-left corner `(top, left)` of a `size` x `size` crop: uniformly random (train, drawn from
    `generator`) or centred (eval, rounding down)."""
    if train:
        top = int(torch.randint(height - size + 1, (), generator=generator))
        left = int(torch.randint(width - size + 1, (), generator=generator))
        return top, left
    return (height - size) // 2, (width - size) // 2


def video_transform(
    frames: torch.Tensor,
    resize: int,
    image_size: int,
    train: bool,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """uint8 RGB `[F, H, W, 3]` -> ImageNet-normalised float32 `[F, 3, image_size, image_size]`.

    Resize the short side to `resize` (bilinear, antialiased), crop `image_size` (train: one random
    crop shared by all frames of the clip, drawn from `generator`; eval: centre crop), scale to
    [0, 1], subtract the ImageNet mean and divide by the ImageNet std per channel.
    """
    if frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[-1] != 3:
        raise ValueError(
            f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {tuple(frames.shape)}"
        )
    if image_size > resize:
        raise ValueError(f"image_size ({image_size}) must not exceed resize ({resize})")
    pixels = frames.permute(0, 3, 1, 2).float()
    pixels = resize_short_side(pixels, resize)
    top, left = crop_offsets(pixels.shape[-2], pixels.shape[-1], image_size, train, generator)
    pixels = pixels[..., top : top + image_size, left : left + image_size] / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((pixels - mean) / std).contiguous()
