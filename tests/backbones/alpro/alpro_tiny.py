"""The tiny ALPRO configuration, batch builders and a saved tiny prompter, used by the tests in
this folder.

Video 3 frames of 16 px, 8-pixel patches (a 2 x 2 grid, 4 patches); width 16, 2 TimeSformer
blocks; BERT of 3 layers, the first 2 text-only; a vocabulary of 40 with the BERT special tokens
at 0..4 ([PAD], [UNK], [CLS], [SEP], [MASK])."""

from pathlib import Path
from types import SimpleNamespace

import torch
from tiny_text import MASK, bert_texts, redraw_weights

from meltr.backbones.alpro import Alpro, EntityCrop
from meltr.backbones.alpro.contract import FRAMES, PATCH, SIZE, SIZES
from meltr.data.text import MaskTokens

GRID = SIZE // PATCH
# The contract's sizes without its entities and answers, with drop path.
TINY = {
    key: value for key, value in SIZES.items() if key not in ("num_entities", "num_answers")
} | dict(drop_path=0.1)
# Keyword arguments of official_alpro.alpro_shapes() matching TINY.
TINY_OFFICIAL = dict(
    vocab=40,
    positions=16,
    width=16,
    layers=3,
    inner=32,
    patch=PATCH,
    patches=GRID * GRID,
    frames=FRAMES,
    depth=2,
    mlp=32,
    proj=8,
)
VOCAB = SimpleNamespace(mask_id=MASK, special_ids=frozenset(range(5)), vocab_size=40)
ENTITIES = ("cat", "dog", "ball", "car", "tree")


def tiny_model(seed: int = 0, **overrides) -> Alpro:
    """A tiny Alpro whose weights but ``temp`` are redrawn with std ``1 / sqrt(fan_in)`` (biases
    std 0.1), the temporal table and every ``temporal_fc`` included: at these widths the
    release's std 0.02 leaves the fused outputs of different inputs nearly equal, under which a
    wrong pairing or a wrong input would go unnoticed."""
    torch.manual_seed(seed)
    return redraw_weights(Alpro(**(TINY | overrides)), 1.0, keep=lambda name: name == "temp")


def texts(batch: int, length: int, generator: torch.Generator, lengths=None) -> tuple:
    """``bert_texts`` over the tiny vocabulary."""
    return bert_texts(batch, length, TINY["vocab_size"], generator, lengths)


def videos(batch: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(batch, FRAMES, 3, SIZE, SIZE, generator=generator)


def training_batch(batch: int, generator: torch.Generator, answers: list[int]) -> dict:
    """Items masked by ``MaskTokens`` and cropped by ``EntityCrop``, then stacked, with
    ``answer_index``."""
    ids, mask = texts(batch, 7, generator)
    video = videos(batch, generator)
    items = []
    for row in range(batch):
        item = {"video": video[row], "text_ids": ids[row], "text_mask": mask[row]}
        item = MaskTokens(VOCAB, probability=0.3)(item, generator)
        items.append(EntityCrop(patch_size=PATCH)(item, generator))
    stacked = {key: torch.stack([item[key] for item in items]) for key in items[0]}
    return stacked | {"answer_index": torch.tensor(answers)}


def vocab_file(directory: Path) -> Path:
    """A vocab.txt of the tiny vocabulary: the specials, then ``w5 .. w34`` and the five
    entity names (ids 35..39), so that prompts tokenise to known words."""
    path = directory / "vocab.txt"
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = [f"w{i}" for i in range(5, TINY["vocab_size"] - len(ENTITIES))]
    path.write_text("\n".join(specials + words + list(ENTITIES)) + "\n")
    return path


def prompter_files(directory: Path, seed: int = 1, **sizes) -> SimpleNamespace:
    """A saved tiny prompter (an Alpro state dict, redrawn as ``tiny_model``), its vocabulary
    and an entity file listing ``ENTITIES`` with counts, as the release's unigrams file does."""
    directory.mkdir(parents=True, exist_ok=True)
    network = tiny_model(seed) if not sizes else Alpro(**sizes)
    checkpoint = directory / "prompter.pt"
    torch.save(network.state_dict(), checkpoint)
    entities = directory / "entities.txt"
    entities.write_text("".join(f"{name} {100 - i}\n" for i, name in enumerate(ENTITIES)))
    return SimpleNamespace(
        checkpoint=checkpoint, vocab=vocab_file(directory), entities=entities, network=network
    )
