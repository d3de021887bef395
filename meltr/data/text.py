"""BERT WordPiece tokenization of captions and masked-language-model masking."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch
from tokenizers import BertWordPieceTokenizer

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
IGNORE_INDEX = -100


def _read_vocab(vocab_path: Path) -> dict[str, int]:
    """`token -> id` from a BERT vocab file (one token per line, id = line number from 0) or from
    the WordPiece model of a Hugging Face ``tokenizer.json`` (a ``.json`` path)."""
    if not vocab_path.is_file():
        raise FileNotFoundError(f"vocab file {vocab_path} does not exist")
    vocab = _json_vocab(vocab_path) if vocab_path.suffix == ".json" else _lines_vocab(vocab_path)
    missing = [token for token in SPECIAL_TOKENS if token not in vocab]
    if missing:
        raise ValueError(f"vocab file {vocab_path} lacks the BERT special tokens {missing}")
    return vocab


def _lines_vocab(vocab_path: Path) -> dict[str, int]:
    tokens = vocab_path.read_text(encoding="utf-8").splitlines()
    vocab: dict[str, int] = {}
    for index, token in enumerate(tokens):
        token = token.rstrip()
        if token in vocab:
            raise ValueError(
                f"vocab file {vocab_path}: token {token!r} on line {index + 1} also on line "
                f"{vocab[token] + 1}"
            )
        vocab[token] = index
    return vocab


def _json_vocab(vocab_path: Path) -> dict[str, int]:
    try:
        model = json.loads(vocab_path.read_text(encoding="utf-8")).get("model")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError) as error:
        raise ValueError(f"{vocab_path} is not a tokenizer.json: {error}") from error
    if not isinstance(model, dict) or model.get("type") != "WordPiece":
        kind = model.get("type") if isinstance(model, dict) else None
        raise ValueError(f"{vocab_path}: the tokenizer model is {kind!r}, not 'WordPiece'")
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or sorted(vocab.values()) != list(range(len(vocab))):
        raise ValueError(f"{vocab_path}: model.vocab is not a map of tokens to ids 0..N-1")
    return vocab


class WordPieceTokenizer:
    """BERT tokenizer (HF `tokenizers`): clean text, lower-case and strip accents (unless
    ``lowercase=False``, for the cased BERTs), split on whitespace and punctuation, then greedy
    longest-match-first WordPiece with `##` continuations.

    `encode` returns `[CLS] tokens [SEP] [PAD]...` truncated/padded to `max_length`. Special-token
    ids are read from the vocab file (``vocab.txt``, or a Hugging Face ``tokenizer.json``), which
    must contain [PAD], [UNK], [CLS], [SEP] and [MASK].
    """

    def __init__(self, vocab_path: str | Path, max_length: int, lowercase: bool = True):
        if max_length < 2:
            raise ValueError(f"max_length must leave room for [CLS] and [SEP], got {max_length}")
        self.vocab_path = Path(vocab_path)
        self.max_length = max_length
        vocab = _read_vocab(self.vocab_path)
        self.vocab_size = len(vocab)
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
            vocab[token] for token in SPECIAL_TOKENS
        )
        self.special_ids = frozenset(
            (self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id)
        )
        self._tokenizer = BertWordPieceTokenizer(
            vocab,
            clean_text=True,
            handle_chinese_chars=True,
            strip_accents=lowercase,
            lowercase=lowercase,
        )
        self._tokenizer.enable_truncation(max_length)
        self._tokenizer.enable_padding(length=max_length, pad_id=self.pad_id, pad_token="[PAD]")

    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask of `texts`, both int64 `[len(texts), max_length]`
        (mask: 1 for [CLS], tokens and [SEP]; 0 for padding)."""
        if isinstance(texts, str):
            raise TypeError("encode takes a sequence of strings; wrap a single text in a list")
        encodings = self._tokenizer.encode_batch(list(texts))
        ids = torch.tensor([encoding.ids for encoding in encodings], dtype=torch.int64)
        mask = torch.tensor([encoding.attention_mask for encoding in encodings], dtype=torch.int64)
        return ids.view(len(encodings), self.max_length), mask.view(len(encodings), self.max_length)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids: special tokens dropped, ``##`` continuations joined to the previous
        piece (``[CLS] a red ##dish box [SEP]`` -> ``"a reddish box"``)."""
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)


class MaskingVocab(Protocol):
    """What `mask_tokens` needs to know about the vocabulary (a `WordPieceTokenizer` is one)."""

    vocab_size: int
    mask_id: int
    special_ids: frozenset[int]


def mask_tokens(
    ids: torch.Tensor,
    attention_mask: torch.Tensor,
    vocab: MaskingVocab,
    generator: torch.Generator | None = None,
    probability: float = 0.15,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masked-language-model corruption of token ids (any shape, e.g. `[L]` or `[B, L]`).

    Each real token (attention mask 1 and not a special token) is selected independently with
    `probability`. A selected token becomes [MASK] with probability 0.8, a random non-special
    token with 0.1, and stays unchanged with 0.1. Random draws come from `generator`.

    Returns:
        `(masked_ids, labels)`: new tensors shaped like `ids`; labels hold the original id at
        selected positions and -100 elsewhere. Inputs are not modified.
    """
    if ids.shape != attention_mask.shape:
        raise ValueError(
            f"ids {tuple(ids.shape)} and attention_mask {tuple(attention_mask.shape)} "
            "differ in shape"
        )
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability must be in [0, 1], got {probability}")
    special = torch.tensor(sorted(vocab.special_ids), dtype=ids.dtype)
    maskable = attention_mask.bool() & ~torch.isin(ids, special)
    draws = torch.rand((3, *ids.shape), generator=generator)
    selected = maskable & (draws[0] < probability)
    to_mask = selected & (draws[1] < 0.8)
    to_random = selected & ~to_mask & (draws[2] < 0.5)

    is_ordinary = torch.ones(vocab.vocab_size, dtype=torch.bool)
    is_ordinary[special] = False
    ordinary = is_ordinary.nonzero().squeeze(1).to(ids.dtype)
    random_ids = ordinary[torch.randint(len(ordinary), ids.shape, generator=generator)]
    masked = torch.where(to_mask, torch.full_like(ids, vocab.mask_id), ids)
    masked = torch.where(to_random, random_ids, masked)
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX))
    return masked, labels


class MaskTokens:
    """Training transform (docs/ARCHITECTURE.md, "Transforms"): BERT masked-language-model masking
    of ``item[source]`` by :func:`mask_tokens`, adding ``mlm_ids`` and ``mlm_labels`` (``[L]``,
    labels -100 where not selected). Draws from the sample's generator; returns a new dict."""

    def __init__(
        self,
        tokenizer: MaskingVocab,
        probability: float = 0.15,
        source: str = "text_ids",
        attention_mask: str = "text_mask",
    ) -> None:
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability must be in [0, 1], got {probability}")
        self.tokenizer, self.probability = tokenizer, probability
        self.source, self.attention_mask = source, attention_mask

    def __call__(self, item: dict, generator: torch.Generator) -> dict:
        ids, attention = item[self.source], item[self.attention_mask]
        masked, labels = mask_tokens(ids, attention, self.tokenizer, generator, self.probability)
        return item | {"mlm_ids": masked, "mlm_labels": labels}
