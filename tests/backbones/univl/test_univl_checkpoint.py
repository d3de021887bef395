import pytest
import torch
from official_univl import TIED_GROUPS, official_state_dict
from univl_tiny import TINY

import meltr
from meltr.backbones.univl import UniVL, load_univl_checkpoint

HEADS = ("cross", "decoder", "cls", "cls_visual", "similarity_dense")


@pytest.fixture
def model():
    torch.manual_seed(0)
    return UniVL(**TINY)


def save(tmp_path, state, name="univl.pretrained.bin"):
    path = tmp_path / name
    torch.save(state, path)
    return path


def assert_ties_hold(model):
    for group in TIED_GROUPS:
        tensors = [model.get_parameter(name) for name in group]
        assert all(t is tensors[0] for t in tensors), group


def test_every_official_tensor_lands_in_place_bit_exactly(model, tmp_path):
    state = official_state_dict(TINY)
    report = load_univl_checkpoint(model, save(tmp_path, state))
    own = model.state_dict()
    assert set(own) == set(state)
    for key, value in state.items():
        assert torch.equal(own[key], value), key
    assert sorted(report.loaded) == sorted(state)
    assert report.missing == [] and report.unexpected == [] and report.ignored == []
    assert report.adapted == {}
    assert_ties_hold(model)
    with torch.no_grad():  # still one tensor: an update through one name shows in the others
        model.cls.predictions.decoder.weight.add_(1.0)
    assert torch.equal(
        model.bert.embeddings.word_embeddings.weight,
        model.decoder.embeddings.word_embeddings.weight,
    )


def test_gamma_beta_layer_norms_are_renamed(model, tmp_path):
    state = official_state_dict(TINY)
    renamed = {}
    for key, value in state.items():
        if "LayerNorm" in key and key.startswith("bert."):
            key = key.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
                "LayerNorm.bias", "LayerNorm.beta"
            )
        renamed[key] = value
    report = load_univl_checkpoint(model, save(tmp_path, renamed))
    assert report.missing == [] and report.unexpected == []
    gamma = "bert.encoder.layer.1.output.LayerNorm.gamma"
    assert report.adapted["bert.encoder.layer.1.output.LayerNorm.weight"] == f"renamed from {gamma}"
    torch.testing.assert_close(
        model.bert.encoder.layer[1].output.LayerNorm.weight, renamed[gamma], rtol=0, atol=0
    )


def test_a_file_without_the_heads_misses_exactly_them(model, tmp_path):
    state = official_state_dict(TINY, towers=("bert", "visual", "normalize_video"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_univl_checkpoint(model, save(tmp_path, state))
    tied_aliases = {name for group in TIED_GROUPS for name in group[1:]}
    full = official_state_dict(TINY)
    expected_missing = {k for k in full if k.split(".")[0] in HEADS} - tied_aliases
    assert set(report.missing) == expected_missing
    assert report.unexpected == []
    assert set(report.adapted) == tied_aliases
    assert report.adapted["cls_visual.predictions.weight"].startswith("tied to visual.embeddings")
    own = model.state_dict()
    for key in expected_missing:
        assert torch.equal(own[key], before[key]), key  # left as it was
    assert torch.equal(
        own["decoder.embeddings.word_embeddings.weight"],
        state["bert.embeddings.word_embeddings.weight"],
    )
    assert_ties_hold(model)


def test_prefix_stripped_unknown_keys_and_meta_entries_reported(model, tmp_path):
    state = official_state_dict(TINY)
    state["cls.seq_relationship.weight"] = torch.zeros(2, TINY["hidden_size"])
    state["aux_model.fc1.weight"] = torch.zeros(1, 4)
    wrapped = {f"module.{k}": v for k, v in state.items()}
    report = load_univl_checkpoint(model, save(tmp_path, wrapped))
    assert report.unexpected == ["cls.seq_relationship.weight"]
    assert report.ignored == ["aux_model.fc1.weight"]
    assert report.missing == []


def test_position_tables_of_another_length(model, tmp_path):
    longer = official_state_dict({**TINY, "max_text_positions": 16, "max_frame_positions": 6})
    before = model.visual.embeddings.position_embeddings.weight.detach().clone()
    report = load_univl_checkpoint(model, save(tmp_path, longer))
    text_key = "bert.embeddings.position_embeddings.weight"
    assert report.adapted[text_key] == "cropped from 16 to 12 positions"
    assert torch.equal(model.bert.embeddings.position_embeddings.weight, longer[text_key][:12])
    frame_key = "visual.embeddings.position_embeddings.weight"
    assert report.adapted[frame_key] == "rows 0..5 loaded, rows 6..7 kept"
    loaded = model.visual.embeddings.position_embeddings.weight
    assert torch.equal(loaded[:6], longer[frame_key]) and torch.equal(loaded[6:], before[6:])
    assert_ties_hold(model)


def test_disagreements_raise_before_anything_changes(model, tmp_path):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    other_vocab = official_state_dict({**TINY, "vocab_size": 31})
    with pytest.raises(
        ValueError, match=r"'bert.embeddings.word_embeddings.weight' has shape \(31, 16\)"
    ):
        load_univl_checkpoint(model, save(tmp_path, other_vocab))
    untied = official_state_dict(TINY)
    untied["cls.predictions.decoder.weight"] = untied["cls.predictions.decoder.weight"] + 1.0
    with pytest.raises(ValueError, match="one tied tensor in the model but differ"):
        load_univl_checkpoint(model, save(tmp_path, untied))
    with pytest.raises(ValueError, match="hold no meta network"):
        load_univl_checkpoint(
            model, save(tmp_path, official_state_dict(TINY)), meta_loss=meltr.LinearMetaLoss(2)
        )
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_unreadable_files_are_named(model, tmp_path):
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.bin"):
        load_univl_checkpoint(model, empty)
