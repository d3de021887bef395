"""Key names and shapes of the Violet release's checkpoint files, enumerated from the upstream
module definitions (tsujuifu/pytorch_violet ``model.py`` / ``video_swin.py``, MELTR's violet/
``main_*.py``, HF ``BertEmbeddings`` / ``BertEncoder`` / ``BertOnlyMLMHead``), at any sizes.

At the release's sizes ``violet_shapes()`` has 569 entries (``ckpt_violet_pretrain.pt``,
``position_ids`` included), ``swin_shapes()`` 351 (``ckpt_video-swin.pt``).
"""

import torch

RELEASE = dict(
    vocab=30522,
    positions=512,
    width=768,
    layers=12,
    inner=3072,
    embed=96,
    depths=(2, 2, 18, 2),
    heads=(3, 6, 12, 24),
    window=(8, 7, 7),
    patch=(2, 4, 4),
    frames=6,
    grid=14,
    codes=8192,
)


def swin_shapes(embed, depths, heads, window, patch) -> dict[str, tuple]:
    """``SwinTransformer3D.state_dict()`` of the release: patch embedding (Conv3d + LayerNorm,
    ``patch_norm=True``), per stage the blocks (norm1, attn with its bias table and persistent
    index buffer, norm2, mlp) and a PatchMerging except after the last stage, final norm."""
    shapes = {
        "patch_embed.proj.weight": (embed, 3, *patch),
        "patch_embed.proj.bias": (embed,),
        "patch_embed.norm.weight": (embed,),
        "patch_embed.norm.bias": (embed,),
    }
    table = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
    tokens = window[0] * window[1] * window[2]
    for stage, (depth, stage_heads) in enumerate(zip(depths, heads, strict=True)):
        dim = embed * 2**stage
        for block in range(depth):
            p = f"layers.{stage}.blocks.{block}."
            shapes.update(
                {
                    p + "norm1.weight": (dim,),
                    p + "norm1.bias": (dim,),
                    p + "attn.relative_position_bias_table": (table, stage_heads),
                    p + "attn.relative_position_index": (tokens, tokens),
                    p + "attn.qkv.weight": (3 * dim, dim),
                    p + "attn.qkv.bias": (3 * dim,),
                    p + "attn.proj.weight": (dim, dim),
                    p + "attn.proj.bias": (dim,),
                    p + "norm2.weight": (dim,),
                    p + "norm2.bias": (dim,),
                    p + "mlp.fc1.weight": (4 * dim, dim),
                    p + "mlp.fc1.bias": (4 * dim,),
                    p + "mlp.fc2.weight": (dim, 4 * dim),
                    p + "mlp.fc2.bias": (dim,),
                }
            )
        if stage < len(depths) - 1:
            p = f"layers.{stage}.downsample."
            shapes.update(
                {
                    p + "reduction.weight": (2 * dim, 4 * dim),
                    p + "norm.weight": (4 * dim,),
                    p + "norm.bias": (4 * dim,),
                }
            )
    final = embed * 2 ** (len(depths) - 1)
    shapes.update({"norm.weight": (final,), "norm.bias": (final,)})
    return shapes


def _mlp_head(prefix, width, outputs):
    return {
        prefix + "1.weight": (2 * width, width),
        prefix + "1.bias": (2 * width,),
        prefix + "3.weight": (outputs, 2 * width),
        prefix + "3.bias": (outputs,),
    }


def violet_shapes(
    vocab,
    positions,
    width,
    layers,
    inner,
    embed,
    depths,
    heads,
    window,
    patch,
    frames,
    grid,
    codes,
    position_ids=True,
    heads_extra=(),
) -> dict[str, tuple]:
    """``VIOLET_Pretrain.state_dict()`` (= ``ckpt_violet_pretrain.pt``): ``enc_img``
    (``EncImg``), ``enc_txt.emb_txt`` (HF BertEmbeddings, with its persistent ``position_ids``
    buffer before transformers 4.31), ``trsfr`` (HF BertEncoder), ``fc`` (VTM), ``fc_mtm``
    (HF BertOnlyMLMHead of a separate BertForMaskedLM: untied decoder, ``decoder.bias`` the same
    tensor as ``bias``), ``fc_mvm``. ``heads_extra``: ``(name, outputs)`` of fine-tuning heads
    built like ``fc`` (MELTR's ``fc_mc``, ``fc_oe``)."""
    shapes = {
        "enc_img.emb_cls": (1, 1, 1, width),
        "enc_img.emb_pos": (1, 1, 1 + grid**2, width),
        "enc_img.emb_len": (1, frames, 1, width),
    }
    shapes.update(
        {
            "enc_img.swin." + k: v
            for k, v in swin_shapes(embed, depths, heads, window, patch).items()
        }
    )
    shapes.update({"enc_img.norm.weight": (width,), "enc_img.norm.bias": (width,)})
    text = "enc_txt.emb_txt."
    if position_ids:
        shapes[text + "position_ids"] = (1, positions)
    shapes.update(
        {
            text + "word_embeddings.weight": (vocab, width),
            text + "position_embeddings.weight": (positions, width),
            text + "token_type_embeddings.weight": (2, width),
            text + "LayerNorm.weight": (width,),
            text + "LayerNorm.bias": (width,),
        }
    )
    for layer in range(layers):
        p = f"trsfr.layer.{layer}."
        for name in ("query", "key", "value"):
            shapes[p + f"attention.self.{name}.weight"] = (width, width)
            shapes[p + f"attention.self.{name}.bias"] = (width,)
        shapes.update(
            {
                p + "attention.output.dense.weight": (width, width),
                p + "attention.output.dense.bias": (width,),
                p + "attention.output.LayerNorm.weight": (width,),
                p + "attention.output.LayerNorm.bias": (width,),
                p + "intermediate.dense.weight": (inner, width),
                p + "intermediate.dense.bias": (inner,),
                p + "output.dense.weight": (width, inner),
                p + "output.dense.bias": (width,),
                p + "output.LayerNorm.weight": (width,),
                p + "output.LayerNorm.bias": (width,),
            }
        )
    shapes.update(_mlp_head("fc.", width, 1))
    shapes.update(
        {
            "fc_mtm.predictions.bias": (vocab,),
            "fc_mtm.predictions.transform.dense.weight": (width, width),
            "fc_mtm.predictions.transform.dense.bias": (width,),
            "fc_mtm.predictions.transform.LayerNorm.weight": (width,),
            "fc_mtm.predictions.transform.LayerNorm.bias": (width,),
            "fc_mtm.predictions.decoder.weight": (vocab, width),
            "fc_mtm.predictions.decoder.bias": (vocab,),
        }
    )
    shapes.update(_mlp_head("fc_mvm.", width, codes))
    for name, outputs in heads_extra:
        shapes.update(_mlp_head(f"{name}.", width, outputs))
    return shapes


def random_state_dict(shapes: dict[str, tuple], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random float32 values (int64 for index buffers and ``position_ids``); the MLM decoder's
    bias is the same tensor as ``fc_mtm.predictions.bias``, as in every HF-saved file."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("relative_position_index") or key.endswith("position_ids"):
            state[key] = torch.randint(0, 1000, shape, generator=generator)
        else:
            state[key] = torch.randn(shape, generator=generator)
    if "fc_mtm.predictions.bias" in state:
        state["fc_mtm.predictions.decoder.bias"] = state["fc_mtm.predictions.bias"]
    return state
