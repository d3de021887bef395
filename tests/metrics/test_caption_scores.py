"""caption_scores against pycocoevalcap called directly, a BLEU and a ROUGE-L written here.

One module-scoped call of caption_scores and one direct pycocoevalcap run: each starts JVMs
(the PTB tokenizer, the METEOR server loading its paraphrase table).
"""

import math
import sys
from collections import Counter
from functools import cache

import pytest

from meltr.metrics import captioning
from meltr.metrics.captioning import caption_scores

PREDICTIONS = {
    "v1": "A man is playing a guitar.",
    "v2": "Two dogs run!",
    # Line breaks other than \n: the PTB tokenizer would split the line and shift later ids.
    "v3": "A Woman\ris cooking\u2028pasta.",
}
REFERENCES = {
    "v1": [
        "A man plays the guitar.",
        "A man is playing a guitar on stage.",
        "Someone's playing music.",
    ],
    "v2": ["Two dogs are running on the grass.", "Dogs run on the GREEN grass!"],
    "v3": [
        "A woman is cooking pasta in a kitchen.",
        "Someone cooks pasta.",
        "A lady is cooking.",
        "A woman cooks some pasta, now.",
    ],
}
# The same captions as the PTB tokenizer leaves them: lower-cased, "'s" split off, punctuation gone.
TOKENIZED_PREDICTIONS = {
    "v1": "a man is playing a guitar",
    "v2": "two dogs run",
    "v3": "a woman is cooking pasta",
}
TOKENIZED_REFERENCES = {
    "v1": [
        "a man plays the guitar",
        "a man is playing a guitar on stage",
        "someone 's playing music",
    ],
    "v2": ["two dogs are running on the grass", "dogs run on the green grass"],
    "v3": [
        "a woman is cooking pasta in a kitchen",
        "someone cooks pasta",
        "a lady is cooking",
        "a woman cooks some pasta now",
    ],
}


@pytest.fixture(scope="module")
def scores():
    return caption_scores(PREDICTIONS, REFERENCES)


def test_agrees_with_pycocoevalcap_called_directly(scores):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    one_line = {"v1": PREDICTIONS["v1"], "v2": PREDICTIONS["v2"], "v3": "A Woman is cooking pasta."}
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({k: [{"caption": c} for c in refs] for k, refs in REFERENCES.items()})
    res = tokenizer.tokenize({k: [{"caption": c}] for k, c in one_line.items()})
    assert res == {k: [c] for k, c in TOKENIZED_PREDICTIONS.items()}
    assert gts == TOKENIZED_REFERENCES

    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    expected = {
        "BLEU-3": bleu[2],
        "BLEU-4": bleu[3],
        "METEOR": Meteor().compute_score(gts, res)[0],
        "ROUGE-L": Rouge().compute_score(gts, res)[0],
        "CIDEr": Cider().compute_score(gts, res)[0],
    }
    assert scores == pytest.approx(expected, rel=1e-12)
    assert all(type(value) is float for value in scores.values())
    assert 0.0 < scores["METEOR"] < 1.0 and 0.0 < scores["CIDEr"]


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _corpus_bleu(hypotheses: list[list[str]], references: list[list[list[str]]], n: int) -> float:
    """coco-caption's BLEU-n: corpus-level clipped n-gram precisions, geometric mean, and a
    brevity penalty on the summed "closest" reference lengths (ties: the shorter reference)."""
    matched, proposed = [0] * n, [0] * n
    hypothesis_length = reference_length = 0
    for hypothesis, refs in zip(hypotheses, references, strict=True):
        hypothesis_length += len(hypothesis)
        lengths = sorted(len(ref) for ref in refs)
        reference_length += min(lengths, key=lambda length: abs(length - len(hypothesis)))
        for order in range(1, n + 1):
            most_in_a_reference = Counter()
            for ref in refs:
                most_in_a_reference |= _ngrams(ref, order)
            counts = _ngrams(hypothesis, order)
            matched[order - 1] += sum(min(c, most_in_a_reference[g]) for g, c in counts.items())
            proposed[order - 1] += max(len(hypothesis) - order + 1, 0)
    log_precision = sum(math.log(m / p) for m, p in zip(matched, proposed, strict=True)) / n
    brevity = min(1.0, math.exp(1.0 - reference_length / hypothesis_length))
    return brevity * math.exp(log_precision)


