"""A Hugging Face BERT text encoder with the heads of the text losses.

State-dict names are those of ``transformers``' ``BertModel`` (``embeddings.*``,
``encoder.layer.N.*``, ``pooler.dense.*``), so a checkpoint loads by its own key names, plus the
heads: ``classifier.*`` (as in ``BertForSequenceClassification``) and ``cls.predictions.*`` (the
masked-language-model head of ``BertForMaskedLM``, its decoder tied to the word embeddings).
Attention is ``F.scaled_dot_product_attention`` (``meltr.backbones.violet.bert``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from meltr.backbones.bert.folder import BertConfig, read_config
from meltr.backbones.violet.bert import (
    BertEmbeddings,
    BertEncoder,
    BertPredictionTransform,
    init_bert_weights,
)

MODES = ("embed", "classify", "mlm", "hidden")
POOLINGS = ("mean", "cls", "pooler")


class BertPooler(nn.Module):
    """``tanh(dense(h[:, 0]))`` (HF ``BertPooler``)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.dense = nn.Linear(width, width)

    def forward(self, hidden: Tensor) -> Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


class TiedPredictionHead(nn.Module):
    """HF ``BertLMPredictionHead`` without a decoder weight of its own: ``transform``, then the
    product with the word embeddings it is given (tied) plus ``bias``."""

    def __init__(self, width: int, vocab_size: int, eps: float) -> None:
        super().__init__()
        self.transform = BertPredictionTransform(width, eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, hidden: Tensor, word_embeddings: Tensor) -> Tensor:
        return F.linear(self.transform(hidden), word_embeddings, self.bias)


class TiedMLMHead(nn.Module):
    """HF ``BertOnlyMLMHead`` (the ``cls.predictions`` level of the key names), decoder tied."""

    def __init__(self, width: int, vocab_size: int, eps: float) -> None:
        super().__init__()
        self.predictions = TiedPredictionHead(width, vocab_size, eps)


class BertTextModel(nn.Module):
    """BERT (sized by ``config``) for text classification and its self-supervised losses.

    ``forward(mode=..., text_ids=[B, L], text_mask=[B, L], mlm_positions=None)``, with ``text_mask``
    1 on tokens and 0 on padding (every row has at least one token):

    - ``"hidden"`` -> ``{"hidden": [B, L, H]}``, the last encoder layer;
    - ``"embed"`` -> ``{"sentence": [B, H]}``, the pooled sentence: the mean of the last layer over
      the tokens (``pooling="mean"``), its first token ``[CLS]`` (``"cls"``), or BERT's pooler
      ``tanh(dense(h_cls))`` (``"pooler"``, as ``BertForSequenceClassification``);
    - ``"classify"`` -> ``{"logits": [B, num_classes], "sentence": [B, H]}``: a linear
      ``classifier`` on the pooled sentence after dropout;
    - ``"mlm"`` -> ``{"logits": [M, vocab]}`` at the ``M`` positions where ``mlm_positions`` (bool
      ``[B, L]``) is True, in row-major order: the vocabulary product runs on those rows only.

    Dropout (config ``hidden_dropout_prob`` / ``attention_probs_dropout_prob``) is active in train
    mode and draws from the global torch RNG. The encoder layers are the FSDP units;
    ``num_classes`` is kept as an attribute (the Classification task checks its ``topk`` against
    it).
    """

    def __init__(self, config: BertConfig, num_classes: int = 2, pooling: str = "mean") -> None:
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.config, self.pooling, self.num_classes = config, pooling, num_classes
        width, eps = config.hidden_size, config.layer_norm_eps
        self.embeddings = BertEmbeddings(
            config.vocab_size,
            config.max_position_embeddings,
            width,
            config.hidden_dropout_prob,
            config.type_vocab_size,
            eps,
        )
        self.encoder = BertEncoder(
            config.num_hidden_layers,
            width,
            config.num_attention_heads,
            config.intermediate_size,
            config.hidden_dropout_prob,
            config.attention_probs_dropout_prob,
            eps,
        )
        self.pooler = BertPooler(width)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(width, num_classes)
        self.cls = TiedMLMHead(width, config.vocab_size, eps)
        self.apply(init_bert_weights)

    def fsdp_units(self) -> list[nn.Module]:
        """The encoder layers."""
        return list(self.encoder.layer)

    def _pool(self, hidden: Tensor, text_mask: Tensor) -> Tensor:
        if self.pooling == "pooler":
            return self.pooler(hidden)
        if self.pooling == "cls":
            return hidden[:, 0]
        weights = text_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)

    def forward(
        self,
        *,
        mode: str,
        text_ids: Tensor,
        text_mask: Tensor,
        mlm_positions: Tensor | None = None,
    ) -> dict[str, Tensor]:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if text_ids.dim() != 2 or text_mask.shape != text_ids.shape:
            raise ValueError(
                f"text_ids and text_mask must both be [B, L], got {tuple(text_ids.shape)} and "
                f"{tuple(text_mask.shape)}"
            )
        if text_ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(
                f"texts of {text_ids.shape[1]} tokens exceed the checkpoint's "
                f"max_position_embeddings = {self.config.max_position_embeddings}"
            )
        hidden = self.encoder(self.embeddings(text_ids), text_mask.bool())
        if mode == "hidden":
            return {"hidden": hidden}
        if mode == "mlm":
            if mlm_positions is None or mlm_positions.shape != text_ids.shape:
                raise ValueError("mode 'mlm' needs mlm_positions, bool and shaped like text_ids")
            word_embeddings = self.embeddings.word_embeddings.weight
            return {"logits": self.cls.predictions(hidden[mlm_positions], word_embeddings)}
        sentence = self._pool(hidden, text_mask)
        if mode == "embed":
            return {"sentence": sentence}
        return {"logits": self.classifier(self.dropout(sentence)), "sentence": sentence}


def bert_text_model(
    checkpoint: str,
    vocab_size: int | None = None,
    num_classes: int = 2,
    pooling: str = "mean",
) -> BertTextModel:
    """A ``BertTextModel`` sized by the ``config.json`` of the checkpoint folder ``checkpoint``
    (weights are not read: that is the loader's job). ``vocab_size`` (the recipe's tokenizer's)
    must equal the config's. ValueError naming the file otherwise."""
    config = read_config(checkpoint)
    if vocab_size is not None and vocab_size != config.vocab_size:
        raise ValueError(
            f"the tokenizer's vocabulary has {vocab_size} tokens, the config.json of {checkpoint} "
            f"says vocab_size = {config.vocab_size}"
        )
    return BertTextModel(config, num_classes, pooling)
