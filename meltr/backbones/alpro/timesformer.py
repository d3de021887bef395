"""TimeSformer (Bertasius et al., ICML 2021) with divided space-time attention, as ALPRO's video
encoder configures and uses it (salesforce/ALPRO ``src/modeling/timesformer/vit.py``).

Submodule and parameter names follow the release's ``VisionTransformer``, which ALPRO stores under
``visual_encoder.model.*``: ``cls_token``, ``pos_embed``, ``time_embed``, ``patch_embed.proj``,
``blocks.N.{norm1, attn, temporal_norm1, temporal_attn, temporal_fc, norm2, mlp}``, ``norm``.
The release's Kinetics classifier ``head`` is not built (ALPRO never applies it; the loader
ignores its keys). The attention and MLP modules are All-in-one's ViT pieces, whose names
(``qkv``, ``proj``, ``fc1``, ``fc2``) are the same timm names.

Patch tokens are kept in the release's order: position-major, frame-minor (token ``1 + n * T +
t`` is patch ``n`` of frame ``t``). The dropout rates of the embeddings and blocks are 0 in every
release configuration and are not built; stochastic depth is.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from meltr.backbones.allinone.model import VIT_LAYER_NORM_EPS, Attention, Mlp, PatchEmbed
from meltr.backbones.violet.swin import drop_path


class DividedSpaceTimeBlock(nn.Module):
    """One TimeSformer block on ``[B, 1 + N * T, D]`` (cls first):

    1. temporal attention over the T frames of each patch position (cls excluded), through
       ``temporal_fc``, added to the patch tokens;
    2. spatial attention over ``[cls; N patches]`` of each frame; the cls result is averaged
       over the frames; added to the tokens;
    3. ``x + mlp(norm2(x))``.

    Each attention branch and the MLP go through stochastic depth (``drop_path_rate``).
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float, drop_path_rate: float) -> None:
        super().__init__()
        self.drop_path_rate = drop_path_rate
        self.norm1 = nn.LayerNorm(width, eps=VIT_LAYER_NORM_EPS)
        self.attn = Attention(width, heads, 0.0)
        self.temporal_norm1 = nn.LayerNorm(width, eps=VIT_LAYER_NORM_EPS)
        self.temporal_attn = Attention(width, heads, 0.0)
        self.temporal_fc = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, eps=VIT_LAYER_NORM_EPS)
        self.mlp = Mlp(width, int(width * mlp_ratio), 0.0)

    def _drop_path(self, x: Tensor) -> Tensor:
        return drop_path(x, self.drop_path_rate, self.training)

    def forward(self, x: Tensor, frames: int) -> Tensor:
        batch, tokens, width = x.shape
        cls, patches = x[:, :1], x[:, 1:]
        positions = (tokens - 1) // frames

        along_time = patches.reshape(batch * positions, frames, width)
        temporal = self._drop_path(self.temporal_attn(self.temporal_norm1(along_time), None))
        patches = patches + self.temporal_fc(temporal.reshape(batch, positions * frames, width))

        per_frame = patches.reshape(batch, positions, frames, width).transpose(1, 2)
        per_frame = per_frame.reshape(batch * frames, positions, width)
        frame_cls = cls.repeat_interleave(frames, dim=0)
        spatial_in = torch.cat([frame_cls, per_frame], dim=1)
        spatial = self._drop_path(self.attn(self.norm1(spatial_in), None))
        cls_update = spatial[:, 0].reshape(batch, frames, width).mean(dim=1, keepdim=True)
        patch_update = spatial[:, 1:].reshape(batch, frames, positions, width).transpose(1, 2)
        x = torch.cat([cls + cls_update, patches + patch_update.reshape(batch, -1, width)], dim=1)
        return x + self._drop_path(self.mlp(self.norm2(x)))


class TimeSformer(nn.Module):
    """The ViT with divided space-time attention: ``[B, T, 3, S, S]`` -> all tokens ``[B, 1 + N
    * T, D]`` after the final LayerNorm (N = (S / patch)^2).

    Patch tokens get the spatial position of their patch and the temporal embedding of their
    frame; the cls token gets position 0 only. ``pos_embed`` has ``1 + N`` rows and
    ``time_embed`` ``num_frames`` rows; another input size or frame count is a ValueError (the
    checkpoint loader resizes the tables of a file as the release does). Stochastic depth rises
    linearly from 0 at the first block to ``drop_path_rate`` at the last.
    """

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        num_frames: int,
        width: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
        drop_path_rate: float,
    ) -> None:
        super().__init__()
        if image_size % patch_size != 0:
            raise ValueError(
                f"image_size {image_size} is not a multiple of patch_size {patch_size}"
            )
        self.patch_size = patch_size
        self.patch_embed = PatchEmbed(patch_size, width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, (image_size // patch_size) ** 2 + 1, width))
        self.time_embed = nn.Parameter(torch.zeros(1, num_frames, width))
        rates = [drop_path_rate * index / max(depth - 1, 1) for index in range(depth)]
        self.blocks = nn.ModuleList(
            DividedSpaceTimeBlock(width, heads, mlp_ratio, rate) for rate in rates
        )
        self.norm = nn.LayerNorm(width, eps=VIT_LAYER_NORM_EPS)

    def forward(self, video: Tensor) -> Tensor:
        batch, frames = video.shape[:2]
        patches = self.patch_embed(video.flatten(0, 1))
        if patches.shape[1] + 1 != self.pos_embed.shape[1] or frames != self.time_embed.shape[1]:
            raise ValueError(
                f"video {tuple(video.shape)} gives {frames} frames of {patches.shape[1]} "
                f"patches; the model's tables hold {self.time_embed.shape[1]} frames of "
                f"{self.pos_embed.shape[1] - 1} patches (patch size {self.patch_size})"
            )
        positions, width = patches.shape[1:]
        patches = patches + self.pos_embed[:, 1:]
        patches = patches.reshape(batch, frames, positions, width).transpose(1, 2)
        patches = (patches + self.time_embed[:, None]).reshape(batch, positions * frames, width)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(batch, -1, -1)
        x = torch.cat([cls, patches], dim=1)
        for block in self.blocks:
            x = block(x, frames)
        return self.norm(x)


class VisualEncoder(nn.Module):
    """ALPRO's ``visual_encoder``: the TimeSformer (``model``), then the patch tokens averaged
    over frames: ``[B, T, 3, S, S]`` -> ``[B, 1 + N, D]`` (cls first, patches in raster order)."""

    def __init__(self, model: TimeSformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, video: Tensor) -> Tensor:
        frames = video.shape[1]
        tokens = self.model(video)
        batch, _, width = tokens.shape
        patches = tokens[:, 1:].reshape(batch, -1, frames, width).mean(dim=2)
        return torch.cat([tokens[:, :1], patches], dim=1)


def init_timesformer(model: TimeSformer) -> None:
    """The release's initialisation: truncated N(0, 0.02) linear weights and cls / position
    tables, zero biases and temporal table, unit LayerNorms, and ``temporal_fc`` zero in every
    block but the first (so that a fresh block starts as a spatial-only block)."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    nn.init.trunc_normal_(model.pos_embed, std=0.02)
    nn.init.trunc_normal_(model.cls_token, std=0.02)
    nn.init.zeros_(model.time_embed)
    for block in list(model.blocks)[1:]:
        nn.init.zeros_(block.temporal_fc.weight)
        nn.init.zeros_(block.temporal_fc.bias)
