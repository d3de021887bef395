"""Captioning scores as coco-caption computes them (BLEU-3/4, METEOR, ROUGE-L, CIDEr).

The scorers are `pycocoevalcap`'s (the pip release of coco-caption), run after its Stanford PTB
tokenizer exactly as coco-caption's ``COCOEvalCap.evaluate`` does: references and predictions are
tokenized separately (lower-cased, punctuation tokens dropped), then scored with ``Bleu(4)``
(corpus-level, "closest" reference length), ``Meteor`` (METEOR 1.5), ``Rouge`` (ROUGE-L, beta 1.2)
and ``Cider`` (CIDEr, idf from the given references). SPICE is not computed (it downloads models).

The PTB tokenizer and METEOR run ``java``; ``pycocoevalcap`` ships their jars.
"""

from __future__ import annotations

import shutil
from collections.abc import Hashable, Mapping, Sequence

CAPTION_METRICS = ("BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")
_NAMED_AT_MOST = 5


def caption_scores(
    predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str]]
) -> dict[str, float]:
    """coco-caption scores of one predicted caption per id against that id's reference captions.

    ``predictions[id]`` is the generated caption, ``references[id]`` a non-empty list of reference
    captions; both dicts must hold the same ids. Raw text goes in: lower-casing, tokenization and
    punctuation removal are the PTB tokenizer's. Line breaks inside a caption become spaces (the
    tokenizer works line by line; coco-caption only replaces ``\\n``, and any other line break
    would silently shift every later caption onto the wrong id).

    Returns ``{"BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"}`` as fractions, the units
    coco-caption returns (papers often print BLEU/METEOR/ROUGE-L times 100; CIDEr is usually
    printed as is). Starts three JVMs (two tokenizer runs, one METEOR server; METEOR loads its
    paraphrase table, a few seconds).

    Raises ``ValueError`` for mismatched ids, an id without references or a caption that is not a
    string; ``RuntimeError`` when ``java`` is not on ``PATH`` or METEOR fails; ``ImportError``
    without ``pycocoevalcap``.
    """
    _validate(predictions, references)
    scorers = _import_scorers()
    if shutil.which("java") is None:
        raise RuntimeError(
            "java not found on PATH: METEOR and the PTB tokenizer of pycocoevalcap need a Java "
            "runtime (install a JRE, e.g. apt-get install default-jre-headless)"
        )

    tokenizer = scorers["PTBTokenizer"]()
    tokenized_references = tokenizer.tokenize(
        {key: [{"caption": _one_line(c)} for c in captions] for key, captions in references.items()}
    )
    tokenized_predictions = tokenizer.tokenize(
        {key: [{"caption": _one_line(predictions[key])}] for key in references}
    )

    bleu, _ = scorers["Bleu"](4).compute_score(
        tokenized_references, tokenized_predictions, verbose=0
    )
    rouge, _ = scorers["Rouge"]().compute_score(tokenized_references, tokenized_predictions)
    cider, _ = scorers["Cider"]().compute_score(tokenized_references, tokenized_predictions)
    meteor = _meteor_score(scorers["Meteor"], tokenized_references, tokenized_predictions)
    return {
        "BLEU-3": float(bleu[2]),
        "BLEU-4": float(bleu[3]),
        "METEOR": float(meteor),
        "ROUGE-L": float(rouge),
        "CIDEr": float(cider),
    }


def _one_line(caption: str) -> str:
    return " ".join(caption.splitlines())


def _meteor_score(meteor_class, references: dict, predictions: dict) -> float:
    meteor = meteor_class()
    try:
        score, _ = meteor.compute_score(references, predictions)
    except (ValueError, OSError) as error:
        # A dead METEOR process shows up as an empty reply (ValueError) or a broken pipe.
        meteor.meteor_p.kill()
        stderr = meteor.meteor_p.stderr.read().decode(errors="replace").strip()
        # compute_score keeps its lock on failure and Meteor.__del__ would block on it forever.
        if meteor.lock.locked():
            meteor.lock.release()
        raise RuntimeError(
            f"METEOR (java -jar meteor-1.5.jar from pycocoevalcap) failed: {stderr[-2000:]!r}"
        ) from error
    return score


def _import_scorers() -> dict[str, type]:
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.meteor.meteor import Meteor
        from pycocoevalcap.rouge.rouge import Rouge
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    except ImportError as error:
        raise ImportError(
            "caption_scores needs pycocoevalcap (pip install pycocoevalcap, or meltr[train])"
        ) from error
    return {
        "Bleu": Bleu,
        "Cider": Cider,
        "Meteor": Meteor,
        "Rouge": Rouge,
        "PTBTokenizer": PTBTokenizer,
    }


def _validate(predictions: Mapping, references: Mapping) -> None:
    if not references:
        raise ValueError("references is empty: nothing to score")
    missing_predictions = [key for key in references if key not in predictions]
    missing_references = [key for key in predictions if key not in references]
    if missing_predictions or missing_references:
        raise ValueError(
            "predictions and references must hold the same ids: "
            f"{len(missing_predictions)} id(s) without a prediction "
            f"{missing_predictions[:_NAMED_AT_MOST]}, {len(missing_references)} id(s) without "
            f"references {missing_references[:_NAMED_AT_MOST]}"
        )
    not_a_string = [key for key, caption in predictions.items() if not isinstance(caption, str)]
    if not_a_string:
        raise ValueError(
            f"predictions must be one caption string per id; not a string for ids "
            f"{not_a_string[:_NAMED_AT_MOST]} (e.g. {type(predictions[not_a_string[0]]).__name__})"
        )
    bad_references = [
        key
        for key, captions in references.items()
        if isinstance(captions, str)
        or not isinstance(captions, Sequence)
        or not all(isinstance(c, str) for c in captions)
    ]
    if bad_references:
        raise ValueError(
            "references must map each id to a list of caption strings; not so for ids "
            f"{bad_references[:_NAMED_AT_MOST]}"
        )
    no_references = [key for key, captions in references.items() if len(captions) == 0]
    if no_references:
        raise ValueError(
            f"{len(no_references)} id(s) have no reference caption: "
            f"{no_references[:_NAMED_AT_MOST]}"
        )
