import itertools

import pytest
import torch
from univl_tiny import TINY

from meltr.backbones.univl import UniVL
from meltr.backbones.univl.beam import beam_search

BOS, EOS, PAD = 0, 3, 1


class ToyLanguageModel:
    """Next-token log-probabilities that depend on the whole prefix and on the row."""

    def __init__(self, rows: int, vocab: int, seed: int, temperature: float = 1.0):
        generator = torch.Generator().manual_seed(seed)
        self.embedding = torch.randn(rows, vocab, 8, generator=generator, dtype=torch.float64)
        self.output = torch.randn(rows, 8, vocab, generator=generator, dtype=torch.float64)
        self.temperature = temperature
        self.calls = []

    def log_probs(self, row: int, prefix: list[int]) -> torch.Tensor:
        state = torch.zeros(8, dtype=torch.float64)
        for position, token in enumerate(prefix):
            state = torch.tanh(state * 0.7 + self.embedding[row, token] * (1 + 0.1 * position))
        return torch.log_softmax(state @ self.output[row] / self.temperature, dim=0)

    def __call__(self, prefixes: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        self.calls.append(rows.tolist())
        per_row = prefixes.shape[0] // rows.shape[0]
        index = rows.repeat_interleave(per_row)
        return torch.stack(
            [self.log_probs(int(r), p.tolist()) for r, p in zip(index, prefixes, strict=True)]
        ).float()


def complete_sequences(vocab: int, max_length: int):
    """Every output the search may return: token sequences ending at their first EOS, or of
    ``max_length`` tokens without EOS."""
    for length in range(1, max_length + 1):
        for sequence in itertools.product(range(vocab), repeat=length):
            if EOS in sequence[:-1]:
                continue
            if sequence[-1] == EOS or length == max_length:
                yield list(sequence)


def exhaustive_best(score, vocab: int, max_length: int):
    return max(complete_sequences(vocab, max_length), key=score)


def sequence_score(model: ToyLanguageModel, row: int, sequence: list[int]) -> float:
    prefix, total = [BOS], 0.0
    for token in sequence:
        total += float(model.log_probs(row, prefix)[token].float())
        prefix.append(token)
    return total


def unpad(tokens: torch.Tensor, length: int) -> list[int]:
    return tokens[:length].tolist()


@pytest.mark.parametrize("seed", range(4))
def test_a_beam_holding_every_prefix_finds_the_exhaustive_maximum(seed):
    vocab, max_length, rows = 4, 4, 3
    toy = ToyLanguageModel(rows, vocab, seed, temperature=0.5)
    tokens, scores = beam_search(
        toy,
        rows,
        beam_size=vocab**max_length,
        max_length=max_length,
        bos_id=BOS,
        eos_id=EOS,
        pad_id=PAD,
    )
    for row in range(rows):
        best = exhaustive_best(lambda s, row=row: sequence_score(toy, row, s), vocab, max_length)
        assert unpad(tokens[row], len(best)) == best
        assert tokens[row, len(best) :].eq(PAD).all()
        assert scores[row].item() == pytest.approx(sequence_score(toy, row, best), abs=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_beam_one_is_greedy(seed):
    vocab, max_length, rows = 6, 7, 4
    toy = ToyLanguageModel(rows, vocab, seed)
    tokens, _ = beam_search(
        toy, rows, beam_size=1, max_length=max_length, bos_id=BOS, eos_id=EOS, pad_id=PAD
    )
    for row in range(rows):
        prefix = [BOS]
        while len(prefix) <= max_length:
            prefix.append(int(toy.log_probs(row, prefix).float().argmax()))
            if prefix[-1] == EOS:
                break
        greedy = prefix[1:]
        assert unpad(tokens[row], len(greedy)) == greedy
        assert tokens[row, len(greedy) :].eq(PAD).all()


def brute_force_beam(toy, row, beam_size, max_length):
    """The same search written as plain lists: keep the beam_size best extensions of the live
    hypotheses, set finished ones aside, stop when no live one can beat the best finished."""
    live, best = [([], 0.0)], (None, float("-inf"))
    for step in range(max_length):
        candidates = [
            (seq + [token], score + float(toy.log_probs(row, [BOS] + seq).float()[token]))
            for seq, score in live
            for token in range(toy.embedding.shape[1])
        ]
        candidates = sorted(candidates, key=lambda c: -c[1])[:beam_size]
        for seq, score in candidates:
            if seq[-1] == EOS and score > best[1]:
                best = (seq, score)
        live = [(seq, score) for seq, score in candidates if seq[-1] != EOS]
        if step == max_length - 1:
            for seq, score in live:
                if score > best[1]:
                    best = (seq, score)
            break
        if not live or best[1] >= max(score for _, score in live):
            break
    return best[0]


@pytest.mark.parametrize("beam_size", [2, 3, 5])
def test_small_beams_match_a_plain_list_search(beam_size):
    vocab, max_length, rows = 5, 6, 5
    toy = ToyLanguageModel(rows, vocab, seed=beam_size, temperature=0.7)
    tokens, _ = beam_search(
        toy, rows, beam_size=beam_size, max_length=max_length, bos_id=BOS, eos_id=EOS, pad_id=PAD
    )
    for row in range(rows):
        expected = brute_force_beam(toy, row, beam_size, max_length)
        assert unpad(tokens[row], len(expected)) == expected


def test_finished_rows_are_no_longer_decoded():
    toy = ToyLanguageModel(rows=3, vocab=5, seed=0)
    toy.output[1, :, EOS] += 100.0  # row 1 ends at once
    tokens, scores = beam_search(
        toy, 3, beam_size=2, max_length=5, bos_id=BOS, eos_id=EOS, pad_id=PAD
    )
    assert toy.calls[0] == [0, 1, 2] and all(1 not in rows for rows in toy.calls[1:])
    assert tokens[1].tolist() == [EOS, PAD, PAD, PAD, PAD]
    assert scores[1].item() == pytest.approx(sequence_score(toy, 1, [EOS]), abs=1e-5)


def test_model_generation_is_the_exhaustive_maximum_of_its_decoder(batch):
    torch.manual_seed(0)
    sizes = {**TINY, "vocab_size": 5}
    model = UniVL(**sizes).double().eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(20.0)  # peaked next-token distributions: short and long winners
    max_length, vocab = 3, sizes["vocab_size"]
    features, feature_mask = batch["features"][:3], batch["feature_mask"][:3]
    text_ids = batch["text_ids"][:3].clamp(max=vocab - 1)
    text_mask = batch["text_mask"][:3]
    with torch.no_grad():
        out = model(
            mode="generate",
            features=features,
            feature_mask=feature_mask,
            text_ids=text_ids,
            text_mask=text_mask,
            bos_id=BOS,
            eos_id=EOS,
            pad_id=PAD,
            max_length=max_length,
            beam_size=vocab**max_length,
        )
        text = model(mode="text", text_ids=text_ids, text_mask=text_mask)
        video = model(mode="video", features=features, feature_mask=feature_mask)
        cross = model(mode="cross", text=text, video=video)
    assert out["tokens"].shape == (3, max_length) and out["tokens"].dtype == torch.int64
    sequences = list(complete_sequences(vocab, max_length))
    for row in range(3):
        ids = torch.tensor([[BOS] + s + [PAD] * (max_length - len(s)) for s in sequences])
        ones = torch.ones_like(ids)
        row_cross = {k: v[row : row + 1].expand(len(ids), *v.shape[1:]) for k, v in cross.items()}
        with torch.no_grad():
            logits = model(mode="decode", cross=row_cross, decoder_ids=ids, decoder_mask=ones)
        log_probs = torch.log_softmax(logits["logits"], dim=-1)
        totals = [
            sum(log_probs[i, t, token].item() for t, token in enumerate(s))
            for i, s in enumerate(sequences)
        ]
        best = sequences[max(range(len(sequences)), key=totals.__getitem__)]
        assert unpad(out["tokens"][row], len(best)) == best
        assert out["scores"][row].item() == pytest.approx(max(totals), abs=1e-4)


def test_generation_without_text_reads_cls_sep(tiny_model, batch):
    common = dict(
        features=batch["features"],
        feature_mask=batch["feature_mask"],
        bos_id=5,
        eos_id=9,
        pad_id=7,
        max_length=4,
        beam_size=2,
    )
    empty = torch.tensor([[5, 9]] * 4)
    with torch.no_grad():
        without = tiny_model(mode="generate", **common)
        explicit = tiny_model(
            mode="generate", text_ids=empty, text_mask=torch.ones_like(empty), **common
        )
    assert torch.equal(without["tokens"], explicit["tokens"])
    with pytest.raises(TypeError, match="together"):
        tiny_model(mode="generate", text_ids=empty, **common)
