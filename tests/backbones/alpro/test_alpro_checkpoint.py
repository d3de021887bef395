"""The ALPRO loader against state dicts with the release's key names and shapes (built from the
upstream module definitions in official_alpro.py, at the tiny sizes)."""

import logging

import pytest
import torch
from alpro_tiny import FRAMES, TINY, TINY_OFFICIAL, tiny_model
from official_alpro import (
    RELEASE,
    pretrain_shapes,
    prompter_shapes,
    qa_shapes,
    random_state_dict,
)

import meltr
from meltr.backbones.alpro import Alpro, load_alpro_checkpoint

ENTITIES, ANSWERS = 5, 7
POSITION_IDS = "text_encoder.bert.embeddings.position_ids"
TIME_EMBED = "visual_encoder.model.time_embed"
POS_EMBED = "visual_encoder.model.pos_embed"


def save(tmp_path, state, name="alpro_pretrain.pt"):
    path = tmp_path / name
    torch.save(state, path)
    return path


def pretrain_state(frames=FRAMES, **options):
    sizes = TINY_OFFICIAL | {"frames": frames}
    return random_state_dict(pretrain_shapes(ENTITIES, **sizes, **options))


def test_the_model_has_the_release_keys_at_release_sizes():
    """Our QA model's state dict against AlproForPretrain's (less the prompter, the position_ids
    buffer and the TimeSformer head) plus the classifier, with every shape."""
    with torch.device("meta"):
        model = Alpro(num_entities=1000, num_answers=2423, num_frames=RELEASE["frames"])
    ours = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    release = pretrain_shapes(1000, with_prompter=False, **RELEASE)
    expected = {
        key: shape
        for key, shape in release.items()
        if key != POSITION_IDS and not key.startswith("visual_encoder.model.head.")
    }
    expected["temp"] = (1,)  # the release's scalar as one element (FSDP2 shards no 0-d tensor)
    expected |= {"classifier.0.weight": (1536, 768), "classifier.0.bias": (1536,)}
    expected |= {"classifier.2.weight": (2423, 1536), "classifier.2.bias": (2423,)}
    assert ours == expected


def test_pretrain_file_loads_with_only_the_qa_head_missing_and_the_frames_adapted(tmp_path, caplog):
    """alpro_pretrain.pt at the tiny sizes, pre-trained on 2 frames (the release: 4 frames,
    fine-tuned on 16): every tensor lands, the temporal table resized by nearest neighbour."""
    state = pretrain_state(frames=2)
    model = tiny_model(num_entities=ENTITIES, num_answers=ANSWERS)
    with caplog.at_level(logging.WARNING):
        report = load_alpro_checkpoint(model, save(tmp_path, state))

    assert sorted(report.missing) == sorted(
        k for k in model.state_dict() if k.startswith("classifier.")
    )
    assert report.unexpected == []
    head = ["visual_encoder.model.head.weight", "visual_encoder.model.head.bias"]
    assert sorted(report.ignored) == sorted(head + [k for k in state if k.startswith("prompter.")])
    assert set(report.adapted) == {POSITION_IDS, TIME_EMBED, "temp"}
    ours = model.state_dict()
    for key, value in state.items():
        if key in ours and key != TIME_EMBED:
            torch.testing.assert_close(ours[key], value.reshape(ours[key].shape), rtol=0, atol=0)
    # nearest along 3 frames from 2: source frame floor(t * 2 / 3) -> 0, 0, 1
    expected = state[TIME_EMBED][:, [0, 0, 1]]
    torch.testing.assert_close(ours[TIME_EMBED], expected, rtol=0, atol=0)
    assert "classifier.2.weight" in caplog.text


def test_positions_of_another_grid_are_resized_along_the_sequence_as_the_release_does(tmp_path):
    """A 3-patch pos_embed for the model's 4 patches: cls row kept, patch rows by 1-D nearest
    interpolation (index floor(i * 3 / 4) -> 0, 0, 1, 2)."""
    state = random_state_dict(pretrain_shapes(ENTITIES, **TINY_OFFICIAL | {"patches": 3}))
    model = tiny_model(num_entities=ENTITIES)
    report = load_alpro_checkpoint(model, save(tmp_path, state))
    expected = state[POS_EMBED][:, [0, 1, 1, 2, 3]]
    torch.testing.assert_close(model.state_dict()[POS_EMBED], expected, rtol=0, atol=0)
    assert POS_EMBED in report.adapted


def test_fine_tuned_qa_file_is_renamed_back_under_bert(tmp_path):
    """AlproForSequenceClassification's files (BertModel: text_encoder.embeddings.*), with a
    DataParallel ``module.`` prefix: every tensor lands; the MLM head and PEM head are missing."""
    state = random_state_dict(qa_shapes(ANSWERS, **TINY_OFFICIAL))
    path = save(tmp_path, {"module." + key: value for key, value in state.items()})
    model = tiny_model(num_entities=ENTITIES, num_answers=ANSWERS)
    report = load_alpro_checkpoint(model, path)
    assert report.unexpected == []
    assert all(k.startswith(("text_encoder.cls.", "mpm_head.")) for k in report.missing)
    layer = "text_encoder.encoder.layer.1.output.dense.weight"
    renamed = "text_encoder.bert.encoder.layer.1.output.dense.weight"
    assert report.adapted[renamed] == f"renamed from {layer}"
    torch.testing.assert_close(model.state_dict()[renamed], state[layer], rtol=0, atol=0)
    classifier = model.state_dict()["classifier.2.weight"]
    torch.testing.assert_close(classifier, state["classifier.2.weight"], rtol=0, atol=0)


def test_prompter_comes_from_its_own_file_or_from_the_pretrain_files_prompter_keys(tmp_path):
    own = random_state_dict(prompter_shapes(ENTITIES, **TINY_OFFICIAL), seed=3)
    model = tiny_model()
    report = load_alpro_checkpoint(model, save(tmp_path, own, "prompter.pt"), prompter=True)
    assert sorted(report.ignored) == sorted(
        ["video_prompt_feat", "image_prompt_feat"]
        + ["visual_encoder.model.head.weight", "visual_encoder.model.head.bias"]
    )
    assert report.missing == [] and report.unexpected == []

    pretrain = pretrain_state()
    model = tiny_model()
    load_alpro_checkpoint(model, save(tmp_path, pretrain), prompter=True)
    for key, value in model.state_dict().items():
        expected = pretrain["prompter." + key].reshape(value.shape)
        torch.testing.assert_close(value, expected, rtol=0, atol=0, msg=key)


def test_a_mismatched_shape_names_key_and_shapes(tmp_path):
    state = pretrain_state()
    state["itm_head.weight"] = torch.zeros(3, TINY["width"])
    with pytest.raises(ValueError, match=r"'itm_head.weight' has shape \(3, 16\).*\(2, 16\)"):
        load_alpro_checkpoint(tiny_model(num_entities=ENTITIES), save(tmp_path, state))


def test_refuses_a_meta_loss(tmp_path):
    path = save(tmp_path, pretrain_state())
    with pytest.raises(ValueError, match="no meta network"):
        load_alpro_checkpoint(tiny_model(), path, meta_loss=meltr.MetaLossTransformer(2))
