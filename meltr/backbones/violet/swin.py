"""Video Swin Transformer (Liu et al., CVPR 2022) as the Violet release configures and uses it.

Submodule and parameter names follow the release's ``SwinTransformer3D`` so that its checkpoint
(``ckpt_video-swin.pt``) and the ``enc_img.swin.*`` part of ``ckpt_violet_pretrain.pt`` map onto
``state_dict`` one to one. Tensors run channels-last, ``[B, D, H, W, C]`` (D = time).

Two details of the release that the defaults keep:

- the patch embedding is a ``Conv3d`` with kernel ``patch`` but temporal stride 1, after one
  all-zero frame is appended (``patch[0] - 1`` in general), so ``F`` input frames give ``F``
  token frames, token frame ``t`` seeing frames ``t`` and ``t + 1``;
- a window larger than the token grid along an axis shrinks to the grid there and is not shifted
  along it (5 frames against a temporal window of 8: windows of 5 frames, no temporal shift).

Where a window shrinks, the relative position bias of the smaller window is read from the full
window's table at the coordinates of the smaller window. The release slices the index to its
first ``N x N`` entries instead, which is the same thing when only the temporal extent shrinks
(Violet at 224 px) and wrong when a spatial one does; here it is right in both cases.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Triple = tuple[int, int, int]
# The release's additive mask between tokens that a cyclic shift put into one window although
# they are not neighbours (exp(-100) is 0 against the other terms in float32).
CROSS_REGION_MASK = -100.0


def effective_window(grid: Sequence[int], window: Triple, shift: Triple) -> tuple[Triple, Triple]:
    """``(window, shift)`` used on a token grid ``(D, H, W)``: along an axis where the grid is no
    larger than the window, the window is the grid and the shift 0."""
    used_window, used_shift = list(window), list(shift)
    for axis, size in enumerate(grid):
        if size <= window[axis]:
            used_window[axis], used_shift[axis] = size, 0
    return tuple(used_window), tuple(used_shift)


def padded_grid(grid: Sequence[int], window: Triple) -> Triple:
    """``grid`` rounded up, axis by axis, to a multiple of ``window``."""
    return tuple(-(-size // w) * w for size, w in zip(grid, window, strict=True))


def window_partition(x: Tensor, window: Triple) -> Tensor:
    """``[B, D, H, W, C]`` (each of D, H, W a multiple of the window) -> ``[B, nW, N, C]``:
    windows in raster order of their position, tokens in raster order within a window."""
    batch, depth, height, width, channels = x.shape
    wd, wh, ww = window
    x = x.reshape(batch, depth // wd, wd, height // wh, wh, width // ww, ww, channels)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(batch, -1, wd * wh * ww, channels)


def window_reverse(windows: Tensor, window: Triple, grid: Triple) -> Tensor:
    """Inverse of :func:`window_partition`: ``[B, nW, N, C]`` -> ``[B, D, H, W, C]``."""
    batch, channels = windows.shape[0], windows.shape[-1]
    (wd, wh, ww), (depth, height, width) = window, grid
    x = windows.reshape(batch, depth // wd, height // wh, width // ww, wd, wh, ww, channels)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(batch, depth, height, width, channels)


def shifted_window_mask(grid: Triple, window: Triple, shift: Triple, device=None) -> Tensor:
    """Additive attention mask ``[nW, N, N]`` for windows of a grid cyclically rolled by
    ``-shift``: 0 between tokens of the same region, :data:`CROSS_REGION_MASK` between tokens
    that the roll brought together from opposite ends. ``grid`` is a multiple of ``window``.

    Along each axis the rolled grid has three regions, ``[0, G - w)``, ``[G - w, G - s)`` and
    ``[G - s, G)``; a token's region label combines its three axes' regions.
    """
    labels = torch.zeros(grid, device=device)
    count = 0
    for d in _regions(window[0], shift[0]):
        for h in _regions(window[1], shift[1]):
            for w in _regions(window[2], shift[2]):
                labels[d, h, w] = count
                count += 1
    windows = window_partition(labels[None, ..., None], window)[0, ..., 0]
    different = windows[:, None, :] != windows[:, :, None]
    return torch.zeros(different.shape, device=device).masked_fill(different, CROSS_REGION_MASK)


def _regions(window: int, shift: int) -> tuple[slice, slice, slice]:
    return slice(-window), slice(-window, -shift), slice(-shift, None)


def relative_position_index(window: Triple) -> Tensor:
    """int64 ``[N, N]`` (N = the window's token count): the row of the relative position bias
    table for each (query, key) pair of a window, with the table's axes ordered (d, h, w) and
    each relative offset shifted to start at 0."""
    coords = torch.stack(
        torch.meshgrid(*(torch.arange(size) for size in window), indexing="ij")
    ).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    relative = relative + torch.tensor([size - 1 for size in window])
    strides = torch.tensor([(2 * window[1] - 1) * (2 * window[2] - 1), 2 * window[2] - 1, 1])
    return (relative * strides).sum(-1)


def sub_window_tokens(full: Triple, used: Triple) -> Tensor:
    """int64 ``[prod(used)]``: the positions, within a window of shape ``full``, of the tokens of
    a window of shape ``used`` anchored at its origin (raster order)."""
    d, h, w = torch.meshgrid(*(torch.arange(size) for size in used), indexing="ij")
    return ((d * full[1] + h) * full[2] + w).flatten()


class WindowAttention3D(nn.Module):
    """Multi-head self-attention within windows, with a learned relative position bias.

    Parameters ``qkv``, ``proj``, ``relative_position_bias_table`` ``[(2Wd-1)(2Wh-1)(2Ww-1),
    heads]``; persistent int64 buffer ``relative_position_index`` ``[Wd*Wh*Ww, Wd*Wh*Ww]``.
    """

    def __init__(self, dim: int, window: Triple, heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % heads != 0:
            raise ValueError(f"Swin width {dim} is not divisible by heads {heads}")
        self.window, self.heads = tuple(window), heads
        table_rows = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(table_rows, heads))
        self.register_buffer("relative_position_index", relative_position_index(self.window))
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def position_bias(self, used: Triple) -> Tensor:
        """``[heads, N, N]`` for windows of shape ``used`` (no larger than the full window)."""
        index = self.relative_position_index
        if used != self.window:
            tokens = sub_window_tokens(self.window, used).to(index.device)
            index = index[tokens][:, tokens]
        bias = self.relative_position_bias_table[index.reshape(-1)]
        return bias.view(*index.shape, self.heads).permute(2, 0, 1)

    def forward(self, windows: Tensor, used: Triple, mask: Tensor | None) -> Tensor:
        """``windows`` ``[B, nW, N, C]`` of shape ``used``; ``mask`` ``[nW, N, N]`` (additive)
        or None -> ``[B, nW, N, C]``."""
        batch, num_windows, tokens, channels = windows.shape
        qkv = self.qkv(windows).view(batch, num_windows, tokens, 3, self.heads, -1)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)
        bias = self.position_bias(used)
        if mask is not None:
            bias = bias + mask[:, None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.proj(out.transpose(2, 3).reshape(batch, num_windows, tokens, channels))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def drop_path(x: Tensor, probability: float, training: bool) -> Tensor:
    """Stochastic depth: each sample's branch is zeroed with ``probability`` and the rest scaled
    by ``1 / (1 - probability)`` (training only; global torch RNG)."""
    if probability == 0.0 or not training:
        return x
    keep = 1.0 - probability
    shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    survives = (keep + torch.rand(shape, dtype=x.dtype, device=x.device)).floor()
    return x / keep * survives


class SwinBlock3D(nn.Module):
    """``x + drop_path(W-MSA(norm1(x)))``, then ``x + drop_path(mlp(norm2(x)))``; the windows
    are shifted by ``shift`` (cyclic roll, masked) when it is non-zero."""

    def __init__(
        self,
        dim: int,
        heads: int,
        window: Triple,
        shift: Triple,
        mlp_ratio: float,
        drop_path_rate: float,
    ) -> None:
        super().__init__()
        if not all(0 <= s < w for s, w in zip(shift, window, strict=True)):
            raise ValueError(f"shift {shift} must lie in [0, window) for window {window}")
        self.window, self.shift, self.drop_path_rate = tuple(window), tuple(shift), drop_path_rate
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention3D(dim, self.window, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, shift_mask: Tensor | None) -> Tensor:
        """``x`` ``[B, D, H, W, C]``; ``shift_mask`` from :func:`shifted_window_mask` for the
        stage's shifted windows (used only if this block shifts)."""
        grid = tuple(x.shape[1:4])
        window, shift = effective_window(grid, self.window, self.shift)
        padded = padded_grid(grid, window)
        y = self.norm1(x)
        pad = [p - g for p, g in zip(padded, grid, strict=True)]
        y = F.pad(y, (0, 0, 0, pad[2], 0, pad[1], 0, pad[0]))
        shifted = any(shift)
        if shifted:
            if shift_mask is None:
                raise ValueError("a shifted Swin block needs the stage's shift mask")
            y = torch.roll(y, shifts=tuple(-s for s in shift), dims=(1, 2, 3))
        windows = self.attn(window_partition(y, window), window, shift_mask if shifted else None)
        y = window_reverse(windows, window, padded)
        if shifted:
            y = torch.roll(y, shifts=shift, dims=(1, 2, 3))
        y = y[:, : grid[0], : grid[1], : grid[2]]
        x = x + drop_path(y, self.drop_path_rate, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path_rate, self.training)


class PatchMerging(nn.Module):
    """2x2 spatial merge: concatenate the tokens at (even, even), (odd, even), (even, odd),
    (odd, odd) (zero-padding odd sizes), LayerNorm, then Linear 4C -> 2C without bias."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[2:4]
        x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        parts = [x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]]
        return self.reduction(self.norm(torch.cat(parts, dim=-1)))


class SwinStage(nn.Module):
    """``depth`` blocks, alternately unshifted and shifted by half a window, then an optional
    :class:`PatchMerging` (``downsample``)."""

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        window: Triple,
        mlp_ratio: float,
        drop_path_rates: Sequence[float],
        downsample: bool,
    ) -> None:
        super().__init__()
        self.window = tuple(window)
        self.shift = tuple(size // 2 for size in window)
        self.blocks = nn.ModuleList(
            SwinBlock3D(
                dim,
                heads,
                self.window,
                (0, 0, 0) if index % 2 == 0 else self.shift,
                mlp_ratio,
                drop_path_rates[index],
            )
            for index in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: Tensor) -> Tensor:
        window, shift = effective_window(x.shape[1:4], self.window, self.shift)
        mask = None
        if any(shift):
            mask = shifted_window_mask(padded_grid(x.shape[1:4], window), window, shift, x.device)
        for block in self.blocks:
            x = block(x, mask)
        return x if self.downsample is None else self.downsample(x)


class PatchEmbed3D(nn.Module):
    """Conv3d patch embedding with temporal stride 1 (see the module docstring), then LayerNorm.

    ``[B, 3, F, S, S]`` -> ``[B, F, ceil(S / p), ceil(S / p), C]`` (spatial sizes zero-padded to a
    multiple of the patch)."""

    def __init__(self, patch: Triple, embed_dim: int) -> None:
        super().__init__()
        self.patch = tuple(patch)
        self.proj = nn.Conv3d(3, embed_dim, kernel_size=self.patch, stride=(1, *self.patch[1:]))
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, video: Tensor) -> Tensor:
        height, width = video.shape[-2:]
        pad_h, pad_w = (-height) % self.patch[1], (-width) % self.patch[2]
        video = F.pad(video, (0, pad_w, 0, pad_h, 0, self.patch[0] - 1))
        return self.norm(self.proj(video).permute(0, 2, 3, 4, 1))


class SwinTransformer3D(nn.Module):
    """Video Swin: patch embedding, stages (merging between them), final LayerNorm.

    ``forward(video [B, F, 3, S, S])`` -> ``[B, F, g, g, embed_dim * 2 ** (stages - 1)]`` with
    ``g = S / (patch * 2 ** (stages - 1))`` (7 for the release at 224 px). Stochastic depth rises
    linearly from 0 to ``drop_path_rate`` over all blocks.
    """

    def __init__(
        self,
        patch: Triple = (2, 4, 4),
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 18, 2),
        heads: Sequence[int] = (3, 6, 12, 24),
        window: Triple = (8, 7, 7),
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.2,
    ) -> None:
        super().__init__()
        if len(depths) != len(heads):
            raise ValueError(
                f"Swin depths {tuple(depths)} and heads {tuple(heads)} differ in length"
            )
        self.patch_embed = PatchEmbed3D(patch, embed_dim)
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        starts = [sum(depths[:index]) for index in range(len(depths) + 1)]
        self.layers = nn.ModuleList(
            SwinStage(
                embed_dim * 2**index,
                depth,
                stage_heads,
                window,
                mlp_ratio,
                rates[starts[index] : starts[index + 1]],
                downsample=index < len(depths) - 1,
            )
            for index, (depth, stage_heads) in enumerate(zip(depths, heads, strict=True))
        )
        self.num_features = embed_dim * 2 ** (len(depths) - 1)
        self.norm = nn.LayerNorm(self.num_features)

    def blocks(self) -> list[SwinBlock3D]:
        """Every block of every stage, in order."""
        return [block for stage in self.layers for block in stage.blocks]

    def forward(self, video: Tensor) -> Tensor:
        x = self.patch_embed(video.transpose(1, 2))
        for stage in self.layers:
            x = stage(x)
        return self.norm(x)
