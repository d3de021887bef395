"""ALPRO (Li et al., CVPR 2022): a TimeSformer video encoder and a BERT whose first layers encode
the text alone and whose last layers fuse ``[text; video]``.

Submodule names follow the release (salesforce/ALPRO ``src/modeling/alpro_models.py``,
``xbert.py``), so that ``state_dict()`` has the keys of ``alpro_pretrain.pt`` for the modules the
release has: ``visual_encoder.model.*`` (TimeSformer), ``text_encoder.bert.{embeddings,
encoder}.*`` and ``text_encoder.cls.*`` (HF ``BertForMaskedLM``; the MLM decoder is tied to the
word embeddings, as ``from_pretrained`` ties it), ``vision_proj``, ``text_proj``, ``temp``,
``itm_head``, ``mpm_head`` (PEM, when ``num_entities``) and the QA ``classifier`` (when
``num_answers``). ``temp`` holds one element where the release's is a scalar (FSDP2 shards no
0-d parameter; the loader reshapes it). The release's fusion layers are plain self-attention
layers over the concatenated sequence (``xbert.BertLayer`` sets ``has_cross_attention =
False``), so no layer has ``crossattention`` weights. Every computation runs through
:meth:`Alpro.forward` (FSDP2 gathers parameters in forward hooks).

The video is expected ImageNet-normalised (meltr's decoders); the model renormalises it to the
statistics the release normalises with (CLIP's mean and std).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from meltr.backbones.alpro.timesformer import TimeSformer, VisualEncoder, init_timesformer
from meltr.backbones.inputs import checked_text
from meltr.backbones.violet.bert import BertEmbeddings, BertEncoder, BertMLMHead, init_bert_weights
from meltr.data.transforms import IMAGENET_MEAN, IMAGENET_STD

MODES = ("video", "text", "temperature", "fusion", "mlm", "qa")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TEMPERATURE_RANGE = (0.001, 0.5)


def mlp_head(width: int, outputs: int) -> nn.Sequential:
    """The release's ``classifier`` / ``mpm_head``: Linear(width, 2 width) -> ReLU ->
    Linear(2 width, outputs) (state-dict keys ``0.*`` and ``2.*``)."""
    return nn.Sequential(nn.Linear(width, 2 * width), nn.ReLU(), nn.Linear(2 * width, outputs))


class BertTrunk(nn.Module):
    """``text_encoder.bert``: BERT embeddings and encoder layers, run in slices."""

    def __init__(self, vocab_size, max_positions, width, layers, heads, inner, dropout) -> None:
        super().__init__()
        self.embeddings = BertEmbeddings(vocab_size, max_positions, width, dropout)
        self.encoder = BertEncoder(layers, width, heads, inner, dropout)

    def run(self, x: Tensor, key_mask: Tensor, start: int, stop: int) -> Tensor:
        """Layers ``start .. stop - 1`` on ``x`` ``[B, N, D]`` (``key_mask`` bool ``[B, N]``)."""
        for layer in self.encoder.layer[start:stop]:
            x = layer(x, key_mask)
        return x


class TextEncoder(nn.Module):
    """``text_encoder``: HF ``BertForMaskedLM`` (``bert`` and the MLM head ``cls``, whose decoder
    weight is the word-embedding table)."""

    def __init__(self, vocab_size, max_positions, width, layers, heads, inner, dropout) -> None:
        super().__init__()
        self.bert = BertTrunk(vocab_size, max_positions, width, layers, heads, inner, dropout)
        self.cls = BertMLMHead(width, vocab_size)
        self.apply(init_bert_weights)
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight


class Alpro(nn.Module):
    """ALPRO with its pre-training heads and the configured fine-tuning heads.

    ``forward(mode=..., ...)`` modes. B = batch, T = frames, N = (S / patch)^2 patches, L = text
    length, D = width, P = projection size (256), V = vocab_size, E = ``num_entities``, C =
    ``num_answers``; ``text_mask`` is 1 for real tokens, 0 for padding (all ones when omitted).

    - ``"video"``: ``video`` float ``[B, T, 3, S, S]`` (ImageNet-normalised) -> ``{"video_embeds":
      [B, 1 + N, D]`` (TimeSformer tokens, patches averaged over frames), ``"video_feat": [B,
      P]}`` (L2-normalised ``vision_proj`` of the cls token).
    - ``"text"``: ``text_ids``, ``text_mask`` ``[B, L]`` -> ``{"text_embeds": [B, L, D]`` (the
      text-only layers ``0 .. fusion_layer - 1``), ``"text_feat": [B, P]}``.
    - ``"temperature"``: -> ``{"temperature": scalar}``, ``temp`` clamped to [0.001, 0.5] (the
      gradient is that of ``temp`` itself: the release clamps the parameter in place instead).
    - ``"fusion"``: ``text_embeds``, ``text_mask``, ``video_embeds`` (rows of the modes above),
      optional ``region`` bool ``[B, g, g]`` (g * g = N), ``answers`` (bool) -> ``{"itm_logits":
      [B, 2]}`` from the fusion layers over ``[text; video]`` at the text [CLS]; with
      ``region`` also ``"entity_logits": [B, E]`` (``mpm_head`` on the mean fused patch token
      inside each region); with ``answers`` also ``"answer_logits": [B, C]`` (``classifier``
      at the text [CLS]).
    - ``"mlm"``: ``mlm_ids``, ``text_mask``, ``video_embeds`` -> ``{"mlm_logits": [B, L, V]}``: the
      masked text through every layer with the video, the MLM head on the text positions.
    - ``"qa"``: ``video``, ``text_ids``, ``text_mask`` -> ``{"logits": [B, C]}``.

    Sizes are configurable (tiny models for tests); the defaults are the release's (MSVD-QA: 16
    frames of 224 px).
    """

    def __init__(
        self,
        vocab_size: int = 30522,
        max_text_positions: int = 512,
        width: int = 768,
        text_layers: int = 12,
        fusion_layer: int = 6,
        text_heads: int = 12,
        text_inner: int = 3072,
        dropout: float = 0.1,
        image_size: int = 224,
        patch_size: int = 16,
        num_frames: int = 16,
        video_depth: int = 12,
        video_heads: int = 12,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.1,
        proj_dim: int = 256,
        temperature: float = 0.07,
        num_entities: int = 0,
        num_answers: int = 0,
    ) -> None:
        super().__init__()
        if not 0 < fusion_layer < text_layers:
            raise ValueError(
                f"fusion_layer {fusion_layer} must leave text-only and fusion layers among "
                f"the {text_layers} text layers"
            )
        self.fusion_layer, self.max_text_positions = fusion_layer, max_text_positions
        shift = [(m - c) / s for m, c, s in zip(IMAGENET_MEAN, CLIP_MEAN, CLIP_STD, strict=True)]
        scale = [i / s for i, s in zip(IMAGENET_STD, CLIP_STD, strict=True)]
        self.register_buffer("input_scale", torch.tensor(scale).view(3, 1, 1), persistent=False)
        self.register_buffer("input_shift", torch.tensor(shift).view(3, 1, 1), persistent=False)
        timesformer = TimeSformer(
            image_size,
            patch_size,
            num_frames,
            width,
            video_depth,
            video_heads,
            mlp_ratio,
            drop_path,
        )
        init_timesformer(timesformer)
        self.visual_encoder = VisualEncoder(timesformer)
        self.text_encoder = TextEncoder(
            vocab_size, max_text_positions, width, text_layers, text_heads, text_inner, dropout
        )
        self.vision_proj = nn.Linear(width, proj_dim)
        self.text_proj = nn.Linear(width, proj_dim)
        # One element rather than the release's scalar: FSDP2 shards no 0-d parameter.
        self.temp = nn.Parameter(torch.full((1,), float(temperature)))
        self.itm_head = nn.Linear(width, 2)
        self.mpm_head = mlp_head(width, num_entities) if num_entities else None
        self.classifier = mlp_head(width, num_answers) if num_answers else None

    def fsdp_units(self) -> list[nn.Module]:
        """The modules FSDP shards one by one (and activation checkpointing recomputes): every
        TimeSformer block and every BERT layer."""
        return [*self.visual_encoder.model.blocks, *self.text_encoder.bert.encoder.layer]

    def forward(self, *, mode: str, **inputs) -> dict[str, Tensor]:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        return getattr(self, f"_{mode}")(**inputs)

    # --- modes -------------------------------------------------------------------------------

    def _video(self, video: Tensor) -> dict[str, Tensor]:
        if video.dim() != 5 or video.shape[2] != 3:
            raise ValueError(f"video must be [B, T, 3, S, S], got {tuple(video.shape)}")
        embeds = self.visual_encoder(video * self.input_scale + self.input_shift)
        return {"video_embeds": embeds, "video_feat": F.normalize(self.vision_proj(embeds[:, 0]))}

    def _text(self, text_ids: Tensor, text_mask: Tensor | None = None) -> dict[str, Tensor]:
        ids, mask = checked_text(text_ids, text_mask, self.max_text_positions)
        embeds = self._text_layers(ids, mask)
        return {"text_embeds": embeds, "text_feat": F.normalize(self.text_proj(embeds[:, 0]))}

    def _temperature(self) -> dict[str, Tensor]:
        clamped = self.temp.clamp(*TEMPERATURE_RANGE)
        return {"temperature": (self.temp + (clamped - self.temp).detach()).reshape(())}

    def _fusion(
        self,
        text_embeds: Tensor,
        text_mask: Tensor,
        video_embeds: Tensor,
        region: Tensor | None = None,
        answers: bool = False,
    ) -> dict[str, Tensor]:
        hidden = self._fuse(text_embeds, text_mask, video_embeds)
        out = {"itm_logits": self.itm_head(hidden[:, 0])}
        if region is not None:
            head = self._head("mpm_head", "num_entities > 0")
            patches = hidden[:, text_embeds.shape[1] + 1 :]
            weights = self._region_weights(region, patches.shape[1]).to(patches.dtype)
            out["entity_logits"] = head((weights[:, :, None] * patches).sum(dim=1))
        if answers:
            out["answer_logits"] = self._head("classifier", "num_answers > 0")(hidden[:, 0])
        return out

    def _mlm(self, mlm_ids: Tensor, text_mask: Tensor, video_embeds: Tensor) -> dict[str, Tensor]:
        ids, mask = checked_text(mlm_ids, text_mask, self.max_text_positions, "mlm_ids")
        hidden = self._fuse(self._text_layers(ids, mask), mask, video_embeds)
        return {"mlm_logits": self.text_encoder.cls(hidden[:, : ids.shape[1]])}

    def _qa(self, video: Tensor, text_ids: Tensor, text_mask: Tensor | None = None) -> dict:
        ids, mask = checked_text(text_ids, text_mask, self.max_text_positions)
        video_embeds = self._video(video)["video_embeds"]
        fused = self._fusion(self._text_layers(ids, mask), mask, video_embeds, answers=True)
        return {"logits": fused["answer_logits"]}

    # --- shared pieces -----------------------------------------------------------------------

    def _text_layers(self, ids: Tensor, mask: Tensor) -> Tensor:
        bert = self.text_encoder.bert
        return bert.run(bert.embeddings(ids), mask, 0, self.fusion_layer)

    def _fuse(self, text_embeds: Tensor, text_mask: Tensor, video_embeds: Tensor) -> Tensor:
        """The fusion layers over ``[text; video]`` (every video token attended) -> ``[B, L + 1
        + N, D]``."""
        if (
            text_embeds.shape[0] != video_embeds.shape[0]
            or text_mask.shape != text_embeds.shape[:2]
        ):
            raise ValueError(
                f"fusion of text {tuple(text_embeds.shape)} (mask {tuple(text_mask.shape)}) "
                f"and video {tuple(video_embeds.shape)}: batch or length disagree"
            )
        video_mask = text_mask.new_ones(video_embeds.shape[:2], dtype=torch.bool)
        key_mask = torch.cat([text_mask.bool(), video_mask], dim=1)
        bert = self.text_encoder.bert
        layers = len(bert.encoder.layer)
        return bert.run(
            torch.cat([text_embeds, video_embeds], dim=1), key_mask, self.fusion_layer, layers
        )

    @staticmethod
    def _region_weights(region: Tensor, patches: int) -> Tensor:
        """``region`` bool ``[B, g, g]`` -> averaging weights ``[B, g * g]`` over its cells."""
        flat = region.reshape(region.shape[0], -1).to(torch.float32)
        if flat.shape[1] != patches:
            raise ValueError(
                f"region {tuple(region.shape)} has {flat.shape[1]} cells; the video has "
                f"{patches} patch tokens"
            )
        counts = flat.sum(dim=1, keepdim=True)
        if (counts == 0).any():
            raise ValueError("region: every item needs at least one cell set")
        return flat / counts

    def _head(self, name: str, setting: str) -> nn.Module:
        head = getattr(self, name)
        if head is None:
            raise ValueError(f"this Alpro has no {name}; build it with {setting}")
        return head
