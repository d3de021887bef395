"""UniVL (Luo et al., 2020): text, video, cross and decoder transformers over S3D features.

Submodule names follow the official release (microsoft/UniVL, MELTR's ``univl/``), so that
``UniVL().state_dict()`` has exactly the keys of ``univl.pretrained.bin`` (444 tensors at the
release sizes, tied weights listed under each of their names). Every computation runs through
:meth:`UniVL.forward` with a ``mode=`` keyword (FSDP2 gathers parameters in forward hooks).

Tied parameters (one tensor, several state-dict names), as in the release:

- the BERT word embeddings = the decoder's word embeddings = the weight of the text MLM head
  (``cls``) = the weight of the decoder's token head;
- the BERT position embeddings = the decoder's position embeddings;
- the visual input projection (``visual.embeddings.word_embeddings.weight``, ``[D, F]``) = the
  frame-prediction head's weight (``cls_visual.predictions.weight``).

Two heads the release's pretraining does not have, built only when asked for (a loaded
``univl.pretrained.bin`` reports them missing): ``feature_projection`` (``feature_dim`` set, for
input features that are not ``video_dim``-dimensional, e.g. CMU-MOSI's 20-d Facet features) and
``sentiment_dense`` (``sentiment_head=True``, the regression head of multimodal sentiment
analysis).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from meltr.backbones.univl.beam import beam_search

LAYER_NORM_EPS = 1e-12
# The release's additive attention mask: masked keys get this score before the softmax.
MASKED_SCORE = -10000.0
TEXT_TOKEN_TYPE = 0
VIDEO_TOKEN_TYPE = 1


def additive_key_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """``mask`` ``[B, K]`` (1 = may be attended) -> additive scores ``[B, 1, 1, K]``."""
    return (1.0 - mask[:, None, None, :].to(dtype)) * MASKED_SCORE


class Attention(nn.Module):
    """Multi-head attention of ``queries`` over ``keys_values`` with an additive mask."""

    def __init__(self, hidden_size: int, heads: int, dropout: float) -> None:
        super().__init__()
        if hidden_size % heads != 0:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by heads {heads}")
        self.heads = heads
        self.dropout = dropout
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)

    def _split(self, x: Tensor) -> Tensor:
        batch, length, width = x.shape
        return x.view(batch, length, self.heads, width // self.heads).transpose(1, 2)

    def forward(self, queries: Tensor, keys_values: Tensor, mask: Tensor) -> Tensor:
        """``queries`` ``[B, Q, D]``, ``keys_values`` ``[B, K, D]``, ``mask`` additive,
        broadcastable to ``[B, heads, Q, K]`` -> ``[B, Q, D]``."""
        out = F.scaled_dot_product_attention(
            self._split(self.query(queries)),
            self._split(self.key(keys_values)),
            self._split(self.value(keys_values)),
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return out.transpose(1, 2).flatten(2)


class ResidualOutput(nn.Module):
    """``LayerNorm(residual + dropout(dense(x)))`` (BERT's post-norm sublayer output)."""

    def __init__(self, in_features: int, hidden_size: int, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(residual + self.dropout(self.dense(x)))


class Intermediate(nn.Module):
    """``gelu(dense(x))`` (the erf form)."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, intermediate_size)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.dense(x))


class EncoderSelfAttention(nn.Module):
    """Self-attention sublayer; the release names its parts ``self`` and ``output``."""

    def __init__(self, hidden_size: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.self = Attention(hidden_size, heads, dropout)
        self.output = ResidualOutput(hidden_size, hidden_size, dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.output(self.self(x, x, mask), x)


class EncoderBlock(nn.Module):
    """BERT layer: self-attention, then the feed-forward sublayer, both post-norm."""

    def __init__(self, hidden_size: int, heads: int, intermediate_size: int, dropout: float):
        super().__init__()
        self.attention = EncoderSelfAttention(hidden_size, heads, dropout)
        self.intermediate = Intermediate(hidden_size, intermediate_size)
        self.output = ResidualOutput(intermediate_size, hidden_size, dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """``x`` ``[B, N, D]``, ``mask`` additive ``[B, 1, 1, N]``."""
        attended = self.attention(x, mask)
        return self.output(self.intermediate(attended), attended)


class Encoder(nn.Module):
    def __init__(
        self, layers: int, hidden_size: int, heads: int, intermediate_size: int, dropout: float
    ) -> None:
        super().__init__()
        self.layer = nn.ModuleList(
            EncoderBlock(hidden_size, heads, intermediate_size, dropout) for _ in range(layers)
        )

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """``x`` ``[B, N, D]``, ``mask`` ``[B, N]`` (1 = real) -> the last layer's ``[B, N, D]``."""
        scores = additive_key_mask(mask, x.dtype)
        for block in self.layer:
            x = block(x, scores)
        return x


class Pooler(nn.Module):
    """``tanh(dense(h[:, 0]))``."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden: Tensor) -> Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


class TextEmbeddings(nn.Module):
    """``LayerNorm(word + position + token type 0)``, then dropout."""

    def __init__(self, vocab_size: int, max_positions: int, hidden_size: int, dropout: float):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden_size)
        self.position_embeddings = nn.Embedding(max_positions, hidden_size)
        self.token_type_embeddings = nn.Embedding(2, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(dropout)

    def forward(self, ids: Tensor) -> Tensor:
        positions = self.position_embeddings.weight[: ids.shape[1]]
        token_type = self.token_type_embeddings.weight[TEXT_TOKEN_TYPE]
        return self.dropout(self.LayerNorm(self.word_embeddings(ids) + positions + token_type))


class VisualEmbeddings(nn.Module):
    """``LayerNorm(Linear(features) + position)``, then dropout (no CLS token)."""

    def __init__(self, video_dim: int, max_positions: int, hidden_size: int, dropout: float):
        super().__init__()
        self.word_embeddings = nn.Linear(video_dim, hidden_size)
        self.position_embeddings = nn.Embedding(max_positions, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(dropout)

    def forward(self, features: Tensor) -> Tensor:
        positions = self.position_embeddings.weight[: features.shape[1]]
        return self.dropout(self.LayerNorm(self.word_embeddings(features) + positions))


class CrossEmbeddings(nn.Module):
    """``LayerNorm(h + position + token type)`` over the concatenated sequence, then dropout."""

    def __init__(self, max_positions: int, hidden_size: int, dropout: float) -> None:
        super().__init__()
        self.position_embeddings = nn.Embedding(max_positions, hidden_size)
        self.token_type_embeddings = nn.Embedding(2, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden: Tensor, token_types: Tensor) -> Tensor:
        positions = self.position_embeddings.weight[: hidden.shape[1]]
        embedded = hidden + positions + self.token_type_embeddings(token_types)
        return self.dropout(self.LayerNorm(embedded))


class DecoderEmbeddings(nn.Module):
    """``LayerNorm(word + position)``, then dropout, with both tables shared with BERT's."""

    def __init__(
        self, word_weight: nn.Parameter, position_weight: nn.Parameter, dropout: float
    ) -> None:
        super().__init__()
        hidden_size = word_weight.shape[1]
        self.word_embeddings = nn.Embedding(*word_weight.shape)
        self.word_embeddings.weight = word_weight
        self.position_embeddings = nn.Embedding(*position_weight.shape)
        self.position_embeddings.weight = position_weight
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=LAYER_NORM_EPS)
        self.dropout = nn.Dropout(dropout)

    def forward(self, ids: Tensor) -> Tensor:
        positions = self.position_embeddings.weight[: ids.shape[1]]
        return self.dropout(self.LayerNorm(self.word_embeddings(ids) + positions))


class EncoderStack(nn.Module):
    """One of the release's ``bert`` (text), ``visual`` and ``cross`` modules: ``embeddings``,
    ``encoder`` and a ``pooler`` that UniVL never uses (kept for the checkpoint's keys)."""

    def __init__(
        self,
        embeddings: nn.Module,
        layers: int,
        hidden_size: int,
        heads: int,
        intermediate_size: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.embeddings = embeddings
        self.encoder = Encoder(layers, hidden_size, heads, intermediate_size, dropout)
        self.pooler = Pooler(hidden_size)


class DecoderAttention(nn.Module):
    """Attention sublayer of the decoder; the release names its parts ``att`` and ``output``."""

    def __init__(self, hidden_size: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.att = Attention(hidden_size, heads, dropout)
        self.output = ResidualOutput(hidden_size, hidden_size, dropout)

    def forward(self, queries: Tensor, keys_values: Tensor, mask: Tensor) -> Tensor:
        return self.output(self.att(queries, keys_values, mask), queries)


class DecoderBlock(nn.Module):
    """Causal self-attention, attention over the cross-encoder output, feed-forward."""

    def __init__(self, hidden_size: int, heads: int, intermediate_size: int, dropout: float):
        super().__init__()
        self.slf_attn = DecoderAttention(hidden_size, heads, dropout)
        self.enc_attn = DecoderAttention(hidden_size, heads, dropout)
        self.intermediate = Intermediate(hidden_size, intermediate_size)
        self.output = ResidualOutput(intermediate_size, hidden_size, dropout)

    def forward(self, x: Tensor, memory: Tensor, self_mask: Tensor, memory_mask: Tensor) -> Tensor:
        """``x`` ``[B, Ld, D]``, ``memory`` ``[B, N, D]``; additive masks ``[B, 1, Ld, Ld]`` and
        ``[B, 1, 1, N]``."""
        x = self.slf_attn(x, x, self_mask)
        x = self.enc_attn(x, memory, memory_mask)
        return self.output(self.intermediate(x), x)


class DecoderStack(nn.Module):
    def __init__(
        self, layers: int, hidden_size: int, heads: int, intermediate_size: int, dropout: float
    ) -> None:
        super().__init__()
        self.layer = nn.ModuleList(
            DecoderBlock(hidden_size, heads, intermediate_size, dropout) for _ in range(layers)
        )


class HeadTransform(nn.Module):
    """``LayerNorm(gelu(dense(h)))``."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=LAYER_NORM_EPS)

    def forward(self, x: Tensor) -> Tensor:
        return self.LayerNorm(F.gelu(self.dense(x)))


class TokenPredictions(nn.Module):
    """``transform(h) @ word_embeddings.T + bias`` (the decoder weight is tied)."""

    def __init__(self, word_weight: nn.Parameter) -> None:
        super().__init__()
        vocab_size, hidden_size = word_weight.shape
        self.transform = HeadTransform(hidden_size)
        self.decoder = nn.Linear(hidden_size, vocab_size, bias=False)
        self.decoder.weight = word_weight
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, hidden: Tensor) -> Tensor:
        return self.decoder(self.transform(hidden)) + self.bias


class TokenHead(nn.Module):
    """The release's ``BertOnlyMLMHead``: a ``predictions`` wrapper."""

    def __init__(self, word_weight: nn.Parameter) -> None:
        super().__init__()
        self.predictions = TokenPredictions(word_weight)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.predictions(hidden)


class FramePredictions(nn.Module):
    """``transform(h) @ W + bias`` with ``W`` the visual input projection ``[D, F]`` (tied)."""

    def __init__(self, projection_weight: nn.Parameter) -> None:
        super().__init__()
        hidden_size, video_dim = projection_weight.shape
        self.transform = HeadTransform(hidden_size)
        self.weight = projection_weight
        self.bias = nn.Parameter(torch.zeros(video_dim))

    def forward(self, hidden: Tensor) -> Tensor:
        return self.transform(hidden) @ self.weight + self.bias


class FrameHead(nn.Module):
    """The release's ``VisualOnlyMFMHead``: a ``predictions`` wrapper."""

    def __init__(self, projection_weight: nn.Parameter) -> None:
        super().__init__()
        self.predictions = FramePredictions(projection_weight)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.predictions(hidden)


class DecoderClassifier(nn.Module):
    def __init__(self, word_weight: nn.Parameter) -> None:
        super().__init__()
        self.cls = TokenHead(word_weight)


class CaptionDecoder(nn.Module):
    """The release's ``decoder``: embeddings (tied), ``decoder.layer`` blocks, token head."""

    def __init__(
        self,
        word_weight: nn.Parameter,
        position_weight: nn.Parameter,
        layers: int,
        heads: int,
        intermediate_size: int,
        dropout: float,
    ) -> None:
        super().__init__()
        hidden_size = word_weight.shape[1]
        self.embeddings = DecoderEmbeddings(word_weight, position_weight, dropout)
        self.decoder = DecoderStack(layers, hidden_size, heads, intermediate_size, dropout)
        self.classifier = DecoderClassifier(word_weight)


class VideoNormalizer(nn.Module):
    """The release's ``normalize_video``: LayerNorm over the raw feature dimension."""

    def __init__(self, video_dim: int) -> None:
        super().__init__()
        self.visual_norm2d = nn.LayerNorm(video_dim, eps=LAYER_NORM_EPS)

    def forward(self, features: Tensor) -> Tensor:
        return self.visual_norm2d(features)


# Per mode: (required keyword inputs, optional keyword inputs).
MODE_INPUTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "text": (("text_ids", "text_mask"), ()),
    "video": (("features", "feature_mask"), ()),
    "normalize": (("features",), ()),
    "cross": (("text", "video"), ("mlm_positions", "mfm_positions")),
    "score": (("text", "video"), ()),
    "regress": (("text", "video"), ()),
    "decode": (("cross", "decoder_ids", "decoder_mask"), ()),
    "generate": (
        ("features", "feature_mask", "bos_id", "eos_id", "pad_id", "max_length"),
        ("text_ids", "text_mask", "beam_size"),
    ),
}
MODES = tuple(MODE_INPUTS)


class UniVL(nn.Module):
    """UniVL with every head of the release (text MLM, frame prediction, similarity, decoder).

    ``forward(mode=..., **inputs) -> dict`` (B = batch, L = text length, T = frames, D =
    ``hidden_size``, F = ``video_dim``, V = ``vocab_size``; masks are 1 for real positions):

    - ``"text"``: ``text_ids``, ``text_mask`` ``[B, L]`` -> ``text_hidden`` ``[B, L, D]`` (the
      text encoder's last layer), ``text_mask``, and ``text_feat`` ``[B, D]``: the mean of
      ``text_hidden`` over real positions except position 0 ([CLS]; [SEP] included),
      L2-normalised (the release's joint-loss and dual-retrieval feature).
    - ``"video"``: ``features`` ``[B, T, F_in]`` (raw S3D features, zero-padded; ``F_in`` is
      ``feature_dim`` when set, else ``F``), ``feature_mask`` ``[B, T]`` -> ``video_hidden``
      ``[B, T, D]``, ``feature_mask``, and ``video_feat`` ``[B, D]``: the L2-normalised mean of
      ``video_hidden`` over real frames. The raw features go through ``feature_projection``
      (``feature_dim`` set: Linear ``F_in -> F``) and ``normalize_video`` (LayerNorm) first.
    - ``"normalize"``: ``features`` -> ``normalized_features`` ``[B, T, F]`` (the clean targets
      of masked frame modelling: projected when ``feature_dim`` is set, then LayerNormed).
    - ``"cross"``: ``text`` (a ``"text"`` output, or any dict with ``text_hidden``/``text_mask``),
      ``video`` (likewise ``video_hidden``/``feature_mask``), same B -> ``cross_hidden``
      ``[B, L+T, D]``, ``cross_mask`` ``[B, L+T]``, ``pooled`` ``[B, D]``; with
      ``mlm_positions`` (bool ``[B, L]``) also ``mlm_logits`` ``[n, V]`` (the ``cls`` head on
      those text positions, in row-major order), with ``mfm_positions`` (bool ``[B, T]``) also
      ``mfm_scores`` ``[n, F]`` (the ``cls_visual`` head on those frames).
    - ``"score"``: ``text`` rows ``[Bt]``, ``video`` rows ``[Bv]`` (as for ``"cross"``) ->
      ``scores`` ``[Bt, Bv]``: ``similarity_dense(pooled cross(text_i, video_j))`` for every
      pair, computed ``score_pairs_per_pass`` pairs at a time.
    - ``"regress"`` (``sentiment_head=True``): ``text``, ``video`` (as for ``"cross"``, same B)
      -> ``prediction`` ``[B]``: ``sentiment_dense(pooled cross(text_i, video_i))``, the
      sentiment score of each pair.
    - ``"decode"``: ``cross`` (a ``"cross"`` output), ``decoder_ids``, ``decoder_mask``
      ``[B, Ld]`` -> ``logits`` ``[B, Ld, V]`` (teacher forcing; causal self-attention over
      real decoder positions, attention over the real cross positions).
    - ``"generate"``: ``features``, ``feature_mask``, optional ``text_ids``/``text_mask`` (the
      transcript; without them the text is ``[bos_id, eos_id]``, the release's empty text
      ``[CLS] [SEP]``), ``bos_id``, ``eos_id``, ``pad_id``, ``max_length``, ``beam_size``
      (default 5) -> ``tokens`` int64 ``[B, max_length]`` (generated ids after BOS, the EOS
      included when one was generated, then ``pad_id``) and ``scores`` ``[B]`` (their summed
      log-probabilities). Beam search of :func:`meltr.backbones.univl.beam.beam_search`.
    """

    def __init__(
        self,
        vocab_size: int = 30522,
        hidden_size: int = 768,
        heads: int = 12,
        intermediate_size: int = 3072,
        text_layers: int = 12,
        visual_layers: int = 6,
        cross_layers: int = 2,
        decoder_layers: int = 3,
        max_text_positions: int = 512,
        max_frame_positions: int = 512,
        max_cross_positions: int = 1024,
        video_dim: int = 1024,
        dropout: float = 0.1,
        initializer_range: float = 0.02,
        score_pairs_per_pass: int = 1024,
        feature_dim: int | None = None,
        sentiment_head: bool = False,
    ) -> None:
        super().__init__()
        if score_pairs_per_pass < 1:
            raise ValueError(f"score_pairs_per_pass must be >= 1, got {score_pairs_per_pass}")
        if feature_dim is not None and (not isinstance(feature_dim, int) or feature_dim < 1):
            raise ValueError(f"feature_dim must be None or an integer >= 1, got {feature_dim!r}")
        self.vocab_size = vocab_size
        self.video_dim = video_dim
        self.feature_dim = video_dim if feature_dim is None else feature_dim
        self.initializer_range = initializer_range
        self.score_pairs_per_pass = score_pairs_per_pass
        sizes = (hidden_size, heads, intermediate_size, dropout)
        text = TextEmbeddings(vocab_size, max_text_positions, hidden_size, dropout)
        visual = VisualEmbeddings(video_dim, max_frame_positions, hidden_size, dropout)
        cross = CrossEmbeddings(max_cross_positions, hidden_size, dropout)
        self.bert = EncoderStack(text, text_layers, *sizes)
        self.visual = EncoderStack(visual, visual_layers, *sizes)
        self.cross = EncoderStack(cross, cross_layers, *sizes)
        word_weight = self.bert.embeddings.word_embeddings.weight
        position_weight = self.bert.embeddings.position_embeddings.weight
        self.decoder = CaptionDecoder(
            word_weight, position_weight, decoder_layers, heads, intermediate_size, dropout
        )
        self.cls = TokenHead(word_weight)
        self.cls_visual = FrameHead(self.visual.embeddings.word_embeddings.weight)
        self.similarity_dense = nn.Linear(hidden_size, 1)
        self.normalize_video = VideoNormalizer(video_dim)
        if feature_dim is not None:
            self.feature_projection = nn.Linear(feature_dim, video_dim)
        if sentiment_head:
            self.sentiment_dense = nn.Linear(hidden_size, 1)
        self.reset_parameters()

    @property
    def max_text_length(self) -> int:
        return self.bert.embeddings.position_embeddings.num_embeddings

    @property
    def max_frames(self) -> int:
        return self.visual.embeddings.position_embeddings.num_embeddings

    @property
    def max_cross_length(self) -> int:
        return self.cross.embeddings.position_embeddings.num_embeddings

    def reset_parameters(self) -> None:
        """The release's initialisation: N(0, initializer_range) for linear and embedding
        weights, zero linear biases and head biases, unit LayerNorms."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=self.initializer_range)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, (TokenPredictions, FramePredictions)):
                nn.init.zeros_(module.bias)

    def fsdp_units(self) -> list[nn.Module]:
        """The modules FSDP shards one by one (and activation checkpointing recomputes): every
        layer of the text, visual and cross encoders and of the decoder."""
        return [
            *self.bert.encoder.layer,
            *self.visual.encoder.layer,
            *self.cross.encoder.layer,
            *self.decoder.decoder.layer,
        ]

    def forward(self, *, mode: str, **inputs: object) -> dict[str, Tensor]:
        if mode not in MODE_INPUTS:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        required, optional = MODE_INPUTS[mode]
        missing = [name for name in required if inputs.get(name) is None]
        unknown = sorted(set(inputs) - set(required) - set(optional))
        if missing or unknown:
            raise TypeError(
                f"UniVL mode={mode!r} takes {list(required)} and optionally {list(optional)}; "
                + (f"missing {missing}" if missing else "")
                + ("; " if missing and unknown else "")
                + (f"unexpected {unknown}" if unknown else "")
            )
        return getattr(self, f"_{mode}")(**inputs)

    # ----- encoders -----

    def _text(self, text_ids: Tensor, text_mask: Tensor) -> dict[str, Tensor]:
        _check_pair("text_ids", text_ids, "text_mask", text_mask)
        if text_ids.shape[1] > self.max_text_length:
            raise ValueError(
                f"text_ids has {text_ids.shape[1]} positions, the text encoder at most "
                f"{self.max_text_length}"
            )
        hidden = self.bert.encoder(self.bert.embeddings(text_ids), text_mask)
        pooled_mask = text_mask.to(hidden.dtype).clone()
        pooled_mask[:, 0] = 0.0  # the release leaves [CLS] out of the mean
        return {
            "text_hidden": hidden,
            "text_mask": text_mask,
            "text_feat": F.normalize(_masked_mean(hidden, pooled_mask), dim=-1),
        }

    def _check_features(self, features: Tensor) -> None:
        if features.dim() != 3 or features.shape[2] != self.feature_dim:
            raise ValueError(
                f"features must be [B, T, {self.feature_dim}], got {tuple(features.shape)}"
            )
        if features.shape[1] > self.max_frames:
            raise ValueError(
                f"features has {features.shape[1]} frames, the visual encoder at most "
                f"{self.max_frames}"
            )

    def _normalized(self, features: Tensor) -> Tensor:
        self._check_features(features)
        features = features.to(self.normalize_video.visual_norm2d.weight.dtype)
        if hasattr(self, "feature_projection"):
            features = self.feature_projection(features)
        return self.normalize_video(features)

    def _normalize(self, features: Tensor) -> dict[str, Tensor]:
        return {"normalized_features": self._normalized(features)}

    def _video(self, features: Tensor, feature_mask: Tensor) -> dict[str, Tensor]:
        normalized = self._normalized(features)
        _check_pair("features", features[..., 0], "feature_mask", feature_mask)
        hidden = self.visual.encoder(self.visual.embeddings(normalized), feature_mask)
        mask = feature_mask.to(hidden.dtype)
        return {
            "video_hidden": hidden,
            "feature_mask": feature_mask,
            "video_feat": F.normalize(_masked_mean(hidden, mask), dim=-1),
        }

    def _cross_pass(
        self, text_hidden: Tensor, text_mask: Tensor, video_hidden: Tensor, feature_mask: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(cross_hidden, cross_mask, pooled) of aligned rows of text and video."""
        length = text_hidden.shape[1] + video_hidden.shape[1]
        if length > self.max_cross_length:
            raise ValueError(
                f"text ({text_hidden.shape[1]}) + video ({video_hidden.shape[1]}) positions "
                f"exceed the cross encoder's {self.max_cross_length}"
            )
        hidden = torch.cat([text_hidden, video_hidden], dim=1)
        mask = torch.cat([text_mask, feature_mask], dim=1)
        types = torch.cat(
            [
                torch.full_like(text_mask, TEXT_TOKEN_TYPE, dtype=torch.long),
                torch.full_like(feature_mask, VIDEO_TOKEN_TYPE, dtype=torch.long),
            ],
            dim=1,
        )
        cross_hidden = self.cross.encoder(self.cross.embeddings(hidden, types), mask)
        return cross_hidden, mask, self.cross.pooler(cross_hidden)

    def _cross(
        self,
        text: Mapping[str, Tensor],
        video: Mapping[str, Tensor],
        mlm_positions: Tensor | None = None,
        mfm_positions: Tensor | None = None,
    ) -> dict[str, Tensor]:
        text_hidden, text_mask, video_hidden, feature_mask = _paired_rows(text, video, "cross")
        cross_hidden, cross_mask, pooled = self._cross_pass(
            text_hidden, text_mask, video_hidden, feature_mask
        )
        out = {"cross_hidden": cross_hidden, "cross_mask": cross_mask, "pooled": pooled}
        text_length = text_hidden.shape[1]
        if mlm_positions is not None:
            _check_pair("mlm_positions", mlm_positions, "text_mask", text_mask)
            out["mlm_logits"] = self.cls(cross_hidden[:, :text_length][mlm_positions.bool()])
        if mfm_positions is not None:
            _check_pair("mfm_positions", mfm_positions, "feature_mask", feature_mask)
            out["mfm_scores"] = self.cls_visual(cross_hidden[:, text_length:][mfm_positions.bool()])
        return out

    def _score(self, text: Mapping[str, Tensor], video: Mapping[str, Tensor]) -> dict[str, Tensor]:
        text_hidden, text_mask = _rows(text, "text", ("text_hidden", "text_mask"))
        video_hidden, feature_mask = _rows(video, "video", ("video_hidden", "feature_mask"))
        num_videos = video_hidden.shape[0]
        rows_per_pass = max(1, self.score_pairs_per_pass // max(num_videos, 1))
        blocks = []
        for start in range(0, text_hidden.shape[0], rows_per_pass):
            rows = slice(start, start + rows_per_pass)
            count = text_hidden[rows].shape[0]
            *_, pooled = self._cross_pass(
                text_hidden[rows].repeat_interleave(num_videos, dim=0),
                text_mask[rows].repeat_interleave(num_videos, dim=0),
                video_hidden.repeat(count, 1, 1),
                feature_mask.repeat(count, 1),
            )
            blocks.append(self.similarity_dense(pooled).view(count, num_videos))
        return {"scores": torch.cat(blocks)}

    def _regress(
        self, text: Mapping[str, Tensor], video: Mapping[str, Tensor]
    ) -> dict[str, Tensor]:
        if not hasattr(self, "sentiment_dense"):
            raise ValueError(
                "mode='regress' needs the regression head: build UniVL(sentiment_head=True)"
            )
        *_, pooled = self._cross_pass(*_paired_rows(text, video, "regress"))
        return {"prediction": self.sentiment_dense(pooled).squeeze(-1)}

    # ----- decoder -----

    def _decoder_logits(
        self, cross_hidden: Tensor, cross_mask: Tensor, decoder_ids: Tensor, decoder_mask: Tensor
    ) -> Tensor:
        length = decoder_ids.shape[1]
        max_length = self.decoder.embeddings.position_embeddings.num_embeddings
        if length > max_length:
            raise ValueError(
                f"decoder_ids has {length} positions, the decoder at most {max_length}"
            )
        x = self.decoder.embeddings(decoder_ids)
        future = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
        blocked = future[None, None] | ~decoder_mask.bool()[:, None, None, :]
        self_mask = blocked.to(x.dtype) * MASKED_SCORE
        memory_mask = additive_key_mask(cross_mask, x.dtype)
        for block in self.decoder.decoder.layer:
            x = block(x, cross_hidden, self_mask, memory_mask)
        return self.decoder.classifier.cls(x)

    def _decode(
        self, cross: Mapping[str, Tensor], decoder_ids: Tensor, decoder_mask: Tensor
    ) -> dict[str, Tensor]:
        cross_hidden, cross_mask = _rows(cross, "cross", ("cross_hidden", "cross_mask"))
        _check_pair("decoder_ids", decoder_ids, "decoder_mask", decoder_mask)
        if decoder_ids.shape[0] != cross_hidden.shape[0]:
            raise ValueError(
                f"decoder_ids has {decoder_ids.shape[0]} rows, cross_hidden {cross_hidden.shape[0]}"
            )
        return {"logits": self._decoder_logits(cross_hidden, cross_mask, decoder_ids, decoder_mask)}

    def _generate(
        self,
        features: Tensor,
        feature_mask: Tensor,
        bos_id: int,
        eos_id: int,
        pad_id: int,
        max_length: int,
        text_ids: Tensor | None = None,
        text_mask: Tensor | None = None,
        beam_size: int = 5,
    ) -> dict[str, Tensor]:
        batch = features.shape[0]
        if (text_ids is None) != (text_mask is None):
            raise TypeError("mode='generate' takes text_ids and text_mask together or neither")
        if text_ids is None:
            text_ids = torch.tensor([[bos_id, eos_id]], device=features.device).expand(batch, 2)
            text_mask = torch.ones_like(text_ids)
        text = self._text(text_ids, text_mask)
        video = self._video(features, feature_mask)
        cross_hidden, cross_mask, _ = self._cross_pass(
            text["text_hidden"], text_mask, video["video_hidden"], feature_mask
        )

        def next_log_probs(prefixes: Tensor, rows: Tensor) -> Tensor:
            index = rows.repeat_interleave(prefixes.shape[0] // rows.shape[0])
            logits = self._decoder_logits(
                cross_hidden[index], cross_mask[index], prefixes, torch.ones_like(prefixes)
            )
            return torch.log_softmax(logits[:, -1].float(), dim=-1)

        tokens, scores = beam_search(
            next_log_probs,
            batch,
            beam_size=beam_size,
            max_length=max_length,
            bos_id=bos_id,
            eos_id=eos_id,
            pad_id=pad_id,
            device=features.device,
        )
        return {"tokens": tokens, "scores": scores}


def _masked_mean(hidden: Tensor, weights: Tensor) -> Tensor:
    """``sum_t weights[:, t] * hidden[:, t] / max(sum_t weights[:, t], 1)``; ``weights`` ``[B, N]``
    of 0/1 (a row without any real position gives zeros, as the release's video pooling)."""
    total = (hidden * weights[..., None]).sum(dim=1)
    return total / weights.sum(dim=1, keepdim=True).clamp(min=1.0)


def _check_pair(name: str, tensor: Tensor, mask_name: str, mask: Tensor) -> None:
    if tensor.dim() != 2 or mask.shape != tensor.shape:
        raise ValueError(
            f"{name} and {mask_name} must both be [B, N]; got {tuple(tensor.shape)} and "
            f"{tuple(mask.shape)}"
        )


def _paired_rows(
    text: Mapping[str, Tensor], video: Mapping[str, Tensor], mode: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(text_hidden, text_mask, video_hidden, feature_mask)`` of a mode that pairs text row i
    with video row i; ValueError when the row counts differ."""
    text_hidden, text_mask = _rows(text, "text", ("text_hidden", "text_mask"))
    video_hidden, feature_mask = _rows(video, "video", ("video_hidden", "feature_mask"))
    if text_hidden.shape[0] != video_hidden.shape[0]:
        raise ValueError(
            f"mode={mode!r} pairs text and video row by row: {text_hidden.shape[0]} text "
            f"rows, {video_hidden.shape[0]} video rows"
        )
    return text_hidden, text_mask, video_hidden, feature_mask


def _rows(outputs: Mapping[str, Tensor], argument: str, keys: tuple[str, str]) -> list[Tensor]:
    missing = [key for key in keys if key not in outputs]
    if missing:
        raise KeyError(f"{argument}= lacks {missing}; it has {sorted(outputs)}")
    return [outputs[key] for key in keys]
