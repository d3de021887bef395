"""All-in-one (Wang et al., CVPR 2023): one shared ViT over text tokens and video patches.

Submodule names follow the official release so that its checkpoint's keys map onto this
module's ``state_dict`` almost one to one (see ``allinone_checkpoint.py``). Every computation
runs through :meth:`AllInOne.forward` (FSDP2 gathers parameters in forward hooks).

Two deliberate simplifications of the release, neither of which changes the parameters:
patch tokens stay in raster order (the release shuffles them per frame when the image has no
padding, which only changes *which* patches the temporal roll moves), and there is no
stochastic depth.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from meltr.backbones.inputs import checked_text

MODES = ("text", "video", "joint")
TEXT_TOKEN_TYPE = 0
VIDEO_TOKEN_TYPE = 1
VIT_LAYER_NORM_EPS = 1e-6
BERT_LAYER_NORM_EPS = 1e-12
ROLL_FRACTION_DIVISOR = 8


def temporal_roll(visual_tokens: Tensor, num_frames: int) -> Tensor:
    """Exchange visual tokens between neighbouring frames (All-in-one's temporal modelling).

    ``visual_tokens`` is ``[B * num_frames, N, D]`` with frames of one video adjacent and token 0
    the frame's cls token. With ``fold = N // 8``: the cls token stays; tokens ``1 .. fold`` of
    frame ``t`` take the values of frame ``t - 1``; the last ``fold`` tokens of frame ``t`` take
    the values of frame ``t + 1`` (both cyclic in time); the rest stay. Returns a new tensor of
    the same shape; the input is not modified.
    """
    total, num_tokens, width = visual_tokens.shape
    fold = num_tokens // ROLL_FRACTION_DIVISOR
    if fold == 0:
        return visual_tokens
    x = visual_tokens.reshape(total // num_frames, num_frames, num_tokens, width)
    rolled = torch.cat(
        [
            x[:, :, :1],
            torch.roll(x[:, :, 1 : fold + 1], shifts=1, dims=1),
            x[:, :, fold + 1 : num_tokens - fold],
            torch.roll(x[:, :, num_tokens - fold :], shifts=-1, dims=1),
        ],
        dim=2,
    )
    return rolled.reshape(total, num_tokens, width)


class TextEmbeddings(nn.Module):
    """BERT-style text embeddings: LayerNorm(word + position + token type 0), then dropout.

    The official checkpoint carries a BERT token-type table of its own here (distinct from the
    model-level ``token_type_embeddings``); only row 0 is ever used.
    """

    def __init__(self, vocab_size: int, max_len: int, width: int, drop_rate: float) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, width)
        self.position_embeddings = nn.Embedding(max_len, width)
        self.token_type_embeddings = nn.Embedding(2, width)
        self.LayerNorm = nn.LayerNorm(width, eps=BERT_LAYER_NORM_EPS)
        self.dropout = nn.Dropout(drop_rate)

    def forward(self, text_ids: Tensor) -> Tensor:
        """``text_ids`` int64 ``[B, L]`` (L <= max_len) -> ``[B, L, width]``."""
        length = text_ids.shape[1]
        positions = self.position_embeddings.weight[:length]
        token_type = self.token_type_embeddings.weight[TEXT_TOKEN_TYPE]
        return self.dropout(self.LayerNorm(self.word_embeddings(text_ids) + positions + token_type))


class Attention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``."""

    def __init__(self, width: int, heads: int, drop_rate: float) -> None:
        super().__init__()
        if width % heads != 0:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.proj_drop = nn.Dropout(drop_rate)

    def forward(self, x: Tensor, key_mask: Tensor | None) -> Tensor:
        """``x`` ``[B, N, D]``; ``key_mask`` bool ``[B, N]`` (True = may be attended) or None."""
        batch, tokens, width = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, width // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(batch, tokens, width)))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int, drop_rate: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.drop = nn.Dropout(drop_rate)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, drop_rate: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=VIT_LAYER_NORM_EPS)
        self.attn = Attention(width, heads, drop_rate)
        self.norm2 = nn.LayerNorm(width, eps=VIT_LAYER_NORM_EPS)
        self.mlp = Mlp(width, int(width * mlp_ratio), drop_rate)

    def forward(self, x: Tensor, key_mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), key_mask)
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, width: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: Tensor) -> Tensor:
        """``[N, 3, H, W]`` -> ``[N, (H/p) * (W/p), width]`` in raster order."""
        return self.proj(images).flatten(2).transpose(1, 2)


