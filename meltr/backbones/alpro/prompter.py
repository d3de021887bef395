"""PEM's teacher (ALPRO's ``Prompter``): a separately pretrained ALPRO whose video features are
scored against text prompts of entities ("A video of a {entity}.") to give soft entity labels.

As in the release (``alpro_models.Prompter``, ``run_pretrain_sparse.setup_text_prompts``): the
entities are the first ``num_entities`` lines of the entity file, the first word of each line;
each entity's prompt feature is the mean over the 12 video templates of the L2-normalised
``text_proj`` of the prompt's [CLS] (text-only layers), prompts padded to 15 tokens; the soft
labels of a crop are ``softmax(video_feat(crop) @ prompt_feat.T / temp)`` with the prompter's own
``temp``. The prompter runs in eval mode without gradients and is never trained.

Items whose most likely entity has probability below ``ignore_threshold`` (0.2) are left out of
the loss: that is the release's comment; its code compares the *index* of the best entity with
0.2 (``torch.max(sim, dim=1)[1] < 0.2``), which leaves out only crops whose best entity is the
first one of the list.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from os import PathLike
from pathlib import Path

import torch
from torch import Tensor, nn

from meltr.backbones.alpro.checkpoint import load_alpro_checkpoint
from meltr.backbones.alpro.model import Alpro
from meltr.data.text import WordPieceTokenizer

logger = logging.getLogger(__name__)

VIDEO_PROMPT_TEMPLATES = (
    "A footage of a {}.",
    "A footage of the {}.",
    "A footage of one {}.",
    "A video of a {}.",
    "A video of the {}.",
    "A video of one {}.",
    "A portrait of a {}.",
    "A portrait of the {}.",
    "A portrait of one {}.",
    "A video footage of a {}.",
    "A video footage of the {}.",
    "A video footage of one {}.",
)
PROMPT_LENGTH = 15
IGNORE_THRESHOLD = 0.2
PROMPT_CHUNK = 512  # prompts encoded per text pass when building the prompt features


def read_entities(path: str | PathLike, limit: int | None = None) -> list[str]:
    """The first word of each non-empty line of ``path``, the first ``limit`` of them (all when
    None). ValueError naming the file when it is absent or has fewer than ``limit`` (or no)
    entities."""
    path = _existing(path, "entity file")
    entities = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    wanted = len(entities) if limit is None else limit
    if not entities or len(entities) < wanted:
        raise ValueError(f"entity file {path} lists {len(entities)} entities, {wanted} wanted")
    return entities[:wanted]


class EntityPrompter(nn.Module):
    """Soft entity labels of video crops: ``prompter(crop)`` with ``crop`` ``[B, T, 3, S, S]``
    (ImageNet-normalised) -> ``(soft_labels [B, E], keep [B] bool)``.

    ``model`` is the loaded prompter (an :class:`Alpro`); ``prompt_ids`` / ``prompt_mask``
    ``[K * E, L]`` hold the K templates of every entity, template-major (all entities of the
    first template, then of the second, ...). The prompt features and the temperature are
    computed once here. The module always stays in eval mode and needs no gradients.
    """

    def __init__(
        self,
        model: Alpro,
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        num_templates: int,
        ignore_threshold: float = IGNORE_THRESHOLD,
    ) -> None:
        super().__init__()
        if prompt_ids.shape[0] % num_templates:
            raise ValueError(
                f"{prompt_ids.shape[0]} prompts are not {num_templates} templates per entity"
            )
        self.model = model.eval().requires_grad_(False)
        self.ignore_threshold = ignore_threshold
        with torch.no_grad():
            features = torch.cat(
                [
                    model(mode="text", text_ids=ids, text_mask=mask)["text_feat"]
                    for ids, mask in zip(
                        prompt_ids.split(PROMPT_CHUNK), prompt_mask.split(PROMPT_CHUNK), strict=True
                    )
                ]
            )
            temperature = model(mode="temperature")["temperature"]
        prompt_feat = features.view(num_templates, -1, features.shape[1]).mean(dim=0)
        self.register_buffer("prompt_feat", prompt_feat)
        self.register_buffer("temperature", temperature.detach().clone())

    @property
    def num_entities(self) -> int:
        return self.prompt_feat.shape[0]

    def train(self, mode: bool = True) -> EntityPrompter:
        """Stays in eval mode (the release switches its prompter to eval before every use)."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, crop: Tensor) -> tuple[Tensor, Tensor]:
        features = self.model(mode="video", video=crop)["video_feat"]
        soft_labels = (features @ self.prompt_feat.T / self.temperature).softmax(dim=1)
        return soft_labels, soft_labels.max(dim=1).values >= self.ignore_threshold


def load_prompter(
    checkpoint: str | PathLike | None,
    entities: str | PathLike | None = None,
    vocab: str | PathLike | None = None,
    model: Callable[..., Alpro] = Alpro,
    num_entities: int | None = None,
    templates: Sequence[str] = VIDEO_PROMPT_TEMPLATES,
    ignore_threshold: float = IGNORE_THRESHOLD,
    trust_pickle: bool = False,
) -> EntityPrompter | None:
    """The PEM prompter of ``checkpoint`` (a prompter state dict, a pre-training file with
    ``prompter.*`` keys, or a meltr training checkpoint of a prompter), or None when
    ``checkpoint`` is None (the loss source then leaves PEM out and says so).

    ``model(vocab_size=..., num_entities=0, num_answers=0)`` builds the prompter's network (the
    recipe's ``Alpro``, so that it has ALPRO's sizes); ``vocab`` is its tokenizer's vocabulary;
    ``entities`` the entity file (:func:`read_entities`, the first ``num_entities``). Every
    weight the prompter uses must be in the file (ValueError naming the missing keys).
    """
    if checkpoint is None:
        return None
    if entities is None or vocab is None:
        raise ValueError("a prompter needs its entity file (entities) and vocabulary (vocab)")
    _existing(checkpoint, "prompter checkpoint (None leaves PEM out)")
    names = read_entities(entities, num_entities)
    tokenizer = WordPieceTokenizer(_existing(vocab, "vocabulary"), PROMPT_LENGTH)
    network = model(vocab_size=tokenizer.vocab_size, num_entities=0, num_answers=0)
    report = load_alpro_checkpoint(network, checkpoint, trust_pickle=trust_pickle, prompter=True)
    needed = _used_by_prompter(network)
    missing = [key for key in report.missing if key in needed]
    if missing:
        raise ValueError(f"prompter checkpoint {checkpoint} lacks weights it needs: {missing}")
    ids, mask = tokenizer.encode(
        [template.format(name) for template in templates for name in names]
    )
    logger.info(
        "PEM prompter from %s: %d entities x %d templates", checkpoint, len(names), len(templates)
    )
    return EntityPrompter(network, ids, mask, len(templates), ignore_threshold)


def _existing(path: str | PathLike, what: str) -> Path:
    """``path`` as a Path; ValueError naming it and ``what`` it should be when it is no file."""
    if not Path(path).is_file():
        raise ValueError(f"{what} {path} does not exist")
    return Path(path)


def _used_by_prompter(network: Alpro) -> set[str]:
    """The state-dict keys the prompter's passes read: the video encoder, the embeddings and
    text-only layers, both projections and the temperature."""
    text_only = tuple(
        f"text_encoder.bert.encoder.layer.{index}." for index in range(network.fusion_layer)
    )
    prefixes = ("visual_encoder.", "text_encoder.bert.embeddings.", "vision_proj.", "text_proj.")
    return {
        key for key in network.state_dict() if key.startswith(prefixes + text_only) or key == "temp"
    }
