"""The Violet model: key layout, the cross transformer, the forward modes."""

import pytest
import torch
from official_violet import RELEASE, violet_shapes
from torch import nn
from violet_tiny import CLS, FRAMES, GRID, SEP, TINY, TINY_OFFICIAL, texts, tiny_model, videos

from meltr.backbones.violet import Violet
from meltr.backbones.violet.bert import BertLayer


def test_full_size_state_dict_has_the_release_keys_and_shapes():
    with torch.device("meta"):
        model = Violet()
    official = violet_shapes(**RELEASE, position_ids=False)
    assert len(official) == 568  # 569 in the file, position_ids included
    ours = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert ours == official
    index = model.state_dict()["enc_img.swin.layers.2.blocks.5.attn.relative_position_index"]
    assert index.dtype == torch.int64 and index.shape == (392, 392)


def test_fine_tuning_heads_are_built_on_request():
    model = tiny_model(multiple_choice=True, num_answers=7, num_classes=5)
    extra = [("fc_mc", 1), ("fc_oe", 7), ("fc_cls", 5)]
    official = violet_shapes(**TINY_OFFICIAL, position_ids=False, heads_extra=extra)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == official
    assert model.fc_oe[0].p == 0.5 and model.fc_mc[0].p == 0.1 and model.fc[0].p == 0.1


def test_mlm_decoder_bias_is_one_parameter_and_the_decoder_is_untied():
    model = tiny_model()
    head = model.fc_mtm.predictions
    assert head.decoder.bias is head.bias
    assert head.decoder.weight.data_ptr() != model.enc_txt.emb_txt.word_embeddings.weight.data_ptr()


def test_bert_layer_equals_a_post_norm_transformer_encoder_layer():
    torch.manual_seed(0)
    ours = BertLayer(16, 2, 32, dropout=0.0).eval()
    reference = nn.TransformerEncoderLayer(
        16, 2, 32, dropout=0.0, activation="gelu", layer_norm_eps=1e-12, batch_first=True
    ).eval()
    attention = ours.attention
    with torch.no_grad():
        reference.self_attn.in_proj_weight.copy_(
            torch.cat(
                [
                    attention.self.query.weight,
                    attention.self.key.weight,
                    attention.self.value.weight,
                ]
            )
        )
        reference.self_attn.in_proj_bias.copy_(
            torch.cat(
                [attention.self.query.bias, attention.self.key.bias, attention.self.value.bias]
            )
        )
        reference.self_attn.out_proj.load_state_dict(attention.output.dense.state_dict())
        reference.norm1.load_state_dict(attention.output.LayerNorm.state_dict())
        reference.linear1.load_state_dict(ours.intermediate.dense.state_dict())
        reference.linear2.load_state_dict(ours.output.dense.state_dict())
        reference.norm2.load_state_dict(ours.output.LayerNorm.state_dict())
    x = torch.randn(3, 7, 16)
    keep = torch.ones(3, 7, dtype=torch.bool)
    keep[1, 4:] = False
    with torch.no_grad():
        expected = reference(x, src_key_padding_mask=~keep)
        got = ours(x, keep)
    torch.testing.assert_close(got[keep], expected[keep], atol=1e-5, rtol=1e-5)


def capture_output(module):
    captured = []
    handle = module.register_forward_hook(lambda m, i, o: captured.append(o))
    return captured, handle


def test_video_tokens_are_cls_plus_swin_grid_with_position_and_frame_embeddings():
    model = tiny_model().eval()
    video = videos(2, torch.Generator().manual_seed(0))
    captured, handle = capture_output(model.enc_img.swin)
    with torch.no_grad():
        tokens = model(mode="video", video=video)["video_tokens"]
    handle.remove()
    features = captured[0]  # [B, F, g, g, D]
    enc = model.enc_img
    assert tokens.shape == (2, FRAMES, 1 + GRID * GRID, TINY["width"])
    for b in range(2):
        for t in range(FRAMES):
            rows = [enc.emb_cls[0, 0, 0]] + [
                features[b, t, i, j] for i in range(GRID) for j in range(GRID)
            ]
            for n, row in enumerate(rows):
                expected = enc.norm(row + enc.emb_pos[0, 0, n] + enc.emb_len[0, t, 0])
                torch.testing.assert_close(tokens[b, t, n], expected, atol=1e-6, rtol=1e-6)


def test_score_is_the_vtm_head_at_the_text_cls_of_each_pair():
    model = tiny_model().eval()
    generator = torch.Generator().manual_seed(0)
    text_ids, text_mask = texts(3, 8, generator)
    video = videos(2, generator)
    captured, handle = capture_output(model.trsfr)
    with torch.no_grad():
        text = model(mode="text", text_ids=text_ids, text_mask=text_mask)
        tokens = model(mode="video", video=video)["video_tokens"]
        scores = model(mode="score", text=text, video={"video_tokens": tokens})["scores"]
        assert scores.shape == (3, 2)
        readout = FRAMES * (1 + GRID * GRID)
        for i in range(3):
            for j in range(2):
                # one pair alone, through the cross transformer by hand
                embeds = model.enc_txt(text_ids[i : i + 1])
                x = torch.cat([tokens[j : j + 1].flatten(1, 2), embeds], dim=1)
                keep = torch.cat(
                    [torch.ones(1, readout, dtype=torch.bool), text_mask[i : i + 1].bool()], 1
                )
                for layer in model.trsfr.layer:
                    x = layer(x, keep)
                torch.testing.assert_close(
                    scores[i, j], model.fc(x[0, readout])[0], atol=1e-5, rtol=1e-5
                )
    handle.remove()


