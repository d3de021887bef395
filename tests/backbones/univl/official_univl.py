"""State dicts in the layout of the official ``univl.pretrained.bin``, written from the release's
module definitions (modeling.py, module_bert/visual/cross/decoder.py), at any sizes."""

import torch

TIED_GROUPS = (
    (
        "bert.embeddings.word_embeddings.weight",
        "decoder.embeddings.word_embeddings.weight",
        "decoder.classifier.cls.predictions.decoder.weight",
        "cls.predictions.decoder.weight",
    ),
    ("bert.embeddings.position_embeddings.weight", "decoder.embeddings.position_embeddings.weight"),
    ("visual.embeddings.word_embeddings.weight", "cls_visual.predictions.weight"),
)
TOWERS = (
    "bert",
    "visual",
    "cross",
    "decoder",
    "cls",
    "cls_visual",
    "similarity_dense",
    "normalize_video",
)


def _layer_norm(prefix, D):
    return {prefix + ".weight": (D,), prefix + ".bias": (D,)}


def _linear(prefix, out_features, in_features):
    return {prefix + ".weight": (out_features, in_features), prefix + ".bias": (out_features,)}


def _bert_layer(p, D, inner):
    shapes = {}
    for name in ("query", "key", "value"):
        shapes.update(_linear(f"{p}attention.self.{name}", D, D))
    shapes.update(_linear(p + "attention.output.dense", D, D))
    shapes.update(_layer_norm(p + "attention.output.LayerNorm", D))
    shapes.update(_linear(p + "intermediate.dense", inner, D))
    shapes.update(_linear(p + "output.dense", D, inner))
    shapes.update(_layer_norm(p + "output.LayerNorm", D))
    return shapes


def _decoder_layer(p, D, inner):
    shapes = {}
    for part in ("slf_attn", "enc_attn"):
        for name in ("query", "key", "value"):
            shapes.update(_linear(f"{p}{part}.att.{name}", D, D))
        shapes.update(_linear(f"{p}{part}.output.dense", D, D))
        shapes.update(_layer_norm(f"{p}{part}.output.LayerNorm", D))
    shapes.update(_linear(p + "intermediate.dense", inner, D))
    shapes.update(_linear(p + "output.dense", D, inner))
    shapes.update(_layer_norm(p + "output.LayerNorm", D))
    return shapes


def _token_head(p, D, V):
    return {
        **_linear(p + "transform.dense", D, D),
        **_layer_norm(p + "transform.LayerNorm", D),
        p + "decoder.weight": (V, D),
        p + "bias": (V,),
    }


def official_shapes(sizes: dict) -> dict:
    """Key -> shape of the release's UniVL with all heads, at ``UniVL(**sizes)``'s sizes."""
    V, D, inner, F = (
        sizes["vocab_size"],
        sizes["hidden_size"],
        sizes["intermediate_size"],
        sizes["video_dim"],
    )
    shapes = {
        "bert.embeddings.word_embeddings.weight": (V, D),
        "bert.embeddings.position_embeddings.weight": (sizes["max_text_positions"], D),
        "bert.embeddings.token_type_embeddings.weight": (2, D),
        **_layer_norm("bert.embeddings.LayerNorm", D),
    }
    for n in range(sizes["text_layers"]):
        shapes.update(_bert_layer(f"bert.encoder.layer.{n}.", D, inner))
    shapes.update(_linear("bert.pooler.dense", D, D))
    shapes.update(_linear("visual.embeddings.word_embeddings", D, F))
    shapes["visual.embeddings.position_embeddings.weight"] = (sizes["max_frame_positions"], D)
    shapes.update(_layer_norm("visual.embeddings.LayerNorm", D))
    for n in range(sizes["visual_layers"]):
        shapes.update(_bert_layer(f"visual.encoder.layer.{n}.", D, inner))
    shapes.update(_linear("visual.pooler.dense", D, D))
    shapes["cross.embeddings.position_embeddings.weight"] = (sizes["max_cross_positions"], D)
    shapes["cross.embeddings.token_type_embeddings.weight"] = (2, D)
    shapes.update(_layer_norm("cross.embeddings.LayerNorm", D))
    for n in range(sizes["cross_layers"]):
        shapes.update(_bert_layer(f"cross.encoder.layer.{n}.", D, inner))
    shapes.update(_linear("cross.pooler.dense", D, D))
    shapes["decoder.embeddings.word_embeddings.weight"] = (V, D)
    shapes["decoder.embeddings.position_embeddings.weight"] = (sizes["max_text_positions"], D)
    shapes.update(_layer_norm("decoder.embeddings.LayerNorm", D))
    for n in range(sizes["decoder_layers"]):
        shapes.update(_decoder_layer(f"decoder.decoder.layer.{n}.", D, inner))
    shapes.update(_token_head("decoder.classifier.cls.predictions.", D, V))
    shapes.update(_token_head("cls.predictions.", D, V))
    shapes.update(_linear("cls_visual.predictions.transform.dense", D, D))
    shapes.update(_layer_norm("cls_visual.predictions.transform.LayerNorm", D))
    shapes["cls_visual.predictions.weight"] = (D, F)
    shapes["cls_visual.predictions.bias"] = (F,)
    shapes.update(_linear("similarity_dense", 1, D))
    shapes.update(_layer_norm("normalize_video.visual_norm2d", F))
    return shapes


def official_state_dict(sizes: dict, towers=TOWERS, seed: int = 0) -> dict:
    """Random values under the official keys of ``towers`` (top-level module names), one tensor
    per tied group as ``torch.save`` of the release's model would store it."""
    generator = torch.Generator().manual_seed(seed)
    shapes = {k: s for k, s in official_shapes(sizes).items() if k.split(".")[0] in towers}
    state = {key: torch.randn(shape, generator=generator) for key, shape in shapes.items()}
    for group in TIED_GROUPS:
        present = [key for key in group if key in state]
        for key in present[1:]:
            state[key] = state[present[0]]
    return state