class VideoTransformer(nn.Module):
    """The shared ViT's parameters: patch embedding, cls / position / temporal embeddings,
    blocks and the final norm. The blocks are applied by :meth:`AllInOne.forward`."""

    def __init__(
        self,
        num_frames: int,
        image_size: int,
        patch_size: int,
        width: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
        drop_rate: float,
    ) -> None:
        super().__init__()
        if image_size % patch_size != 0:
            raise ValueError(
                f"image_size {image_size} is not a multiple of patch_size {patch_size}"
            )
        num_patches = (image_size // patch_size) ** 2
        self.patch_embed = PatchEmbed(patch_size, width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, width))
        self.temporal_embed = nn.Parameter(torch.zeros(1, num_frames, width))
        self.pos_drop = nn.Dropout(drop_rate)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, drop_rate) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=VIT_LAYER_NORM_EPS)

    def embed_frames(self, video: Tensor) -> Tensor:
        """``video`` ``[B, F, 3, H, W]`` -> tokens ``[B * F, 1 + num_patches, width]``.

        Patch tokens get the spatial position embedding plus their frame's temporal embedding;
        the cls token gets position 0 only.
        """
        batch, frames = video.shape[:2]
        patches = self.patch_embed(video.flatten(0, 1))
        patches = patches + self.pos_embed[:, 1:]
        patches = patches + self.temporal_embed[0].repeat(batch, 1)[:, None, :]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(batch * frames, -1, -1)
        return self.pos_drop(torch.cat([cls, patches], dim=1))


