"""Video Swin pieces against brute-force constructions on tiny grids."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from meltr.backbones.violet.swin import (
    CROSS_REGION_MASK,
    PatchEmbed3D,
    SwinBlock3D,
    SwinTransformer3D,
    effective_window,
    padded_grid,
    relative_position_index,
    shifted_window_mask,
    window_partition,
)


def window_tokens(grid, window):
    """Token coordinates per window, windows in raster order of their origin, tokens in raster
    order inside: the layout window_partition is documented to produce."""
    starts = [range(0, g, w) for g, w in zip(grid, window, strict=True)]
    return [
        [
            tuple(o + i for o, i in zip(origin, inner, strict=True))
            for inner in itertools.product(*(range(w) for w in window))
        ]
        for origin in itertools.product(*starts)
    ]


def shifted_window_id(coord, window, shift):
    """The shifted window a token belongs to in the unrolled grid: along each axis windows start
    at ``shift + k * window`` and the tokens before ``shift`` form a window of their own."""
    return tuple((c - s) // w for c, w, s in zip(coord, window, shift, strict=True))


@pytest.mark.parametrize(
    "grid, window, shift",
    [
        ((4, 4, 4), (2, 2, 2), (1, 1, 1)),
        ((2, 6, 6), (2, 3, 3), (0, 1, 1)),
        ((6, 4, 6), (3, 2, 3), (1, 1, 1)),
    ],
)
def test_shifted_window_mask_matches_a_brute_force_construction(grid, window, shift):
    mask = shifted_window_mask(grid, window, shift)
    # After rolling by -shift, rolled position r holds the token of unrolled coordinate
    # (r + shift) mod grid; two tokens of one window may attend iff they share a shifted window.
    for index, tokens in enumerate(window_tokens(grid, window)):
        unrolled = [
            tuple((r + s) % g for r, s, g in zip(t, shift, grid, strict=True)) for t in tokens
        ]
        for i, j in itertools.product(range(len(tokens)), repeat=2):
            same = shifted_window_id(unrolled[i], window, shift) == shifted_window_id(
                unrolled[j], window, shift
            )
            assert mask[index, i, j] == (0.0 if same else CROSS_REGION_MASK), (index, i, j)


def test_window_partition_layout():
    grid, window = (4, 4, 6), (2, 2, 3)
    x = torch.arange(4 * 4 * 6).view(1, *grid, 1)
    windows = window_partition(x, window)[0, ..., 0]
    for index, tokens in enumerate(window_tokens(grid, window)):
        assert windows[index].tolist() == [x[0, d, h, w, 0].item() for d, h, w in tokens]


@pytest.mark.parametrize("window", [(2, 2, 2), (3, 2, 4)])
def test_relative_position_index_matches_pairwise_offsets(window):
    index = relative_position_index(window)
    coords = list(itertools.product(*(range(w) for w in window)))
    wd, wh, ww = window
    for i, (d1, h1, w1) in enumerate(coords):
        for j, (d2, h2, w2) in enumerate(coords):
            row = (d1 - d2 + wd - 1) * (2 * wh - 1) * (2 * ww - 1)
            row += (h1 - h2 + wh - 1) * (2 * ww - 1) + (w1 - w2 + ww - 1)
            assert index[i, j] == row
    assert index.dtype == torch.int64


def brute_force_block(block, x):
    """The block's output computed token by token: each token attends to every token of the
    (padded) grid that shares its shifted window, with the table row of their offset."""
    batch, *grid, channels = x.shape
    window, shift = effective_window(grid, block.window, block.shift)
    padded = padded_grid(grid, window)
    y = block.norm1(x)
    y = F.pad(y, (0, 0, 0, padded[2] - grid[2], 0, padded[1] - grid[1], 0, padded[0] - grid[0]))
    attn = block.attn
    qkv = attn.qkv(y)
    heads = attn.heads
    q, k, v = qkv.view(batch, *padded, 3, heads, channels // heads).unbind(-3)
    full = attn.window
    coords = list(itertools.product(*(range(p) for p in padded)))
    out = torch.zeros(batch, *padded, channels)
    for coord in coords:
        keys = [
            c
            for c in coords
            if shifted_window_id(c, window, shift) == shifted_window_id(coord, window, shift)
        ]
        rows = []
        for key in keys:
            dd, dh, dw = (a - b for a, b in zip(coord, key, strict=True))
            rows.append(
                (dd + full[0] - 1) * (2 * full[1] - 1) * (2 * full[2] - 1)
                + (dh + full[1] - 1) * (2 * full[2] - 1)
                + (dw + full[2] - 1)
            )
        bias = attn.relative_position_bias_table[rows].T  # [heads, keys]
        key_k = torch.stack([k[(slice(None), *c)] for c in keys], dim=2)  # [B, heads, keys, hd]
        key_v = torch.stack([v[(slice(None), *c)] for c in keys], dim=2)
        query = q[(slice(None), *coord)]  # [B, heads, hd]
        logits = torch.einsum("bhd,bhkd->bhk", query, key_k) / (channels // heads) ** 0.5 + bias
        mixed = torch.einsum("bhk,bhkd->bhd", logits.softmax(-1), key_v).reshape(batch, channels)
        out[(slice(None), *coord)] = attn.proj(mixed)
    x = x + out[:, : grid[0], : grid[1], : grid[2]]
    return x + block.mlp(block.norm2(x))


@pytest.mark.parametrize(
    "grid, window, shift",
    [
        ((4, 4, 4), (2, 2, 2), (1, 1, 1)),  # shifted along every axis
        ((4, 4, 4), (2, 2, 2), (0, 0, 0)),
        ((3, 5, 5), (2, 2, 2), (1, 1, 1)),  # padded to 4 x 6 x 6
        ((3, 4, 4), (4, 2, 2), (2, 1, 1)),  # temporal window shrinks to 3, no temporal shift
        ((2, 2, 4), (2, 4, 2), (1, 2, 1)),  # a spatial window shrinks (the release mis-indexes it)
    ],
)
def test_swin_block_matches_brute_force_window_attention(grid, window, shift):
    torch.manual_seed(0)
    block = SwinBlock3D(8, 2, window, shift, mlp_ratio=2.0, drop_path_rate=0.0).eval()
    with torch.no_grad():
        block.attn.relative_position_bias_table.normal_()  # make the bias matter
    x = torch.randn(2, *grid, 8)
    used_window, used_shift = effective_window(grid, window, shift)
    mask = None
    if any(used_shift):
        mask = shifted_window_mask(padded_grid(grid, used_window), used_window, used_shift)
    with torch.no_grad():
        torch.testing.assert_close(
            block(x, mask), brute_force_block(block, x), atol=1e-5, rtol=1e-5
        )


def test_patch_embedding_has_temporal_stride_one_over_a_zero_frame():
    torch.manual_seed(0)
    embed = PatchEmbed3D((2, 4, 4), 6)
    video = torch.randn(1, 3, 4, 8, 8)  # [B, 3, F, S, S]
    out = embed(video)
    assert out.shape == (1, 4, 2, 2, 6)
    for t in range(4):
        nxt = video[:, :, t + 1] if t + 1 < 4 else torch.zeros_like(video[:, :, t])
        clip = torch.stack([video[:, :, t], nxt], dim=2)
        expected = F.conv3d(clip, embed.proj.weight, embed.proj.bias, stride=(1, 4, 4))
        expected = embed.norm(expected.permute(0, 2, 3, 4, 1))[:, 0]
        torch.testing.assert_close(out[:, t], expected, atol=1e-6, rtol=1e-6)


def test_swin_output_grid_and_stochastic_depth_rates():
    swin = SwinTransformer3D((2, 4, 4), 8, (2, 2, 2), (1, 2, 2), (2, 2, 2), drop_path_rate=0.25)
    rates = [block.drop_path_rate for block in swin.blocks()]
    assert rates == pytest.approx([0.25 * i / 5 for i in range(6)])
    assert swin(torch.randn(1, 3, 3, 64, 64)).shape == (1, 3, 4, 4, 32)
