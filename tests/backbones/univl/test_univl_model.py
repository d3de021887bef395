import pytest
import torch
import univl_reference as ref
from official_univl import TIED_GROUPS, official_shapes
from univl_tiny import TINY

from meltr.backbones.univl import UniVL
from meltr.backbones.univl.model import DecoderBlock, EncoderBlock
from meltr.train.distributed import fsdp_units

HEADS = TINY["heads"]
RELEASE_SIZES = dict(
    vocab_size=30522,
    hidden_size=768,
    intermediate_size=3072,
    text_layers=12,
    visual_layers=6,
    cross_layers=2,
    decoder_layers=3,
    max_text_positions=512,
    max_frame_positions=512,
    max_cross_positions=1024,
    video_dim=1024,
)


def tied_groups(model):
    names = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(parameter), []).append(name)
    return {frozenset(group) for group in names.values() if len(group) > 1}


def test_release_sizes_have_the_official_444_keys_and_shapes():
    with torch.device("meta"):
        model = UniVL()
    state = model.state_dict()
    assert len(state) == 444
    shapes = official_shapes(RELEASE_SIZES)
    assert {k: tuple(v.shape) for k, v in state.items()} == shapes
    unique = {id(p): p.numel() for p in model.parameters()}
    assert 195e6 < sum(unique.values()) < 205e6


def test_tiny_sizes_have_the_official_keys_and_the_release_ties(tiny_model):
    state = tiny_model.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == official_shapes(TINY)
    assert tied_groups(tiny_model) == {frozenset(group) for group in TIED_GROUPS}


def test_fsdp_units_are_every_layer_of_every_tower_once(tiny_model):
    units = tiny_model.fsdp_units()
    layers = [m for m in tiny_model.modules() if isinstance(m, EncoderBlock | DecoderBlock)]
    expected = (
        TINY["text_layers"] + TINY["visual_layers"] + TINY["cross_layers"] + TINY["decoder_layers"]
    )
    assert len(units) == len({id(u) for u in units}) == len(layers) == expected
    assert {id(u) for u in units} == {id(m) for m in layers}
    # The training system's wrapper accepts them (submodules, not the model itself).
    assert [id(m) for m in fsdp_units(tiny_model)] == [id(u) for u in units]
    # No parameter of a unit is shared with anything outside it (FSDP shards units separately).
    inside = {id(p) for u in units for p in u.parameters()}
    outside = {
        id(p)
        for name, p in tiny_model.named_parameters(remove_duplicate=False)
        if ".layer." not in name
    }
    assert not inside & outside


def test_every_mode_matches_the_formulas_of_the_release(tiny_model, batch):
    sd = tiny_model.state_dict()
    ids, mask = batch["text_ids"], batch["text_mask"]
    features, feature_mask = batch["features"], batch["feature_mask"]
    text = tiny_model(mode="text", text_ids=ids, text_mask=mask)
    video = tiny_model(mode="video", features=features, feature_mask=feature_mask)
    text_hidden = ref.text(sd, ids, mask, HEADS)
    video_hidden = ref.video(sd, features, feature_mask, HEADS)
    torch.testing.assert_close(text["text_hidden"], text_hidden, rtol=0, atol=1e-10)
    torch.testing.assert_close(video["video_hidden"], video_hidden, rtol=0, atol=1e-10)
    torch.testing.assert_close(
        tiny_model(mode="normalize", features=features)["normalized_features"],
        ref.normalize_video(sd, features),
    )

    mlm_positions = batch["mlm_labels"] != -100
    mfm_positions = batch["frame_mask_labels"] != -100
    cross = tiny_model(
        mode="cross",
        text=text,
        video=video,
        mlm_positions=mlm_positions,
        mfm_positions=mfm_positions,
    )
    cross_hidden, pooled = ref.cross(sd, text_hidden, mask, video_hidden, feature_mask, HEADS)
    torch.testing.assert_close(cross["cross_hidden"], cross_hidden, rtol=0, atol=1e-10)
    torch.testing.assert_close(cross["pooled"], pooled, rtol=0, atol=1e-10)
    L = ids.shape[1]
    mlm = ref.token_head(sd, "cls.predictions.", cross_hidden[:, :L][mlm_positions])
    torch.testing.assert_close(cross["mlm_logits"], mlm, rtol=0, atol=1e-10)
    mfm = ref.frame_head(sd, cross_hidden[:, L:][mfm_positions])
    torch.testing.assert_close(cross["mfm_scores"], mfm, rtol=0, atol=1e-10)

    decoded = tiny_model(
        mode="decode",
        cross=cross,
        decoder_ids=batch["decoder_ids"],
        decoder_mask=batch["decoder_mask"],
    )
    expected = ref.decoder_logits(
        sd, cross_hidden, cross["cross_mask"], batch["decoder_ids"], batch["decoder_mask"], HEADS
    )
    torch.testing.assert_close(decoded["logits"], expected, rtol=0, atol=1e-10)


