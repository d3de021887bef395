"""A tiny BERT written in the Hugging Face layout (the key names listed here, not taken from meltr),
and a reference forward computed from its tensors with plain tensor algebra."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

WORDS = (
    "a man is eating food . piece of bread the movie film was good bad great awful fun dull "
    "story plot actors and but not very boring"
).split()
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "##s", "##ly"]
CONFIG = {
    "architectures": ["BertModel"],
    "model_type": "bert",
    "vocab_size": len(VOCAB),
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 24,
    "max_position_embeddings": 24,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "position_embedding_type": "absolute",
}


def hf_bert_state(config: dict, seed: int = 0, mlm_head: bool = False) -> dict[str, torch.Tensor]:
    """Random tensors under the names of ``transformers``' ``BertModel`` (with ``mlm_head``:
    ``BertForMaskedLM``, keys prefixed ``bert.`` plus ``cls.predictions.*``, decoder tied)."""
    generator = torch.Generator().manual_seed(seed)
    hidden, inner = config["hidden_size"], config["intermediate_size"]

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 0.2

    def norm(prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": 1 + rand(hidden), f"{prefix}.bias": rand(hidden)}

    def linear(prefix: str, out: int, into: int) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": rand(out, into), f"{prefix}.bias": rand(out)}

    state = {
        "embeddings.word_embeddings.weight": rand(config["vocab_size"], hidden),
        "embeddings.position_embeddings.weight": rand(config["max_position_embeddings"], hidden),
        "embeddings.token_type_embeddings.weight": rand(config["type_vocab_size"], hidden),
        "embeddings.position_ids": torch.arange(config["max_position_embeddings"])[None],
        **norm("embeddings.LayerNorm"),
        **linear("pooler.dense", hidden, hidden),
    }
    for i in range(config["num_hidden_layers"]):
        layer = f"encoder.layer.{i}"
        for name in ("query", "key", "value"):
            state |= linear(f"{layer}.attention.self.{name}", hidden, hidden)
        state |= linear(f"{layer}.attention.output.dense", hidden, hidden)
        state |= norm(f"{layer}.attention.output.LayerNorm")
        state |= linear(f"{layer}.intermediate.dense", inner, hidden)
        state |= linear(f"{layer}.output.dense", hidden, inner)
        state |= norm(f"{layer}.output.LayerNorm")
    if not mlm_head:
        return state
    state = {f"bert.{key}": value for key, value in state.items()}
    bias = rand(config["vocab_size"])
    return state | {
        **linear("cls.predictions.transform.dense", hidden, hidden),
        **norm("cls.predictions.transform.LayerNorm"),
        "cls.predictions.bias": bias,
        "cls.predictions.decoder.bias": bias.clone(),
        "cls.predictions.decoder.weight": state["bert.embeddings.word_embeddings.weight"].clone(),
    }


def write_tiny_bert(
    folder: Path,
    config: dict | None = None,
    state: dict[str, torch.Tensor] | None = None,
    weights: str = "model.safetensors",
    vocab: str = "vocab.txt",
) -> Path:
    """``folder`` with ``config.json``, the weights (safetensors or torch) and the vocabulary
    (``vocab.txt`` or a WordPiece ``tokenizer.json``)."""
    config = dict(CONFIG if config is None else config)
    state = hf_bert_state(config) if state is None else state
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    if weights.endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / weights))
    else:
        torch.save(state, folder / weights)
    if vocab == "vocab.txt":
        (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    else:
        model = {"type": "WordPiece", "vocab": {token: i for i, token in enumerate(VOCAB)}}
        (folder / "tokenizer.json").write_text(json.dumps({"model": model}))
    return folder


def _layer_norm(x: torch.Tensor, state: dict, prefix: str, eps: float) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    variance = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(variance + eps) * state[f"{prefix}.weight"] + state[
        f"{prefix}.bias"
    ]


def _dense(x: torch.Tensor, state: dict, prefix: str) -> torch.Tensor:
    return x @ state[f"{prefix}.weight"].T + state[f"{prefix}.bias"]


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def reference_hidden(state: dict, config: dict, ids: torch.Tensor, mask: torch.Tensor):
    """BERT's last layer ``[B, L, H]`` from the checkpoint's tensors (``BertModel`` names), no
    dropout: embeddings (token type 0), then post-norm layers with softmax attention over the
    unmasked keys and an erf GELU."""
    eps, heads = config["layer_norm_eps"], config["num_attention_heads"]
    batch, length = ids.shape
    x = (
        state["embeddings.word_embeddings.weight"][ids]
        + state["embeddings.position_embeddings.weight"][:length]
        + state["embeddings.token_type_embeddings.weight"][0]
    )
    x = _layer_norm(x, state, "embeddings.LayerNorm", eps)
    blocked = (mask == 0)[:, None, None, :]
    for i in range(config["num_hidden_layers"]):
        layer = f"encoder.layer.{i}"

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, heads, -1).transpose(1, 2)

        q, k, v = (
            split(_dense(x, state, f"{layer}.attention.self.{n}"))
            for n in ("query", "key", "value")
        )
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        probabilities = torch.softmax(scores.masked_fill(blocked, float("-inf")), dim=-1)
        context = (probabilities @ v).transpose(1, 2).reshape(batch, length, -1)
        attended = _layer_norm(
            _dense(context, state, f"{layer}.attention.output.dense") + x,
            state,
            f"{layer}.attention.output.LayerNorm",
            eps,
        )
        inner = _gelu(_dense(attended, state, f"{layer}.intermediate.dense"))
        x = _layer_norm(
            _dense(inner, state, f"{layer}.output.dense") + attended,
            state,
            f"{layer}.output.LayerNorm",
            eps,
        )
    return x


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of ``hidden`` over the positions where ``mask`` is 1."""
    weights = mask.to(hidden.dtype)[..., None]
    return (hidden * weights).sum(1) / weights.sum(1)
