"""Violet (Fu et al., 2021): Video Swin frames and BERT text embeddings joined by a BERT-base
cross transformer over ``[video tokens; text]``, read out at the text [CLS].

Submodule names follow the release (tsujuifu/pytorch_violet, MELTR's violet/), so that
``state_dict()`` has exactly the keys of ``ckpt_violet_pretrain.pt`` for the modules the release
has (``enc_img.*``, ``enc_txt.*``, ``trsfr.*``, ``fc.*``, ``fc_mtm.*``, ``fc_mvm.*``), less the HF
``enc_txt.emb_txt.position_ids`` buffer. The fine-tuning heads ``fc_mc`` (multiple choice),
``fc_oe`` (open-ended QA) and ``fc_cls`` (video classification) exist when configured. Every
computation runs through :meth:`Violet.forward` (FSDP2 gathers parameters in forward hooks).

The video is expected ImageNet-normalised (the release normalises inside its model).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from meltr.backbones.inputs import checked_text
from meltr.backbones.violet.bert import BertEmbeddings, BertEncoder, BertMLMHead, init_bert_weights
from meltr.backbones.violet.swin import SwinTransformer3D

MODES = ("text", "video", "score", "qa", "classify", "pretext")
MVM_VOCAB_SIZE = 8192  # DALL-E dVAE codebook
BERT_CLS_ID, BERT_SEP_ID = 101, 102  # bert-base-uncased


def grid_side(tokens_per_frame: int) -> int | None:
    """``g`` when ``tokens_per_frame == 1 + g*g`` (a frame's cls and its square token grid),
    else None."""
    side = round((tokens_per_frame - 1) ** 0.5)
    return side if tokens_per_frame > 1 and side * side == tokens_per_frame - 1 else None


def mlp_head(width: int, outputs: int, dropout: float) -> nn.Sequential:
    """The release's head: Dropout -> Linear(width, 2 width) -> ReLU -> Linear(2 width, outputs)
    (state-dict keys ``1.*`` and ``3.*``)."""
    return nn.Sequential(
        nn.Dropout(dropout),
        nn.Linear(width, 2 * width),
        nn.ReLU(),
        nn.Linear(2 * width, outputs),
    )


class VideoEncoder(nn.Module):
    """``enc_img``: Video Swin, then per frame ``[cls; g x g tokens]`` + spatial position + frame
    embeddings, LayerNorm.

    ``emb_pos`` ``[1, 1, 1 + max_grid**2, width]`` (the first ``1 + g*g`` rows are used),
    ``emb_len`` ``[1, max_frames, 1, width]`` (the first F rows), ``emb_cls`` ``[1, 1, 1, width]``.
    """

    def __init__(self, swin: SwinTransformer3D, width: int, max_frames: int, max_grid: int) -> None:
        super().__init__()
        if swin.num_features != width:
            raise ValueError(
                f"the Swin output width {swin.num_features} must equal the cross-transformer "
                f"width {width}"
            )
        self.max_frames, self.max_grid = max_frames, max_grid
        self.swin = swin
        self.emb_cls = nn.Parameter(0.02 * torch.randn(1, 1, 1, width))
        self.emb_pos = nn.Parameter(0.02 * torch.randn(1, 1, 1 + max_grid**2, width))
        self.emb_len = nn.Parameter(0.02 * torch.randn(1, max_frames, 1, width))
        self.norm = nn.LayerNorm(width)

    def forward(self, video: Tensor) -> Tensor:
        """``[B, F, 3, S, S]`` -> ``[B, F, 1 + g*g, width]``."""
        features = self.swin(video)
        batch, frames, grid_h, grid_w, width = features.shape
        if frames > self.max_frames or grid_h > self.max_grid or grid_w > self.max_grid:
            raise ValueError(
                f"video of {frames} frames gives a {grid_h}x{grid_w} token grid; the model's "
                f"tables allow at most {self.max_frames} frames and a "
                f"{self.max_grid}x{self.max_grid} grid"
            )
        tokens = torch.cat(
            [self.emb_cls.expand(batch, frames, 1, width), features.flatten(2, 3)], dim=2
        )
        tokens = tokens + self.emb_pos[:, :, : 1 + grid_h * grid_w] + self.emb_len[:, :frames]
        return self.norm(tokens)


class TextEncoder(nn.Module):
    """``enc_txt``: the BERT embeddings (``emb_txt``)."""

    def __init__(self, vocab_size: int, max_positions: int, width: int, dropout: float) -> None:
        super().__init__()
        self.emb_txt = BertEmbeddings(vocab_size, max_positions, width, dropout)

    def forward(self, text_ids: Tensor) -> Tensor:
        return self.emb_txt(text_ids)


class Violet(nn.Module):
    """Violet with its pre-training heads and the configured fine-tuning heads.

    ``forward(mode=..., ...)`` modes. B = batch, F = frames, g = token grid side (7 at 224 px),
    N = 1 + g*g tokens per frame, L = text length, D = width, V = vocab_size. A video input is
    either ``video`` float ``[B, F, 3, S, S]`` (ImageNet-normalised) or ``video_tokens``
    ``[B, F, N, D]`` (the output of ``mode="video"``, to share one Swin pass between several
    calls); ``text_mask`` is 1 for real tokens, 0 for padding (all ones when omitted).

    - ``"text"``: ``text_ids``, ``text_mask`` ``[B, L]`` -> ``{"text_embeds": [B, L, D],
      "text_mask": [B, L]}`` (the BERT embeddings; the cross transformer runs in ``"score"``).
    - ``"video"``: ``video`` -> ``{"video_tokens": [B, F, N, D]}``.
    - ``"score"``: ``text`` = rows of ``"text"`` outputs (``Bt``), ``video`` = rows of ``"video"``
      outputs (``Bv``) -> ``{"scores": [Bt, Bv]}``, the VTM head's logit of the cross transformer
      for every (text, video) pair (no temperature); one cross pass per pair.
    - ``"qa"``: multiple choice with ``option_ids`` / ``option_mask`` ``[B, K, L]`` -> ``{"logits":
      [B, K]}`` (one cross pass per option, head ``fc_mc``); open-ended with ``text_ids`` /
      ``text_mask`` -> ``{"logits": [B, num_answers]}`` (head ``fc_oe``); plus a video input.
    - ``"classify"``: a video input, optional text (default the empty text ``[CLS] [SEP]``) ->
      ``{"logits": [B, num_classes]}`` (head ``fc_cls`` at the text [CLS]; ``num_classes``, 0
      without the head, is kept as an attribute for the Classification task's ``topk`` check).
    - ``"pretext"``: a video input, optional text (default ``[CLS] [SEP]``) -> ``{"mtm_logits":
      [B, L, V], "mvm_logits": [B, F, g, g, 8192]}`` from one cross pass (MVM on the patch
      positions only; the frame cls slots have no target).

    Sizes are configurable (tiny models for tests); the defaults are the release's.
    """

    def __init__(
        self,
        vocab_size: int = 30522,
        max_text_positions: int = 512,
        width: int = 768,
        cross_layers: int = 12,
        cross_heads: int = 12,
        cross_inner: int = 3072,
        dropout: float = 0.1,
        swin_patch: Sequence[int] = (2, 4, 4),
        swin_embed_dim: int = 96,
        swin_depths: Sequence[int] = (2, 2, 18, 2),
        swin_heads: Sequence[int] = (3, 6, 12, 24),
        swin_window: Sequence[int] = (8, 7, 7),
        swin_drop_path: float = 0.2,
        max_frames: int = 6,
        max_grid: int = 14,
        mvm_vocab_size: int = MVM_VOCAB_SIZE,
        multiple_choice: bool = False,
        num_answers: int = 0,
        num_classes: int = 0,
        cls_id: int = BERT_CLS_ID,
        sep_id: int = BERT_SEP_ID,
    ) -> None:
        super().__init__()
        for name, token in (("cls_id", cls_id), ("sep_id", sep_id)):
            if not 0 <= token < vocab_size:
                raise ValueError(f"{name}={token} lies outside the vocabulary of {vocab_size}")
        self.max_text_positions, self.num_classes = max_text_positions, num_classes
        self.register_buffer("empty_text", torch.tensor([[cls_id, sep_id]]), persistent=False)
        swin = SwinTransformer3D(
            tuple(swin_patch),
            swin_embed_dim,
            tuple(swin_depths),
            tuple(swin_heads),
            tuple(swin_window),
            drop_path_rate=swin_drop_path,
        )
        self.enc_img = VideoEncoder(swin, width, max_frames, max_grid)
        self.enc_txt = TextEncoder(vocab_size, max_text_positions, width, dropout)
        self.trsfr = BertEncoder(cross_layers, width, cross_heads, cross_inner, dropout)
        self.fc = mlp_head(width, 1, 0.1)
        self.fc_mtm = BertMLMHead(width, vocab_size)
        self.fc_mvm = mlp_head(width, mvm_vocab_size, 0.1)
        self.fc_mc = mlp_head(width, 1, 0.1) if multiple_choice else None
        self.fc_oe = mlp_head(width, num_answers, 0.5) if num_answers else None
        self.fc_cls = mlp_head(width, num_classes, 0.5) if num_classes else None
        for module in (self.enc_txt, self.trsfr, self.fc_mtm):
            module.apply(init_bert_weights)

    def fsdp_units(self) -> list[nn.Module]:
        """The modules FSDP shards one by one (and activation checkpointing recomputes): every
        Swin block and every cross-transformer layer."""
        return [*self.enc_img.swin.blocks(), *self.trsfr.layer]

    def forward(self, *, mode: str, **inputs) -> dict[str, Tensor]:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        return getattr(self, f"_{mode}")(**inputs)

    # --- modes -------------------------------------------------------------------------------

    def _text(self, text_ids: Tensor, text_mask: Tensor | None = None) -> dict[str, Tensor]:
        text_ids, text_mask = checked_text(text_ids, text_mask, self.max_text_positions)
        return {"text_embeds": self.enc_txt(text_ids), "text_mask": text_mask.long()}

    def _video(self, video: Tensor) -> dict[str, Tensor]:
        return {"video_tokens": self.enc_img(self._check_video(video))}

    def _score(self, text: Mapping[str, Tensor], video: Mapping[str, Tensor]) -> dict[str, Tensor]:
        for name, rows, keys in (
            ("text", text, ("text_embeds", "text_mask")),
            ("video", video, ("video_tokens",)),
        ):
            missing = [key for key in keys if key not in rows]
            if missing:
                raise KeyError(f"score: {name} rows lack {missing}; they have {sorted(rows)}")
        embeds, mask, tokens = text["text_embeds"], text["text_mask"].bool(), video["video_tokens"]
        num_texts, num_videos = embeds.shape[0], tokens.shape[0]
        pair_tokens = tokens[None].expand(num_texts, *tokens.shape).flatten(0, 1)
        pair_embeds = embeds[:, None].expand(-1, num_videos, -1, -1).flatten(0, 1)
        pair_mask = mask[:, None].expand(-1, num_videos, -1).flatten(0, 1)
        readout = self._readout(pair_tokens, pair_embeds, pair_mask)
        return {"scores": self.fc(readout).view(num_texts, num_videos)}

    def _qa(
        self,
        video: Tensor | None = None,
        video_tokens: Tensor | None = None,
        text_ids: Tensor | None = None,
        text_mask: Tensor | None = None,
        option_ids: Tensor | None = None,
        option_mask: Tensor | None = None,
    ) -> dict[str, Tensor]:
        tokens = self._video_input(video, video_tokens)
        if (option_ids is None) == (text_ids is None):
            raise ValueError(
                "qa takes option_ids [B, K, L] (multiple choice) or text_ids [B, L] "
                "(open-ended), exactly one of them"
            )
        if option_ids is not None:
            head = self._head("fc_mc", "multiple_choice=True")
            if option_ids.dim() != 3 or option_ids.shape[0] != tokens.shape[0]:
                raise ValueError(
                    f"option_ids must be [B, K, L] with B={tokens.shape[0]}, got "
                    f"{tuple(option_ids.shape)}"
                )
            batch, options, length = option_ids.shape
            flat_mask = None if option_mask is None else option_mask.reshape(-1, length)
            ids, mask = checked_text(
                option_ids.reshape(-1, length),
                flat_mask,
                self.max_text_positions,
                "option_ids",
                "option_mask",
            )
            tokens = tokens.repeat_interleave(options, dim=0)
            readout = self._readout(tokens, self.enc_txt(ids), mask)
            return {"logits": head(readout).view(batch, options)}
        head = self._head("fc_oe", "num_answers > 0")
        ids, mask = checked_text(text_ids, text_mask, self.max_text_positions)
        return {"logits": head(self._readout(tokens, self.enc_txt(ids), mask))}

    def _classify(
        self,
        video: Tensor | None = None,
        video_tokens: Tensor | None = None,
        text_ids: Tensor | None = None,
        text_mask: Tensor | None = None,
    ) -> dict[str, Tensor]:
        head = self._head("fc_cls", "num_classes > 0")
        tokens = self._video_input(video, video_tokens)
        ids, mask = self._text_or_empty(text_ids, text_mask, tokens.shape[0])
        return {"logits": head(self._readout(tokens, self.enc_txt(ids), mask))}

    def _pretext(
        self,
        video: Tensor | None = None,
        video_tokens: Tensor | None = None,
        text_ids: Tensor | None = None,
        text_mask: Tensor | None = None,
    ) -> dict[str, Tensor]:
        tokens = self._video_input(video, video_tokens)
        ids, mask = self._text_or_empty(text_ids, text_mask, tokens.shape[0])
        hidden = self._cross(tokens, self.enc_txt(ids), mask)
        batch, frames, per_frame, width = tokens.shape
        video_hidden = hidden[:, : frames * per_frame].view(batch, frames, per_frame, width)
        grid = grid_side(per_frame)
        patches = video_hidden[:, :, 1:].reshape(batch, frames, grid, grid, width)
        return {
            "mtm_logits": self.fc_mtm(hidden[:, frames * per_frame :]),
            "mvm_logits": self.fc_mvm(patches),
        }

    # --- shared pieces -----------------------------------------------------------------------

    def _cross(self, video_tokens: Tensor, text_embeds: Tensor, text_mask: Tensor) -> Tensor:
        """The cross transformer over ``[video tokens (all attended); text]`` ->
        ``[B, F*N + L, D]``."""
        video_flat = video_tokens.flatten(1, 2)
        video_mask = torch.ones(video_flat.shape[:2], dtype=torch.bool, device=video_flat.device)
        key_mask = torch.cat([video_mask, text_mask.bool()], dim=1)
        return self.trsfr(torch.cat([video_flat, text_embeds], dim=1), key_mask)

    def _readout(self, video_tokens: Tensor, text_embeds: Tensor, text_mask: Tensor) -> Tensor:
        """The cross transformer's output at the text [CLS] (index F*N), ``[B, D]``."""
        video_length = video_tokens.shape[1] * video_tokens.shape[2]
        return self._cross(video_tokens, text_embeds, text_mask)[:, video_length]

    def _head(self, name: str, setting: str) -> nn.Module:
        head = getattr(self, name)
        if head is None:
            raise ValueError(f"this Violet has no {name} head; build it with {setting}")
        return head

    def _video_input(self, video: Tensor | None, video_tokens: Tensor | None) -> Tensor:
        if (video is None) == (video_tokens is None):
            raise ValueError("give exactly one of video [B, F, 3, S, S] and video_tokens")
        if video is not None:
            return self.enc_img(self._check_video(video))
        if video_tokens.dim() != 4 or grid_side(video_tokens.shape[2]) is None:
            raise ValueError(
                f"video_tokens must be [B, F, 1 + g*g, D] as mode='video' returns them, got "
                f"{tuple(video_tokens.shape)}"
            )
        return video_tokens

    def _check_video(self, video: Tensor) -> Tensor:
        if video.dim() != 5 or video.shape[2] != 3 or video.shape[3] != video.shape[4]:
            raise ValueError(f"video must be [B, F, 3, S, S], got {tuple(video.shape)}")
        return video

    def _text_or_empty(
        self, text_ids: Tensor | None, text_mask: Tensor | None, batch: int
    ) -> tuple[Tensor, Tensor]:
        if text_ids is None:
            ids = self.empty_text.expand(batch, -1)
            return ids, torch.ones_like(ids, dtype=torch.bool)
        return checked_text(text_ids, text_mask, self.max_text_positions)
