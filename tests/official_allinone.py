"""Builders of files in the official All-in-one checkpoint format, shared by tests."""

import torch


def official_state_dict(
    sizes: dict, frames: int = 3, text_positions: int | None = None, seed: int = 0
):
    """A state dict with the key names and layout of ``all-in-one-plus-224.ckpt`` (listed in
    BACKBONES.md and the release's model code) at the given ``AllInOne`` sizes, random values.

    ``text_positions`` defaults to ``sizes["max_text_len"]``."""
    text_positions = sizes["max_text_len"] if text_positions is None else text_positions
    D, V, proj = sizes["width"], sizes["vocab_size"], sizes["proj_dim"]
    p = sizes["patch_size"]
    hidden = int(sizes.get("mlp_ratio", 4.0) * D)
    tokens = (sizes["image_size"] // p) ** 2 + 1
    shapes = {
        "text_embeddings.word_embeddings.weight": (V, D),
        "text_embeddings.position_embeddings.weight": (text_positions, D),
        "text_embeddings.token_type_embeddings.weight": (2, D),
        "text_embeddings.LayerNorm.weight": (D,),
        "text_embeddings.LayerNorm.bias": (D,),
        "token_type_embeddings.weight": (2, D),
        "transformer.cls_token": (1, 1, D),
        "transformer.pos_embed": (1, tokens, D),
        "transformer.temporal_embed": (1, frames, D),
        "transformer.patch_embed.proj.weight": (D, 3, p, p),
        "transformer.patch_embed.proj.bias": (D,),
        "transformer.norm.weight": (D,),
        "transformer.norm.bias": (D,),
        "pooler.dense.weight": (D, D),
        "pooler.dense.bias": (D,),
        "mlm_score.transform.dense.weight": (D, D),
        "mlm_score.transform.dense.bias": (D,),
        "mlm_score.transform.LayerNorm.weight": (D,),
        "mlm_score.transform.LayerNorm.bias": (D,),
        "mlm_score.decoder.weight": (V, D),
        "mlm_score.bias": (V,),
        "txt_proj.weight": (proj, D),
        "txt_proj.bias": (proj,),
        "vid_proj.weight": (proj, D),
        "vid_proj.bias": (proj,),
    }
    for n in range(sizes["depth"]):
        block = f"transformer.blocks.{n}."
        shapes.update(
            {
                block + "norm1.weight": (D,),
                block + "norm1.bias": (D,),
                block + "attn.qkv.weight": (3 * D, D),
                block + "attn.qkv.bias": (3 * D,),
                block + "attn.proj.weight": (D, D),
                block + "attn.proj.bias": (D,),
                block + "norm2.weight": (D,),
                block + "norm2.bias": (D,),
                block + "mlp.fc1.weight": (hidden, D),
                block + "mlp.fc1.bias": (hidden,),
                block + "mlp.fc2.weight": (D, hidden),
                block + "mlp.fc2.bias": (D,),
            }
        )
    generator = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(shape, generator=generator) for k, shape in shapes.items()}
    state["text_embeddings.position_ids"] = torch.arange(text_positions)[None]
    return state


def save_lightning(tmp_path, state, prefix="", name="model.ckpt"):
    path = tmp_path / name
    wrapped = {f"{prefix}{k}": v for k, v in state.items()}
    torch.save({"epoch": 9, "global_step": 1234, "state_dict": wrapped}, path)
    return path