def test_padding_does_not_change_the_scores():
    model = tiny_model().eval()
    generator = torch.Generator().manual_seed(1)
    text_ids, text_mask = texts(2, 8, generator, lengths=[5, 8])
    other_ids = text_ids.clone()
    other_ids[0, 5:] = 17  # garbage under the padding mask
    video = videos(2, generator)
    with torch.no_grad():
        tokens = {"video_tokens": model(mode="video", video=video)["video_tokens"]}
        a = model(
            mode="score",
            text=model(mode="text", text_ids=text_ids, text_mask=text_mask),
            video=tokens,
        )
        b = model(
            mode="score",
            text=model(mode="text", text_ids=other_ids, text_mask=text_mask),
            video=tokens,
        )
    torch.testing.assert_close(a["scores"], b["scores"])


def test_multiple_choice_scores_each_question_option_text_alone():
    model = tiny_model(multiple_choice=True).eval()
    generator = torch.Generator().manual_seed(2)
    batch, options, length = 2, 3, 9
    ids, mask = texts(batch * options, length, generator, lengths=[9, 6, 7, 8, 5, 9])
    option_ids, option_mask = ids.view(batch, options, length), mask.view(batch, options, length)
    video = videos(batch, generator)
    with torch.no_grad():
        logits = model(mode="qa", video=video, option_ids=option_ids, option_mask=option_mask)[
            "logits"
        ]
        assert logits.shape == (batch, options)
        for b in range(batch):
            for k in range(options):
                alone = model(
                    mode="qa",
                    video=video[b : b + 1],
                    option_ids=option_ids[b : b + 1, k : k + 1],
                    option_mask=option_mask[b : b + 1, k : k + 1],
                )["logits"]
                torch.testing.assert_close(logits[b, k], alone[0, 0], atol=1e-5, rtol=1e-5)


def test_open_ended_qa_and_classification_read_the_text_cls():
    model = tiny_model(num_answers=7, num_classes=5).eval()
    generator = torch.Generator().manual_seed(3)
    text_ids, text_mask = texts(2, 6, generator)
    video = videos(2, generator)
    readout = FRAMES * (1 + GRID * GRID)
    captured, handle = capture_output(model.trsfr)
    with torch.no_grad():
        oe = model(mode="qa", video=video, text_ids=text_ids, text_mask=text_mask)["logits"]
        cls = model(mode="classify", video=video)["logits"]
        empty = torch.tensor([[CLS, SEP]] * 2)
        explicit = model(mode="classify", video=video, text_ids=empty)["logits"]
    handle.remove()
    assert oe.shape == (2, 7) and cls.shape == (2, 5)
    torch.testing.assert_close(oe, model.fc_oe(captured[0][:, readout]))
    torch.testing.assert_close(cls, model.fc_cls(captured[1][:, readout]))
    torch.testing.assert_close(cls, explicit)
    assert captured[1].shape[1] == readout + 2  # the empty text [CLS] [SEP]


def test_pretext_heads_on_text_positions_and_video_patches_without_cls_slots():
    model = tiny_model().eval()
    generator = torch.Generator().manual_seed(4)
    text_ids, text_mask = texts(2, 6, generator)
    video = videos(2, generator)
    captured, handle = capture_output(model.trsfr)
    with torch.no_grad():
        out = model(mode="pretext", video=video, text_ids=text_ids, text_mask=text_mask)
        tokens = model(mode="video", video=video)["video_tokens"]
        again = model(mode="pretext", video_tokens=tokens, text_ids=text_ids, text_mask=text_mask)
    handle.remove()
    hidden = captured[0]
    per_frame = 1 + GRID * GRID
    assert out["mtm_logits"].shape == (2, 6, TINY["vocab_size"])
    assert out["mvm_logits"].shape == (2, FRAMES, GRID, GRID, TINY["mvm_vocab_size"])
    torch.testing.assert_close(out["mtm_logits"], model.fc_mtm(hidden[:, FRAMES * per_frame :]))
    for t in range(FRAMES):
        for i in range(GRID):
            for j in range(GRID):
                position = t * per_frame + 1 + i * GRID + j
                torch.testing.assert_close(
                    out["mvm_logits"][:, t, i, j], model.fc_mvm(hidden[:, position])
                )
    for key in out:
        torch.testing.assert_close(out[key], again[key])


def test_fsdp_units_are_the_swin_blocks_and_the_cross_layers():
    model = tiny_model()
    units = model.fsdp_units()
    assert len(units) == sum(TINY["swin_depths"]) + TINY["cross_layers"]
    assert units[-1] is model.trsfr.layer[-1] and units[0] is model.enc_img.swin.layers[0].blocks[0]


@pytest.mark.parametrize(
    "call, message",
    [
        (dict(mode="joint"), "mode must be one of"),
        (dict(mode="video", video=torch.zeros(1, 3, 3, 32, 16)), r"\[B, F, 3, S, S\]"),
        (dict(mode="video", video=torch.zeros(1, 5, 3, 32, 32)), "at most 4 frames"),
        (dict(mode="text", text_ids=torch.zeros(1, 13, dtype=torch.long)), "L <= 12"),
        (dict(mode="classify", video=torch.zeros(1, 3, 3, 32, 32)), "no fc_cls head"),
        (dict(mode="qa", video_tokens=torch.zeros(1, 3, 17, 16)), "exactly one"),
        (dict(mode="pretext", video_tokens=torch.zeros(1, 3, 16, 16)), r"1 \+ g\*g"),
    ],
)
def test_bad_input_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        tiny_model()(**call)


def test_special_ids_outside_the_vocabulary_are_refused():
    with pytest.raises(ValueError, match="cls_id=101"):
        Violet(**{**TINY, "cls_id": 101})
