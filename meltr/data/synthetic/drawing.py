"""Shape masks, drawn by the moving-shapes clips and the shape images."""

from __future__ import annotations

import numpy as np

SHAPES = ("circle", "ring", "square", "cross", "triangle")
RING_HOLE = 0.55  # the ring's inner radius, a fraction of its outer one
CROSS_ARM = 0.33  # half the width of the cross's bars, a fraction of their half length


def shape_mask(
    shape: str, dx: np.ndarray, dy: np.ndarray, radius: float, triangle_base: float = 1.0
) -> np.ndarray:
    """Boolean mask of the pixels ``shape`` covers, given each pixel's offset ``dx``, ``dy`` from
    the shape's centre (image coordinates, y pointing down; any broadcastable shapes).

    ``circle``: the disk of ``radius``; ``ring``: the disk minus its concentric ``RING_HOLE``
    part; ``square``: side ``2 radius``; ``cross``: two bars ``2 radius`` long and ``2 CROSS_ARM
    radius`` wide; ``triangle``: apex up at ``-radius``, base at ``triangle_base * radius``,
    ``2 radius`` wide at the base.
    """
    if shape in ("circle", "ring"):
        distance = np.hypot(dx, dy)
        disk = distance <= radius
        return disk & (distance >= RING_HOLE * radius) if shape == "ring" else disk
    if shape == "square":
        return (np.abs(dx) <= radius) & (np.abs(dy) <= radius)
    if shape == "cross":
        arm = CROSS_ARM * radius
        vertical = (np.abs(dx) <= arm) & (np.abs(dy) <= radius)
        return vertical | ((np.abs(dy) <= arm) & (np.abs(dx) <= radius))
    if shape == "triangle":
        half_width = (dy + radius) / (triangle_base * radius + radius) * radius
        return (dy >= -radius) & (dy <= triangle_base * radius) & (np.abs(dx) <= half_width)
    raise ValueError(f"shape must be one of {SHAPES}, got {shape!r}")