def test_pooled_features_by_hand(tiny_model, batch):
    ids, mask = batch["text_ids"], batch["text_mask"]
    text = tiny_model(mode="text", text_ids=ids, text_mask=mask)
    video = tiny_model(mode="video", features=batch["features"], feature_mask=batch["feature_mask"])
    for b in range(ids.shape[0]):
        n = int(mask[b].sum())
        mean = text["text_hidden"][b, 1:n].mean(0)  # [CLS] left out, [SEP] kept
        torch.testing.assert_close(text["text_feat"][b], mean / mean.norm())
        frames = int(batch["feature_mask"][b].sum())
        mean = video["video_hidden"][b, :frames].mean(0)
        torch.testing.assert_close(video["video_feat"][b], mean / mean.norm())


def test_score_is_similarity_dense_of_each_pair_in_any_block_size(tiny_model, batch):
    text = tiny_model(mode="text", text_ids=batch["text_ids"], text_mask=batch["text_mask"])
    video = tiny_model(mode="video", features=batch["features"], feature_mask=batch["feature_mask"])
    video_rows = {k: v[:3] for k, v in video.items()}
    scores = tiny_model(mode="score", text=text, video=video_rows)["scores"]
    assert scores.shape == (4, 3)
    for i in range(4):
        for j in range(3):
            pair = tiny_model(
                mode="cross",
                text={k: v[i : i + 1] for k, v in text.items()},
                video={k: v[j : j + 1] for k, v in video.items()},
            )
            expected = tiny_model.similarity_dense(pair["pooled"])[0, 0]
            torch.testing.assert_close(scores[i, j], expected, rtol=0, atol=1e-12)
    tiny_model.score_pairs_per_pass = 2  # one text row (3 pairs) per pass
    blocked = tiny_model(mode="score", text=text, video=video_rows)["scores"]
    torch.testing.assert_close(blocked, scores, rtol=0, atol=1e-12)


def test_padding_does_not_reach_real_positions(tiny_model, batch):
    ids, mask = batch["text_ids"], batch["text_mask"]
    features, feature_mask = batch["features"], batch["feature_mask"]
    noisy_ids = torch.where(mask.bool(), ids, torch.randint_like(ids, TINY["vocab_size"]))
    noisy_features = torch.where(
        feature_mask.bool()[..., None], features, torch.randn_like(features)
    )
    for text_ids, video_features in ((ids, features), (noisy_ids, noisy_features)):
        text = tiny_model(mode="text", text_ids=text_ids, text_mask=mask)
        video = tiny_model(mode="video", features=video_features, feature_mask=feature_mask)
        cross = tiny_model(mode="cross", text=text, video=video)
        if text_ids is ids:
            first = (text, video, cross)
    torch.testing.assert_close(text["text_feat"], first[0]["text_feat"], rtol=0, atol=1e-6)
    torch.testing.assert_close(video["video_feat"], first[1]["video_feat"], rtol=0, atol=1e-6)
    torch.testing.assert_close(cross["pooled"], first[2]["pooled"], rtol=0, atol=1e-6)


def test_decoder_is_causal(tiny_model, batch):
    text = tiny_model(mode="text", text_ids=batch["text_ids"], text_mask=batch["text_mask"])
    video = tiny_model(mode="video", features=batch["features"], feature_mask=batch["feature_mask"])
    cross = tiny_model(mode="cross", text=text, video=video)
    ids = batch["text_ids"][:, :6]
    ones = torch.ones_like(ids)
    logits = tiny_model(mode="decode", cross=cross, decoder_ids=ids, decoder_mask=ones)["logits"]
    changed = ids.clone()
    changed[:, 4:] = (changed[:, 4:] + 1) % TINY["vocab_size"]
    other = tiny_model(mode="decode", cross=cross, decoder_ids=changed, decoder_mask=ones)["logits"]
    torch.testing.assert_close(other[:, :4], logits[:, :4], rtol=0, atol=1e-12)
    assert not torch.allclose(other[:, 4:], logits[:, 4:])


def test_dropout_draws_from_the_global_rng(batch):
    model = UniVL(**{**TINY, "dropout": 0.3}).double().train()
    inputs = dict(text_ids=batch["text_ids"], text_mask=batch["text_mask"])
    torch.manual_seed(3)
    first = model(mode="text", **inputs)["text_feat"]
    torch.manual_seed(3)
    assert torch.equal(model(mode="text", **inputs)["text_feat"], first)
    assert not torch.equal(model(mode="text", **inputs)["text_feat"], first)


def test_bad_calls_name_the_culprit(tiny_model, batch):
    ids, mask = batch["text_ids"], batch["text_mask"]
    with pytest.raises(ValueError, match="mode must be one of"):
        tiny_model(mode="joint")
    with pytest.raises(TypeError, match=r"missing \['text_mask'\]"):
        tiny_model(mode="text", text_ids=ids)
    with pytest.raises(TypeError, match=r"unexpected \['video'\]"):
        tiny_model(mode="text", text_ids=ids, text_mask=mask, video=ids)
    long_ids = torch.zeros(1, TINY["max_text_positions"] + 1, dtype=torch.long)
    with pytest.raises(ValueError, match="at most 12"):
        tiny_model(mode="text", text_ids=long_ids, text_mask=torch.ones_like(long_ids))
    with pytest.raises(ValueError, match=r"features must be \[B, T, 10\]"):
        tiny_model(mode="video", features=torch.zeros(1, 3, 11), feature_mask=torch.ones(1, 3))
    with pytest.raises(KeyError, match="video_hidden"):
        tiny_model(mode="score", text={"text_hidden": 0, "text_mask": 0}, video={})
