"""Key names and shapes of the ALPRO release's checkpoint files, enumerated from the upstream
module definitions (salesforce/ALPRO ``src/modeling/alpro_models.py``: ``AlproBaseModel``,
``AlproForPretrain``, ``Prompter``, ``AlproForSequenceClassification``; ``timesformer/vit.py``:
``VisionTransformer`` with ``qkv_bias=True``, ``num_classes=400``, divided space-time blocks;
``xbert.py``: HF ``BertForMaskedLM`` / ``BertModel`` without pooler, no cross-attention), at any
sizes. ``position_ids`` is the HF embeddings' persistent buffer of transformers < 4.31."""

import torch

RELEASE = dict(
    vocab=30522,
    positions=512,
    width=768,
    layers=12,
    inner=3072,
    patch=16,
    patches=196,
    frames=4,
    depth=12,
    mlp=3072,
    proj=256,
)
RELEASE_ENTITIES = 1000
KINETICS_CLASSES = 400


def _linear(prefix: str, outputs: int, inputs: int) -> dict[str, tuple]:
    return {prefix + "weight": (outputs, inputs), prefix + "bias": (outputs,)}


def _norm(prefix: str, width: int) -> dict[str, tuple]:
    return {prefix + "weight": (width,), prefix + "bias": (width,)}


def _mlp_head(prefix: str, width: int, outputs: int) -> dict[str, tuple]:
    return _linear(prefix + "0.", 2 * width, width) | _linear(prefix + "2.", outputs, 2 * width)


def timesformer_shapes(width, patch, patches, frames, depth, mlp) -> dict[str, tuple]:
    """``visual_encoder.model.*``: the TimeSformer ``VisionTransformer`` with its head."""
    p = "visual_encoder.model."
    shapes = {
        p + "cls_token": (1, 1, width),
        p + "pos_embed": (1, patches + 1, width),
        p + "time_embed": (1, frames, width),
        p + "patch_embed.proj.weight": (width, 3, patch, patch),
        p + "patch_embed.proj.bias": (width,),
    }
    for block in range(depth):
        b = f"{p}blocks.{block}."
        for attention in ("attn.", "temporal_attn."):
            shapes |= _linear(b + attention + "qkv.", 3 * width, width)
            shapes |= _linear(b + attention + "proj.", width, width)
        for norm in ("norm1.", "temporal_norm1.", "norm2."):
            shapes |= _norm(b + norm, width)
        shapes |= _linear(b + "temporal_fc.", width, width)
        shapes |= _linear(b + "mlp.fc1.", mlp, width) | _linear(b + "mlp.fc2.", width, mlp)
    return shapes | _norm(p + "norm.", width) | _linear(p + "head.", KINETICS_CLASSES, width)


def bert_shapes(
    prefix, vocab, positions, width, layers, inner, position_ids=True
) -> dict[str, tuple]:
    """HF ``BertModel(add_pooling_layer=False)`` under ``prefix``."""
    e = prefix + "embeddings."
    shapes = {
        e + "word_embeddings.weight": (vocab, width),
        e + "position_embeddings.weight": (positions, width),
        e + "token_type_embeddings.weight": (2, width),
    } | _norm(e + "LayerNorm.", width)
    if position_ids:
        shapes[e + "position_ids"] = (1, positions)
    for layer in range(layers):
        a = f"{prefix}encoder.layer.{layer}."
        for name in ("query", "key", "value"):
            shapes |= _linear(f"{a}attention.self.{name}.", width, width)
        shapes |= _linear(a + "attention.output.dense.", width, width)
        shapes |= _norm(a + "attention.output.LayerNorm.", width)
        shapes |= _linear(a + "intermediate.dense.", inner, width)
        shapes |= _linear(a + "output.dense.", width, inner) | _norm(a + "output.LayerNorm.", width)
    return shapes


def base_shapes(
    vocab, positions, width, layers, inner, patch, patches, frames, depth, mlp, proj, **kw
):
    """``AlproBaseModel.state_dict()`` with its ``BertForMaskedLM`` text encoder."""
    shapes = timesformer_shapes(width, patch, patches, frames, depth, mlp)
    shapes |= bert_shapes("text_encoder.bert.", vocab, positions, width, layers, inner, **kw)
    c = "text_encoder.cls.predictions."
    shapes |= {
        c + "bias": (vocab,),
        c + "decoder.weight": (vocab, width),
        c + "decoder.bias": (vocab,),
    }
    shapes |= _linear(c + "transform.dense.", width, width) | _norm(
        c + "transform.LayerNorm.", width
    )
    shapes |= (
        {"temp": ()} | _linear("vision_proj.", proj, width) | _linear("text_proj.", proj, width)
    )
    return shapes | _linear("itm_head.", 2, width)


def prompter_shapes(entities: int, **sizes) -> dict[str, tuple]:
    """``Prompter.state_dict()``: the base model and its two prompt-feature buffers."""
    features = {
        name: (entities, sizes["proj"]) for name in ("video_prompt_feat", "image_prompt_feat")
    }
    return base_shapes(**sizes) | features


def pretrain_shapes(entities: int, with_prompter: bool = True, **sizes) -> dict[str, tuple]:
    """``AlproForPretrain.state_dict()`` (``alpro_pretrain.pt``): the base model, ``mpm_head``
    and, as a submodule, the prompter."""
    shapes = base_shapes(**sizes) | _mlp_head("mpm_head.", sizes["width"], entities)
    if with_prompter:
        prompter = prompter_shapes(entities, **sizes)
        shapes |= {"prompter." + key: shape for key, shape in prompter.items()}
    return shapes


def qa_shapes(answers: int, **sizes) -> dict[str, tuple]:
    """``AlproForSequenceClassification.state_dict()``: the base model with a ``BertModel`` text
    encoder (``text_encoder.*``, no MLM head) and the ``classifier``."""
    shapes = timesformer_shapes(
        **{k: sizes[k] for k in ("width", "patch", "patches", "frames", "depth", "mlp")}
    )
    text = {k: sizes[k] for k in ("vocab", "positions", "width", "layers", "inner")}
    shapes |= bert_shapes("text_encoder.", **text)
    shapes |= {"temp": ()} | _linear("vision_proj.", sizes["proj"], sizes["width"])
    shapes |= _linear("text_proj.", sizes["proj"], sizes["width"])
    shapes |= _linear("itm_head.", 2, sizes["width"])
    return shapes | _mlp_head("classifier.", sizes["width"], answers)


def random_state_dict(shapes: dict[str, tuple], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors of ``shapes`` (``position_ids`` int64 ``0 .. n - 1``; ``temp`` 0.05;
    the tied MLM decoder equal to the word embeddings, as in a file HF saved)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("position_ids"):
            state[key] = torch.arange(shape[1]).expand(shape).clone()
        elif key.endswith("temp"):
            state[key] = torch.tensor(0.05)
        else:
            state[key] = torch.randn(shape, generator=generator)
    for key in [k for k in state if k.endswith("cls.predictions.decoder.weight")]:
        state[key] = state[
            key.replace("cls.predictions.decoder", "bert.embeddings.word_embeddings")
        ]
    for key in [k for k in state if k.endswith("cls.predictions.decoder.bias")]:
        state[key] = state[key.replace("decoder.bias", "bias")]
    return state
