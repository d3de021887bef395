import unicodedata

import pytest
import torch

from meltr.data.text import WordPieceTokenizer, mask_tokens

# Special tokens deliberately not at the usual ids 0, 100, 101, 102, 103.
VOCAB = [
    "the",
    "[UNK]",
    "a",
    "[SEP]",
    "cafe",
    "is",
    "[PAD]",
    "run",
    "##ning",
    "!",
    ",",
    ".",
    "[CLS]",
    "zebra",
    "##s",
    "play",
    "##ed",
    "[MASK]",
    "man",
    "dog",
    "##e",
]


def write_vocab(tmp_path, tokens=VOCAB):
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return path


def basic_tokens(text: str) -> list[str]:
    """Lower-case, strip accents, split on whitespace and on every punctuation character."""
    text = unicodedata.normalize("NFD", text.lower())
    text = "".join(c for c in text if unicodedata.category(c) != "Mn")
    tokens = []
    for word in text.split():
        current = ""
        for char in word:
            if unicodedata.category(char).startswith("P") or char in "$+<=>^`|~":
                tokens += [current, char] if current else [char]
                current = ""
            else:
                current += char
        if current:
            tokens.append(current)
    return tokens


def wordpiece(word: str, vocab: list[str]) -> list[str]:
    """Greedy longest-match-first; the whole word is [UNK] if some part matches nothing."""
    pieces, start = [], 0
    while start < len(word):
        for end in range(len(word), start, -1):
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                pieces.append(piece)
                start = end
                break
        else:
            return ["[UNK]"]
    return pieces


def reference_ids(text: str, max_length: int) -> tuple[list[int], list[int]]:
    pieces = [piece for word in basic_tokens(text) for piece in wordpiece(word, VOCAB)]
    tokens = ["[CLS]", *pieces[: max_length - 2], "[SEP]"]
    mask = [1] * len(tokens) + [0] * (max_length - len(tokens))
    tokens += ["[PAD]"] * (max_length - len(tokens))
    return [VOCAB.index(token) for token in tokens], mask


SENTENCES = [
    "The Café is RUNNING!",
    "Zebras, qqq played.",  # zebra ##s ; qqq -> [UNK] ; play ##ed
    "a dog,a man.the zebra",
    "",
    "the man is running the cafe and the dog played a zebra game",  # truncated
]


@pytest.mark.parametrize("max_length", [8, 12])
def test_encode_matches_an_independent_wordpiece(tmp_path, max_length):
    tokenizer = WordPieceTokenizer(write_vocab(tmp_path), max_length)
    ids, mask = tokenizer.encode(SENTENCES)
    assert ids.dtype == torch.int64 and mask.dtype == torch.int64
    assert ids.shape == mask.shape == (len(SENTENCES), max_length)
    for row, sentence in enumerate(SENTENCES):
        expected_ids, expected_mask = reference_ids(sentence, max_length)
        assert ids[row].tolist() == expected_ids, sentence
        assert mask[row].tolist() == expected_mask, sentence


def test_reference_exercises_the_interesting_cases():
    assert wordpiece("zebras", VOCAB) == ["zebra", "##s"]
    assert wordpiece("qqq", VOCAB) == ["[UNK]"]
    assert basic_tokens("The Café,x") == ["the", "cafe", ",", "x"]


def test_special_ids_are_read_from_the_vocab(tmp_path):
    tokenizer = WordPieceTokenizer(write_vocab(tmp_path), 8)
    assert tokenizer.vocab_size == len(VOCAB)
    assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.cls_id) == (6, 1, 12)
    assert (tokenizer.sep_id, tokenizer.mask_id) == (3, 17)
    assert tokenizer.special_ids == {6, 1, 12, 3, 17}