class Pooler(nn.Module):
    """``tanh(dense(token 0))``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.dense = nn.Linear(width, width)

    def forward(self, hidden: Tensor) -> Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


class MLMTransform(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.dense = nn.Linear(width, width)
        self.LayerNorm = nn.LayerNorm(width, eps=BERT_LAYER_NORM_EPS)

    def forward(self, x: Tensor) -> Tensor:
        return self.LayerNorm(F.gelu(self.dense(x)))


class MLMHead(nn.Module):
    """BERT prediction head: transform, then an untied bias-free decoder plus a separate bias."""

    def __init__(self, width: int, vocab_size: int) -> None:
        super().__init__()
        self.transform = MLMTransform(width)
        self.decoder = nn.Linear(width, vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, hidden: Tensor) -> Tensor:
        return self.decoder(self.transform(hidden)) + self.bias


class AllInOne(nn.Module):
    """All-in-one backbone with retrieval (txt/vid projections), MLM and matching heads.

    ``forward(mode=...)`` modes (all outputs float, B = batch, L = text length <= max_text_len,
    D = width, P = proj_dim, V = vocab_size):

    - ``"text"``: ``text_ids`` ``[B, L]``, ``text_mask`` ``[B, L]`` -> ``{"text_feat": [B, P]}``,
      the L2-normalised projection of the [CLS] output of a text-only pass.
    - ``"video"``: ``video`` ``[B, num_frames, 3, image_size, image_size]`` ->
      ``{"video_feat": [B, P]}``, the L2-normalised projection of the frame-averaged cls output of
      a video-only pass (no temporal roll).
    - ``"joint"``: all three inputs -> ``{"text_hidden": [B, L, D], "pooled": [B, D],
      "mlm_logits": [B, L, V], "vtm_logits": [B, 2]}``. Each frame is the sequence
      ``[text; cls; patches]``, visual tokens are temporally rolled before every block, outputs
      are averaged over frames; ``pooled`` is the pooler on text token 0.

    ``text_mask`` (1 = real token, 0 = padding) may be omitted when nothing is padded.
    """

    def __init__(
        self,
        vocab_size: int = 30522,
        max_text_len: int = 40,
        num_frames: int = 3,
        image_size: int = 224,
        patch_size: int = 16,
        width: int = 768,
        depth: int = 12,
        heads: int = 12,
        mlp_ratio: float = 4.0,
        proj_dim: int = 512,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_frames = num_frames
        self.image_size = image_size
        self.max_text_len = max_text_len
        self.text_embeddings = TextEmbeddings(vocab_size, max_text_len, width, drop_rate)
        self.token_type_embeddings = nn.Embedding(2, width)
        self.transformer = VideoTransformer(
            num_frames, image_size, patch_size, width, depth, heads, mlp_ratio, drop_rate
        )
        self.pooler = Pooler(width)
        self.mlm_score = MLMHead(width, vocab_size)
        self.txt_proj = nn.Linear(width, proj_dim)
        self.vid_proj = nn.Linear(width, proj_dim)
        self.vtm_score = nn.Linear(width, 2)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The release's initialisation: N(0, 0.02) for linear, conv and embedding weights, zero
        biases, unit LayerNorms, truncated N(0, 0.02) cls / position tables, zero temporal table."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding, nn.Conv2d)):
                nn.init.normal_(module.weight, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.transformer.cls_token, std=0.02)
        nn.init.trunc_normal_(self.transformer.pos_embed, std=0.02)
        nn.init.zeros_(self.transformer.temporal_embed)
        nn.init.zeros_(self.mlm_score.bias)

    def fsdp_units(self) -> list[nn.Module]:
        """The modules FSDP shards one by one (and activation checkpointing recomputes): the
        transformer blocks."""
        return list(self.transformer.blocks)

    def forward(
        self,
        *,
        mode: str,
        text_ids: Tensor | None = None,
        text_mask: Tensor | None = None,
        video: Tensor | None = None,
    ) -> dict[str, Tensor]:
        if mode == "text":
            return {
                "text_feat": self._text_features(
                    *checked_text(text_ids, text_mask, self.max_text_len)
                )
            }
        if mode == "video":
            return {"video_feat": self._video_features(self._check_video(video))}
        if mode == "joint":
            text_ids, key_mask = checked_text(text_ids, text_mask, self.max_text_len)
            return self._joint(text_ids, key_mask, self._check_video(video))
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")

    def _check_video(self, video: Tensor | None) -> Tensor:
        if video is None:
            raise ValueError("video is required for this mode")
        expected = (self.num_frames, 3, self.image_size, self.image_size)
        if video.dim() != 5 or tuple(video.shape[1:]) != expected:
            raise ValueError(
                f"video must be [B, {', '.join(map(str, expected))}], got {tuple(video.shape)}"
            )
        return video

    def _embed_text(self, text_ids: Tensor) -> Tensor:
        token_type = self.token_type_embeddings.weight[TEXT_TOKEN_TYPE]
        return self.text_embeddings(text_ids) + token_type

    def _embed_video(self, video: Tensor) -> Tensor:
        token_type = self.token_type_embeddings.weight[VIDEO_TOKEN_TYPE]
        return self.transformer.embed_frames(video) + token_type

    def _text_features(self, text_ids: Tensor, key_mask: Tensor) -> Tensor:
        x = self._embed_text(text_ids)
        for block in self.transformer.blocks:
            x = block(x, key_mask)
        cls = self.transformer.norm(x)[:, 0]
        return F.normalize(self.txt_proj(cls), dim=-1)

    def _video_features(self, video: Tensor) -> Tensor:
        x = self._embed_video(video)
        for block in self.transformer.blocks:
            x = block(x)
        cls = self.transformer.norm(x)[:, 0].unflatten(0, (-1, self.num_frames)).mean(dim=1)
        return F.normalize(self.vid_proj(cls), dim=-1)

    def _joint(self, text_ids: Tensor, key_mask: Tensor, video: Tensor) -> dict[str, Tensor]:
        text_len = text_ids.shape[1]
        text = self._embed_text(text_ids).repeat_interleave(self.num_frames, dim=0)
        visual = self._embed_video(video)
        video_mask = torch.ones(visual.shape[:2], dtype=torch.bool, device=visual.device)
        key_mask = torch.cat([key_mask.repeat_interleave(self.num_frames, dim=0), video_mask], 1)
        x = torch.cat([text, visual], dim=1)
        for block in self.transformer.blocks:
            visual = temporal_roll(x[:, text_len:], self.num_frames)
            x = block(torch.cat([x[:, :text_len], visual], dim=1), key_mask)
        x = self.transformer.norm(x).unflatten(0, (-1, self.num_frames)).mean(dim=1)
        text_hidden = x[:, :text_len]
        pooled = self.pooler(x)
        return {
            "text_hidden": text_hidden,
            "pooled": pooled,
            "mlm_logits": self.mlm_score(text_hidden),
            "vtm_logits": self.vtm_score(pooled),
        }
