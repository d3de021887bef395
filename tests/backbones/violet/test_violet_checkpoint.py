"""The Violet loaders against state dicts with the release's key names and shapes (built from
the upstream module definitions in official_violet.py, at the tiny sizes)."""

import logging

import pytest
import torch
from official_violet import RELEASE, random_state_dict, swin_shapes, violet_shapes
from violet_tiny import TINY_OFFICIAL, tiny_model

import meltr
from meltr.backbones.violet import load_video_swin_checkpoint, load_violet_checkpoint

POSITION_IDS = "enc_txt.emb_txt.position_ids"
HEADS = ("fc_mc.", "fc_oe.", "fc_cls.")


def save(tmp_path, state, name="ckpt_violet_pretrain.pt"):
    path = tmp_path / name
    torch.save(state, path)
    return path


def assert_landed(model, state, skip=()):
    ours = model.state_dict()
    for key, value in state.items():
        if key not in skip:
            assert ours[key].dtype == value.dtype, key
            torch.testing.assert_close(ours[key], value, rtol=0, atol=0, msg=key)


def test_release_key_counts():
    assert len(violet_shapes(**RELEASE)) == 569
    swin = {
        k: v for k, v in RELEASE.items() if k in ("embed", "depths", "heads", "window", "patch")
    }
    assert len(swin_shapes(**swin)) == 351


@pytest.mark.parametrize("position_ids", [True, False])
def test_every_pretrain_tensor_lands_and_only_task_heads_are_missing(
    tmp_path, caplog, position_ids
):
    state = random_state_dict(violet_shapes(**TINY_OFFICIAL, position_ids=position_ids))
    model = tiny_model(num_answers=7, num_classes=5)
    with caplog.at_level(logging.WARNING):
        report = load_violet_checkpoint(model, save(tmp_path, state))
    assert_landed(model, state, skip={POSITION_IDS})
    assert report.unexpected == [] and report.ignored == []
    assert sorted(report.missing) == sorted(
        k for k in model.state_dict() if k.startswith(("fc_oe.", "fc_cls."))
    )
    assert len(report.loaded) == len(state) - position_ids
    assert (POSITION_IDS in report.adapted) == position_ids
    assert "fc_oe.3.weight" in caplog.text


def test_multiple_choice_head_starts_from_the_matching_head(tmp_path):
    state = random_state_dict(violet_shapes(**TINY_OFFICIAL))
    path = save(tmp_path, state)
    model = tiny_model(multiple_choice=True)
    report = load_violet_checkpoint(model, path)
    for suffix in ("1.weight", "1.bias", "3.weight", "3.bias"):
        assert torch.equal(model.state_dict()["fc_mc." + suffix], state["fc." + suffix])
        assert "fc_mc." + suffix in report.adapted
    assert report.missing == []
    fresh = tiny_model(multiple_choice=True)
    report = load_violet_checkpoint(fresh, path, mc_head_from_vtm=False)
    assert sorted(report.missing) == [
        "fc_mc.1.bias",
        "fc_mc.1.weight",
        "fc_mc.3.bias",
        "fc_mc.3.weight",
    ]


def test_meltr_fine_tuned_files_with_prefixes_and_renamed_heads(tmp_path):
    """MELTR's violet/ QA files: ``fc_vtm`` for the matching head, ``fc_oe`` kept; a DataParallel
    ``module.`` prefix; a key the model lacks."""
    extra = [("fc_vtm", 1), ("fc_oe", 7)]
    shapes = violet_shapes(**TINY_OFFICIAL, heads_extra=extra)
    shapes = {k: v for k, v in shapes.items() if not k.startswith("fc.")}
    state = random_state_dict(shapes)
    state["enc_img.extra_table"] = torch.zeros(3)
    path = save(tmp_path, {f"module.{k}": v for k, v in state.items()}, "meltr_qaoe.pt")
    model = tiny_model(num_answers=7)
    report = load_violet_checkpoint(model, path)
    ours = model.state_dict()
    for key, value in state.items():
        target = "fc." + key[len("fc_vtm.") :] if key.startswith("fc_vtm.") else key
        if key not in (POSITION_IDS, "enc_img.extra_table"):
            assert torch.equal(ours[target], value), key
    assert report.unexpected == ["enc_img.extra_table"]
    assert report.missing == []
    assert report.adapted["fc.3.weight"] == "renamed from fc_vtm.3.weight"


def test_shape_mismatch_raises_or_is_skipped_as_the_release_does(tmp_path):
    state = random_state_dict(violet_shapes(**{**TINY_OFFICIAL, "codes": 13}))
    path = save(tmp_path, state)
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"'fc_mvm.3.weight' has shape \(13, 32\).*\(11, 32\)"):
        load_violet_checkpoint(model, path)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), "a failed load must not change the model"
    report = load_violet_checkpoint(model, path, skip_mismatched=True)
    assert sorted(report.ignored) == ["fc_mvm.3.bias", "fc_mvm.3.weight"]
    assert sorted(report.missing) == ["fc_mvm.3.bias", "fc_mvm.3.weight"]
    assert torch.equal(model.fc_mvm[3].weight, before["fc_mvm.3.weight"])
    assert_landed(model, state, skip={POSITION_IDS, "fc_mvm.3.weight", "fc_mvm.3.bias"})


def test_violet_files_hold_no_meta_network(tmp_path):
    path = save(tmp_path, random_state_dict(violet_shapes(**TINY_OFFICIAL)))
    with pytest.raises(ValueError, match="no meta network"):
        load_violet_checkpoint(tiny_model(), path, meta_loss=meltr.MetaLossTransformer(3))


def swin_sizes():
    return {k: TINY_OFFICIAL[k] for k in ("embed", "depths", "heads", "window", "patch")}


def test_video_swin_file_lands_in_enc_img_swin(tmp_path):
    state = random_state_dict(swin_shapes(**swin_sizes()))
    model = tiny_model()
    report = load_video_swin_checkpoint(model, save(tmp_path, state, "ckpt_video-swin.pt"))
    ours = model.state_dict()
    for key, value in state.items():
        torch.testing.assert_close(ours["enc_img.swin." + key], value, rtol=0, atol=0, msg=key)
    assert report.unexpected == [] and len(report.loaded) == len(state)
    assert sorted(report.missing) == sorted(k for k in ours if not k.startswith("enc_img.swin."))


def test_video_swin_in_the_mmaction_layout(tmp_path):
    state = random_state_dict(swin_shapes(**swin_sizes()))
    wrapped = {f"backbone.{k}": v for k, v in state.items()}
    wrapped["cls_head.fc_cls.weight"] = torch.zeros(400, 16)
    wrapped["cls_head.fc_cls.bias"] = torch.zeros(400)
    path = save(tmp_path, {"meta": {"epoch": 30}, "state_dict": wrapped}, "swin_small.pth")
    model = tiny_model()
    report = load_video_swin_checkpoint(model, path, trust_pickle=False)
    ours = model.state_dict()
    for key, value in state.items():
        assert torch.equal(ours["enc_img.swin." + key], value), key
    assert report.ignored == ["cls_head.fc_cls.weight", "cls_head.fc_cls.bias"]
    assert report.unexpected == []


def test_video_swin_of_another_window_is_refused(tmp_path):
    state = random_state_dict(swin_shapes(**{**swin_sizes(), "window": (2, 3, 3)}))
    with pytest.raises(ValueError, match="relative_position_bias_table"):
        load_video_swin_checkpoint(tiny_model(), save(tmp_path, state, "swin.pt"))