def test_bad_vocab_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        WordPieceTokenizer(tmp_path / "missing.txt", 8)
    no_mask = write_vocab(tmp_path, [token for token in VOCAB if token != "[MASK]"])
    with pytest.raises(ValueError, match=r"vocab\.txt.*\[MASK\]"):
        WordPieceTokenizer(no_mask, 8)
    with pytest.raises(ValueError, match="max_length"):
        WordPieceTokenizer(write_vocab(tmp_path), 1)


class Vocab:
    vocab_size = 200
    mask_id = 4
    special_ids = frozenset({0, 1, 2, 3, 4})  # pad, unk, cls, sep, mask


def padded_batch(batch: int, max_length: int, generator: torch.Generator):
    """`[CLS] tokens [SEP] [PAD]...` rows of random lengths; some tokens are [UNK] (special)."""
    ids = torch.zeros(batch, max_length, dtype=torch.int64)
    mask = torch.zeros(batch, max_length, dtype=torch.int64)
    lengths = torch.randint(3, max_length + 1, (batch,), generator=generator)
    for row, length in enumerate(lengths.tolist()):
        tokens = torch.randint(5, Vocab.vocab_size, (length - 2,), generator=generator)
        tokens[torch.rand(length - 2, generator=generator) < 0.05] = 1
        ids[row, :length] = torch.cat([torch.tensor([2]), tokens, torch.tensor([3])])
        mask[row, :length] = 1
    return ids, mask


def test_mask_tokens_proportions_and_labels():
    generator = torch.Generator().manual_seed(0)
    ids, mask = padded_batch(3000, 32, generator)
    masked, labels = mask_tokens(ids, mask, Vocab, torch.Generator().manual_seed(1))

    special = torch.isin(ids, torch.tensor(sorted(Vocab.special_ids)))
    real = mask.bool() & ~special
    selected = labels != -100
    assert not (selected & ~real).any()  # specials and padding never selected
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(masked[~selected], ids[~selected])

    def within(count, total, p):
        return abs(count - total * p) <= 5 * (total * p * (1 - p)) ** 0.5  # 5 sigma

    num_real, num_selected = int(real.sum()), int(selected.sum())
    assert within(num_selected, num_real, 0.15)
    to_mask = int((masked[selected] == Vocab.mask_id).sum())
    kept = int((masked[selected] == ids[selected]).sum())
    replaced = masked[selected & (masked != Vocab.mask_id) & (masked != ids)]
    num_ordinary = Vocab.vocab_size - len(Vocab.special_ids)
    assert within(to_mask, num_selected, 0.8)
    # a random replacement equals the original with probability 1 / num_ordinary
    assert within(kept, num_selected, 0.1 + 0.1 / num_ordinary)
    assert within(len(replaced), num_selected, 0.1 * (1 - 1 / num_ordinary))
    assert not torch.isin(replaced, torch.tensor(sorted(Vocab.special_ids))).any()
    assert replaced.min() >= 5 and replaced.max() < Vocab.vocab_size
    assert len(set(replaced.tolist())) > 150  # spread over the ordinary vocabulary


def test_mask_tokens_is_reproducible_and_leaves_inputs_alone():
    ids, mask = padded_batch(4, 16, torch.Generator().manual_seed(0))
    before = ids.clone()
    first = mask_tokens(ids[0], mask[0], Vocab, torch.Generator().manual_seed(9), probability=0.5)
    second = mask_tokens(ids[0], mask[0], Vocab, torch.Generator().manual_seed(9), probability=0.5)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert torch.equal(ids, before)
    with pytest.raises(ValueError, match="shape"):
        mask_tokens(ids, mask[:, :8], Vocab)


def test_mask_tokens_works_with_the_tokenizer(tmp_path):
    tokenizer = WordPieceTokenizer(write_vocab(tmp_path), 12)
    ids, mask = tokenizer.encode(SENTENCES)
    masked, labels = mask_tokens(ids, mask, tokenizer, torch.Generator().manual_seed(0), 1.0)
    real = mask.bool() & ~torch.isin(ids, torch.tensor(sorted(tokenizer.special_ids)))
    assert torch.equal(labels != -100, real)  # probability 1 selects every real token
