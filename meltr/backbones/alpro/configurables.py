"""Gin registrations of the ALPRO backbone (imported by ``meltr.train.configurables``), and the
two files of the quick recipes: their shared vocabulary and the prompter's entity list."""

import os

import gin

from meltr.backbones.alpro import Alpro, AlproLoss, EntityCrop, load_alpro_checkpoint, load_prompter
from meltr.data import synthetic, synthetic_qa

MODULE = "meltr.backbones.alpro"
LOADER_SUPPLIED = ["model", "path", "meta_loss", "trust_pickle"]

gin.external_configurable(Alpro, module=MODULE, denylist=["vocab_size"])
gin.external_configurable(AlproLoss, module=MODULE)
gin.external_configurable(load_alpro_checkpoint, module=MODULE, denylist=LOADER_SUPPLIED)
gin.external_configurable(EntityCrop, module=MODULE)
gin.external_configurable(load_prompter, "alpro_prompter", module=MODULE)


def _cached_text_file(name: str, lines: list[str]) -> str:
    """``cache_root() / alpro-quick / name`` holding ``lines`` (rewritten atomically when it
    differs, so that ranks starting together never read a partial file)."""
    path = synthetic.cache_root() / "alpro-quick" / name
    text = "\n".join(lines) + "\n"
    if not path.is_file() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{name}.{os.getpid()}")
        temporary.write_text(text)
        os.replace(temporary, path)
    return str(path)


@gin.configurable(module=MODULE)
def alpro_quick_vocab() -> str:
    """A vocabulary for the generated caption clips (the quick prompter's training data) and the
    generated QA clips at once: the BERT special tokens, then the words of both."""
    words = set(synthetic.build_vocab()) | set(synthetic_qa.qa_vocab())
    specials = list(synthetic.SPECIAL_TOKENS)
    return _cached_text_file("vocab.txt", specials + sorted(words - set(specials)))


@gin.configurable(module=MODULE)
def alpro_quick_entities() -> str:
    """The quick prompter's entities: the colour and shape names of the generated clips."""
    return _cached_text_file("entities.txt", list(synthetic.COLOURS) + list(synthetic.SHAPES))
