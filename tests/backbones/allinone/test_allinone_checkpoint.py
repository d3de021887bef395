import argparse
import logging

import pytest
import torch
from allinone_tiny import TINY
from official_allinone import official_state_dict, save_lightning
from torch import nn

import meltr
from meltr.backbones.allinone import AllInOne, load_allinone_checkpoint


def test_every_official_tensor_lands_in_place(tmp_path, caplog):
    state = official_state_dict(TINY)
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
    state = official_state_dict(TINY)
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
    state = official_state_dict(TINY, frames=frames)
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
    longer = official_state_dict(TINY, text_positions=12)
    model = AllInOne(**TINY)
    load_allinone_checkpoint(model, save_lightning(tmp_path, longer, name="long.ckpt"))
    torch.testing.assert_close(model.state_dict()[key], longer[key][:8])

    shorter = official_state_dict(TINY, text_positions=5)
    model = AllInOne(**TINY)
    before = model.state_dict()[key].clone()
    report = load_allinone_checkpoint(model, save_lightning(tmp_path, shorter, name="short.ckpt"))
    after = model.state_dict()[key]
    torch.testing.assert_close(after[:5], shorter[key])
    torch.testing.assert_close(after[5:], before[5:])
    assert "kept" in report.adapted[key]


def test_irreconcilable_shape_names_key_and_both_shapes(tmp_path):
    state = official_state_dict(TINY)
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
    state = official_state_dict(TINY)
    state.update({f"aux_model.{k}": v for k, v in release.state_dict().items()})
    path = save_lightning(tmp_path, state, prefix="model.")

    report = load_allinone_checkpoint(AllInOne(**TINY), path)
    assert len(report.ignored) == len(release.state_dict())
    assert report.unexpected == []

    meta_loss = meltr.MetaLossTransformer(2, dropout=0.0).eval()  # the default init="sum"
    report = load_allinone_checkpoint(AllInOne(**TINY), path, meta_loss=meta_loss)
    losses = torch.tensor([0.7, 2.3])
    with torch.no_grad():
        torch.testing.assert_close(meta_loss(losses), release(losses))
    assert "aux_model.task_embedding.weight" in report.loaded
    assert meta_loss.init == "paper"

    untouched = AllInOne(**TINY)
    before = {k: v.clone() for k, v in untouched.state_dict().items()}
    with pytest.raises(ValueError, match="aux_model"):
        load_allinone_checkpoint(untouched, path, meta_loss=meltr.MetaLossTransformer(3))
    assert all(torch.equal(v, before[k]) for k, v in untouched.state_dict().items())


def test_pickled_objects_are_refused_unless_trusted(tmp_path):
    path = tmp_path / "with_hparams.ckpt"
    torch.save(
        {"hparams": argparse.Namespace(lr=1e-4), "state_dict": official_state_dict(TINY)}, path
    )
    with pytest.raises(ValueError, match="trust_pickle"):
        load_allinone_checkpoint(AllInOne(**TINY), path)
    report = load_allinone_checkpoint(AllInOne(**TINY), path, trust_pickle=True)
    assert report.unexpected == [] and len(report.missing) == 2


def test_file_without_weights_is_refused(tmp_path):
    path = tmp_path / "not_weights.pt"
    torch.save({"epoch": 1, "notes": "nothing here"}, path)
    with pytest.raises(ValueError, match="state dict"):
        load_allinone_checkpoint(AllInOne(**TINY), path)


def test_one_of_our_training_checkpoints_initialises_a_model(tmp_path):
    torch.manual_seed(3)
    trained = AllInOne(**TINY)
    torch.save({"format": "meltr-train", "model": trained.state_dict()}, tmp_path / "last.pt")
    model = AllInOne(**TINY)
    report = load_allinone_checkpoint(model, tmp_path / "last.pt")
    assert report.missing == [] and report.unexpected == []
    for key, value in trained.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