def test_bleu_matches_corpus_bleu_with_closest_reference_length(scores):
    ids = sorted(REFERENCES)
    hypotheses = [TOKENIZED_PREDICTIONS[k].split() for k in ids]
    references = [[ref.split() for ref in TOKENIZED_REFERENCES[k]] for k in ids]
    # The corpus exercises the length rule: closest gives 5 + 6 + 4 (v3 ties 4 and 6) = 15 > 14
    # hypothesis tokens, so the brevity penalty applies; "shortest" (13) would not apply it and
    # the other side of v3's tie (17) would apply a larger one.
    assert sum(map(len, hypotheses)) == 14
    for n, key in ((3, "BLEU-3"), (4, "BLEU-4")):
        assert scores[key] == pytest.approx(_corpus_bleu(hypotheses, references, n), rel=1e-6)


def _lcs_length(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    @cache
    def lcs(i: int, j: int) -> int:
        if i == len(a) or j == len(b):
            return 0
        if a[i] == b[j]:
            return 1 + lcs(i + 1, j + 1)
        return max(lcs(i + 1, j), lcs(i, j + 1))

    return lcs(0, 0)


def test_rouge_l_matches_an_lcs_f_measure(scores):
    beta = 1.2  # coco-caption's ROUGE-L: F-measure of the best precision and the best recall
    per_id = []
    for key, prediction in TOKENIZED_PREDICTIONS.items():
        candidate = tuple(prediction.split())
        lcs = [_lcs_length(candidate, tuple(r.split())) for r in TOKENIZED_REFERENCES[key]]
        precision = max(length / len(candidate) for length in lcs)
        recall = max(
            length / len(ref.split())
            for length, ref in zip(lcs, TOKENIZED_REFERENCES[key], strict=True)
        )
        per_id.append((1 + beta**2) * precision * recall / (recall + beta**2 * precision))
    assert scores["ROUGE-L"] == pytest.approx(sum(per_id) / len(per_id), rel=1e-12)


def test_without_java_names_what_is_missing(monkeypatch):
    real_which = captioning.shutil.which
    monkeypatch.setattr(
        captioning.shutil, "which", lambda name: None if name == "java" else real_which(name)
    )
    with pytest.raises(RuntimeError, match="java not found on PATH: METEOR and the PTB tokenizer"):
        caption_scores({"a": "a cat"}, {"a": ["a cat sits"]})


def test_mismatched_ids_are_named():
    with pytest.raises(ValueError, match=r"1 id\(s\) without a prediction \['v2'\].*\['x'\]"):
        caption_scores({"v1": "a cat", "x": "a dog"}, {"v1": ["a cat"], "v2": ["a dog"]})


@pytest.mark.parametrize(
    ("references", "message"),
    [
        ({"v1": []}, r"1 id\(s\) have no reference caption: \['v1'\]"),
        ({"v1": "a cat"}, r"list of caption strings; not so for ids \['v1'\]"),
        ({"v1": ["a cat", None]}, r"list of caption strings; not so for ids \['v1'\]"),
        ({}, "references is empty"),
    ],
)
def test_bad_references_are_rejected(references, message):
    predictions = {key: "a cat" for key in references}
    with pytest.raises(ValueError, match=message):
        caption_scores(predictions, references)


def test_a_prediction_that_is_not_a_string_is_rejected():
    with pytest.raises(ValueError, match=r"not a string for ids \['v1'\] \(e.g. list\)"):
        caption_scores({"v1": ["a cat"]}, {"v1": ["a cat"]})


def test_without_pycocoevalcap_says_what_to_install(monkeypatch):
    for name in [m for m in sys.modules if m.startswith("pycocoevalcap")] + ["pycocoevalcap"]:
        monkeypatch.setitem(sys.modules, name, None)  # a None entry makes the import fail
    with pytest.raises(ImportError, match="caption_scores needs pycocoevalcap"):
        caption_scores({"a": "a cat"}, {"a": ["a cat sits"]})
