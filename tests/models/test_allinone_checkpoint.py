import argparse
import logging

import pytest
import torch
from allinone_tiny import TINY
from torch import nn

import meltr
from meltr.models import AllInOne, load_allinone_checkpoint


def official_state_dict(frames=3, text_positions=TINY["max_text_len"], seed=0):
    """A state dict with the key names and layout of ``all-in-one-plus-224.ckpt`` (listed in
    BACKBONES.md and the release's model code) at tiny sizes, random values."""
    D, V, proj = TINY["width"], TINY["vocab_size"], TINY["proj_dim"]
    p = TINY["patch_size"]
    tokens = (TINY["image_size"] // p) ** 2 + 1
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
    for n in range(TINY["depth"]):
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
                block + "mlp.fc1.weight": (4 * D, D),
                block + "mlp.fc1.bias": (4 * D,),
                block + "mlp.fc2.weight": (D, 4 * D),
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


def test_every_official_tensor_lands_in_place(tmp_path, caplog):
    state = official_state_dict()
    path = save_lightning(tmp_path, state)
    model = AllInOne(**TINY)
    with caplog.at_level(logging.WARNING):
        report = load_allinone_checkpoint(model, path)
    ours = model.state_dict()
    for key, value in state.items():
        if key != "text_embeddings.position_ids":
            torch.testing.assert_close(ours[key], value, rtol=0, atol=0, msg=key)
    assert sorted(report.missing) == ["vtm_score.bias", "vtm_score.weight"]
    assert report.unexpected == []
    assert "text_embeddings.position_ids" in report.adapted
    assert len(report.loaded) == len(state) - 1
    assert "vtm_score.weight" in caplog.text


def test_prefixes_and_unexpected_keys_in_a_plain_state_dict(tmp_path):
    state = official_state_dict()
    state["itm_score.fc.weight"] = torch.randn(2, TINY["width"])
    state["itm_score.fc.bias"] = torch.randn(2)
    state["mpp_score.decoder.weight"] = torch.randn(3, TINY["width"])
    path = tmp_path / "plain.pt"
    torch.save({f"module.model.{k}": v for k, v in state.items()}, path)
    model = AllInOne(**TINY)
    report = load_allinone_checkpoint(model, path)
    assert report.missing == []
    assert report.unexpected == ["mpp_score.decoder.weight"]
    torch.testing.assert_close(model.vtm_score.weight.detach(), state["itm_score.fc.weight"])
    torch.testing.assert_close(
        model.transformer.blocks[1].attn.qkv.weight.detach(),
        state["transformer.blocks.1.attn.qkv.weight"],
    )


@pytest.mark.parametrize("frames", [2, 5])
def test_temporal_embedding_is_cropped_or_zero_padded(tmp_path, frames):
    state = official_state_dict(frames=frames)
    model = AllInOne(**TINY)
    report = load_allinone_checkpoint(model, save_lightning(tmp_path, state))
    loaded = model.transformer.temporal_embed.detach()
    source = state["transformer.temporal_embed"]
    if frames > 3:
        torch.testing.assert_close(loaded, source[:, :3])
    else:
        torch.testing.assert_close(loaded[:, :2], source)
        assert torch.equal(loaded[:, 2], torch.zeros(1, TINY["width"]))
    assert "transformer.temporal_embed" in report.adapted


def test_text_position_table_of_another_length(tmp_path):
    key = "text_embeddings.position_embeddings.weight"
    longer = official_state_dict(text_positions=12)
    model = AllInOne(**TINY)
    load_allinone_checkpoint(model, save_lightning(tmp_path, longer, name="long.ckpt"))
    torch.testing.assert_close(model.state_dict()[key], longer[key][:8])

    shorter = official_state_dict(text_positions=5)
    model = AllInOne(**TINY)
    before = model.state_dict()[key].clone()
    report = load_allinone_checkpoint(model, save_lightning(tmp_path, shorter, name="short.ckpt"))
    after = model.state_dict()[key]
    torch.testing.assert_close(after[:5], shorter[key])
    torch.testing.assert_close(after[5:], before[5:])
    assert "kept" in report.adapted[key]


def test_irreconcilable_shape_names_key_and_both_shapes(tmp_path):
    state = official_state_dict()
    state["transformer.blocks.0.attn.qkv.weight"] = torch.randn(5, TINY["width"])
    model = AllInOne(**TINY)
    with pytest.raises(ValueError) as error:
        load_allinone_checkpoint(model, save_lightning(tmp_path, state))
    message = str(error.value)
    assert "transformer.blocks.0.attn.qkv.weight" in message
    assert "(5, 32)" in message and "(96, 32)" in message


class ReleaseMeltr(nn.Module):
    """The release's meta network layout (allinone/AllInOne/modules/meltr.py), for the test."""

    def __init__(self, tasks=2, hidden=128, dim=128, ff=128):
        super().__init__()
        self.task_embedding = nn.Embedding(tasks, dim)
        self.loss_fc1 = nn.Linear(1, hidden)
        self.loss_fc2 = nn.Linear(hidden, dim)
        self.encoder = nn.TransformerEncoderLayer(
            dim, nhead=8, dim_feedforward=ff, dropout=0.0, batch_first=True
        )
        self.fc1 = nn.Linear(dim, 1, bias=False)

    def forward(self, losses):
        scale = self.loss_fc2(torch.relu(self.loss_fc1(losses[None, :, None])))
        return self.fc1(self.encoder(scale + self.task_embedding.weight).mean(1))[0, 0]


def test_aux_model_goes_into_the_meta_loss_only_when_given(tmp_path):
    torch.manual_seed(3)
    release = ReleaseMeltr().eval()
    with torch.no_grad():
        for parameter in release.parameters():
            parameter.normal_(0.0, 0.3)
    state = official_state_dict()
    state.update({f"aux_model.{k}": v for k, v in release.state_dict().items()})
    path = save_lightning(tmp_path, state, prefix="model.")

    report = load_allinone_checkpoint(AllInOne(**TINY), path)
    assert len(report.ignored) == len(release.state_dict())
    assert report.unexpected == []

    meta_loss = meltr.MetaLossTransformer(2, dropout=0.0).eval()
    report = load_allinone_checkpoint(AllInOne(**TINY), path, meta_loss=meta_loss)
    losses = torch.tensor([0.7, 2.3])
    with torch.no_grad():
        torch.testing.assert_close(meta_loss(losses), release(losses))
    assert "aux_model.task_embedding.weight" in report.loaded

    untouched = AllInOne(**TINY)
    before = {k: v.clone() for k, v in untouched.state_dict().items()}
    with pytest.raises(ValueError, match="aux_model"):
        load_allinone_checkpoint(untouched, path, meta_loss=meltr.MetaLossTransformer(3))
    assert all(torch.equal(v, before[k]) for k, v in untouched.state_dict().items())


def test_pickled_objects_are_refused_unless_trusted(tmp_path):
    path = tmp_path / "with_hparams.ckpt"
    torch.save({"hparams": argparse.Namespace(lr=1e-4), "state_dict": official_state_dict()}, path)
    with pytest.raises(ValueError, match="trust_pickle"):
        load_allinone_checkpoint(AllInOne(**TINY), path)
    report = load_allinone_checkpoint(AllInOne(**TINY), path, trust_pickle=True)
    assert report.unexpected == [] and len(report.missing) == 2


def test_file_without_weights_is_refused(tmp_path):
    path = tmp_path / "not_weights.pt"
    torch.save({"epoch": 1, "notes": "nothing here"}, path)
    with pytest.raises(ValueError, match="state dict"):
        load_allinone_checkpoint(AllInOne(**TINY), path)
