"""The files of the ALPRO quick recipes (gin/alpro_quick*.gin) that come from the generated
clips: one vocabulary for the captions dataset (the prompter's training data) and the QA dataset
at once, and the prompter's entities. Written into ``cache_root() / alpro-quick``."""

from __future__ import annotations

from meltr.data.cache import cached_text_file
from meltr.data.synthetic import moving_shapes
from meltr.data.synthetic.video_qa import qa_vocab
from meltr.data.synthetic.words import SPECIAL_TOKENS

FOLDER = "alpro-quick"


def alpro_quick_vocab() -> str:
    """The path of a vocabulary of the generated caption clips and QA clips at once: the BERT
    special tokens, then the words of both, sorted."""
    words = set(moving_shapes.build_vocab()) | set(qa_vocab())
    return cached_text_file(
        FOLDER, "vocab.txt", [*SPECIAL_TOKENS, *sorted(words - set(SPECIAL_TOKENS))]
    )


def alpro_quick_entities() -> str:
    """The path of the quick prompter's entities: the colour and shape names of the clips."""
    entities = [*moving_shapes.COLOURS, *moving_shapes.SHAPES]
    return cached_text_file(FOLDER, "entities.txt", entities)
