"""The BERT pieces Violet takes from ``bert-base-uncased``: text embeddings, the encoder it uses as
its cross transformer, and the masked-language-model head. The BERT text backbone
(``meltr.backbones.bert``) builds any Hugging Face BERT from them, sized by its ``config.json``
(type vocabulary, LayerNorm epsilon and attention dropout are parameters for that).

Names follow HuggingFace ``transformers`` (``BertEmbeddings``, ``BertEncoder``,
``BertOnlyMLMHead``), which the Violet release stores under ``enc_txt.emb_txt.*``, ``trsfr.*`` and
``fc_mtm.*``. Attention runs through ``F.scaled_dot_product_attention`` with a boolean key mask
(the release adds -10000 to masked logits; the difference is below float32 resolution).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BERT_LAYER_NORM_EPS = 1e-12
TEXT_TOKEN_TYPE = 0


class BertEmbeddings(nn.Module):
    """``dropout(LayerNorm(word + position + token type 0))``, positions ``0 .. L - 1``.

    The HF module's ``position_ids`` buffer is not kept (files saved with transformers < 4.31 hold
    it; the loaders drop it)."""

    def __init__(
        self,
        vocab_size: int,
        max_positions: int,
        width: int,
        dropout: float,
        type_vocab_size: int = 2,
        eps: float = BERT_LAYER_NORM_EPS,
    ) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, width)
        self.position_embeddings = nn.Embedding(max_positions, width)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, width)
        self.LayerNorm = nn.LayerNorm(width, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, text_ids: Tensor) -> Tensor:
        """int64 ``[B, L]`` (L <= max_positions) -> ``[B, L, width]``."""
        length = text_ids.shape[1]
        x = self.word_embeddings(text_ids) + self.position_embeddings.weight[:length]
        x = x + self.token_type_embeddings.weight[TEXT_TOKEN_TYPE]
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        if width % heads != 0:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads, self.dropout = heads, dropout
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)

    def forward(self, x: Tensor, key_mask: Tensor) -> Tensor:
        """``x`` ``[B, N, D]``, ``key_mask`` bool ``[B, N]`` (True = may be attended)."""
        batch, tokens, width = x.shape
        q, k, v = (
            layer(x).view(batch, tokens, self.heads, -1).transpose(1, 2)
            for layer in (self.query, self.key, self.value)
        )
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=key_mask[:, None, None, :],
            dropout_p=self.dropout if self.training else 0.0,
        )
        return out.transpose(1, 2).reshape(batch, tokens, width)


class BertResidualOutput(nn.Module):
    """``LayerNorm(dropout(dense(h)) + residual)`` (HF ``BertSelfOutput`` / ``BertOutput``)."""

    def __init__(
        self, inner: int, width: int, dropout: float, eps: float = BERT_LAYER_NORM_EPS
    ) -> None:
        super().__init__()
        self.dense = nn.Linear(inner, width)
        self.LayerNorm = nn.LayerNorm(width, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden)) + residual)


class BertAttention(nn.Module):
    def __init__(
        self,
        width: int,
        heads: int,
        dropout: float,
        attention_dropout: float | None = None,
        eps: float = BERT_LAYER_NORM_EPS,
    ) -> None:
        super().__init__()
        self.self = BertSelfAttention(
            width, heads, dropout if attention_dropout is None else attention_dropout
        )
        self.output = BertResidualOutput(width, width, dropout, eps)

    def forward(self, x: Tensor, key_mask: Tensor) -> Tensor:
        return self.output(self.self(x, key_mask), x)


class BertIntermediate(nn.Module):
    def __init__(self, width: int, inner: int) -> None:
        super().__init__()
        self.dense = nn.Linear(width, inner)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.dense(x))


class BertLayer(nn.Module):
    """Post-norm transformer layer: attention sub-layer, then GELU feed-forward sub-layer.
    ``dropout`` is the hidden-state dropout, ``attention_dropout`` (None: the same) the dropout of
    the attention probabilities; ``eps`` the LayerNorms' epsilon."""

    def __init__(
        self,
        width: int,
        heads: int,
        inner: int,
        dropout: float,
        attention_dropout: float | None = None,
        eps: float = BERT_LAYER_NORM_EPS,
    ) -> None:
        super().__init__()
        self.attention = BertAttention(width, heads, dropout, attention_dropout, eps)
        self.intermediate = BertIntermediate(width, inner)
        self.output = BertResidualOutput(inner, width, dropout, eps)

    def forward(self, x: Tensor, key_mask: Tensor) -> Tensor:
        x = self.attention(x, key_mask)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(
        self,
        layers: int,
        width: int,
        heads: int,
        inner: int,
        dropout: float,
        attention_dropout: float | None = None,
        eps: float = BERT_LAYER_NORM_EPS,
    ) -> None:
        super().__init__()
        self.layer = nn.ModuleList(
            BertLayer(width, heads, inner, dropout, attention_dropout, eps) for _ in range(layers)
        )

    def forward(self, x: Tensor, key_mask: Tensor) -> Tensor:
        for layer in self.layer:
            x = layer(x, key_mask)
        return x


class BertPredictionTransform(nn.Module):
    def __init__(self, width: int, eps: float = BERT_LAYER_NORM_EPS) -> None:
        super().__init__()
        self.dense = nn.Linear(width, width)
        self.LayerNorm = nn.LayerNorm(width, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.LayerNorm(F.gelu(self.dense(x)))


class BertPredictionHead(nn.Module):
    """Transform, then a decoder whose bias *is* ``bias`` (one parameter, two state-dict keys,
    ``bias`` and ``decoder.bias``, as in HF). The decoder weight is its own parameter: Violet
    does not tie it to the text embeddings."""

    def __init__(self, width: int, vocab_size: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        self.transform = BertPredictionTransform(width)
        self.decoder = nn.Linear(width, vocab_size, bias=False)
        self.decoder.bias = self.bias

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.transform(x))


class BertMLMHead(nn.Module):
    """HF ``BertOnlyMLMHead``: ``[..., width]`` -> ``[..., vocab_size]``."""

    def __init__(self, width: int, vocab_size: int) -> None:
        super().__init__()
        self.predictions = BertPredictionHead(width, vocab_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.predictions(x)


def init_bert_weights(module: nn.Module) -> None:
    """BERT's initialisation of one module: N(0, 0.02) linear and embedding weights, zero biases,
    unit LayerNorms."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
