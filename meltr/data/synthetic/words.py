"""The words of generated captions and questions, and the BERT-format vocabularies built of them."""

from __future__ import annotations

import re
from collections.abc import Iterable

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
WORD_PATTERN = re.compile(r"[a-z]+|[.,]")


def caption_words(caption: str) -> list[str]:
    """The words and punctuation of ``caption``, as a BERT basic tokenizer splits it."""
    return WORD_PATTERN.findall(caption.lower())


def vocabulary(phrases: Iterable[str]) -> list[str]:
    """BERT-format vocabulary: the special tokens (``[PAD]`` = 0), then every word of ``phrases``
    once, sorted."""
    words = {word for phrase in phrases for word in caption_words(phrase)}
    return list(SPECIAL_TOKENS) + sorted(words - set(SPECIAL_TOKENS))
