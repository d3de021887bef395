import math

import pytest
import torch
import torch.nn.functional as F
from allinone_tiny import TINY

from meltr.backbones.allinone import AllInOne
from meltr.backbones.allinone.model import Attention, temporal_roll


def test_output_shapes_per_mode(tiny_model, tiny_batch):
    text = tiny_model(
        mode="text", text_ids=tiny_batch["text_ids"], text_mask=tiny_batch["text_mask"]
    )
    video = tiny_model(mode="video", video=tiny_batch["video"])
    joint = tiny_model(
        mode="joint",
        text_ids=tiny_batch["text_ids"],
        text_mask=tiny_batch["text_mask"],
        video=tiny_batch["video"],
    )
    B, L, D, P, V = 4, TINY["max_text_len"], TINY["width"], TINY["proj_dim"], TINY["vocab_size"]
    assert text["text_feat"].shape == (B, P)
    assert video["video_feat"].shape == (B, P)
    assert {k: tuple(v.shape) for k, v in joint.items()} == {
        "text_hidden": (B, L, D),
        "pooled": (B, D),
        "mlm_logits": (B, L, V),
        "vtm_logits": (B, 2),
    }
    torch.testing.assert_close(text["text_feat"].norm(dim=1), torch.ones(B))
    torch.testing.assert_close(video["video_feat"].norm(dim=1), torch.ones(B))


def test_temporal_roll_matches_hand_computed_shift():
    batch, frames, tokens = 2, 3, 17  # fold = 17 // 8 = 2
    values = torch.arange(batch * frames * tokens, dtype=torch.float32)
    x = values.reshape(batch * frames, tokens, 1)
    out = temporal_roll(x, frames).reshape(batch, frames, tokens)
    src = x.reshape(batch, frames, tokens)
    for b in range(batch):
        for t in range(frames):
            previous, following = (t - 1) % frames, (t + 1) % frames
            assert out[b, t, 0] == src[b, t, 0]  # cls kept
            assert out[b, t, 1] == src[b, previous, 1]
            assert out[b, t, 2] == src[b, previous, 2]
            assert torch.equal(out[b, t, 3:15], src[b, t, 3:15])
            assert out[b, t, 15] == src[b, following, 15]
            assert out[b, t, 16] == src[b, following, 16]
    # frame 0's first rolled token comes from the last frame: a literal spot check
    assert out[0, 0, 1].item() == 2 * tokens + 1


def test_attention_matches_explicit_softmax_with_padding():
    torch.manual_seed(0)
    attn = Attention(width=8, heads=2, drop_rate=0.0)
    x = torch.randn(2, 5, 8)
    key_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    q, k, v = attn.qkv(x).split(8, dim=-1)
    heads = [slice(0, 4), slice(4, 8)]
    expected = []
    for h in heads:
        scores = q[..., h] @ k[..., h].transpose(1, 2) / math.sqrt(4)
        scores = scores.masked_fill(~key_mask[:, None, :], float("-inf"))
        expected.append(scores.softmax(-1) @ v[..., h])
    expected = attn.proj(torch.cat(expected, dim=-1))
    torch.testing.assert_close(attn(x, key_mask), expected)


def test_text_features_ignore_padded_token_ids(tiny_model, tiny_batch):
    ids, mask = tiny_batch["text_ids"], tiny_batch["text_mask"]
    changed = torch.where(mask.bool(), ids, torch.full_like(ids, 42))
    for mode in ("text", "joint"):
        kwargs = {"video": tiny_batch["video"]} if mode == "joint" else {}
        a = tiny_model(mode=mode, text_ids=ids, text_mask=mask, **kwargs)
        b = tiny_model(mode=mode, text_ids=changed, text_mask=mask, **kwargs)
        key = "text_feat" if mode == "text" else "pooled"
        torch.testing.assert_close(a[key], b[key])


def test_identical_frames_reduce_to_a_one_frame_model(tiny_model, tiny_batch):
    """With identical frames and one temporal embedding for all of them, rolling exchanges equal
    tokens and the frame mean averages equal outputs: a one-frame model must agree."""
    with torch.no_grad():
        tiny_model.transformer.temporal_embed.copy_(
            torch.randn(1, 1, TINY["width"]).expand(1, 3, -1)
        )
    single = AllInOne(**{**TINY, "num_frames": 1})
    state = tiny_model.state_dict()
    state["transformer.temporal_embed"] = state["transformer.temporal_embed"][:, :1]
    single.load_state_dict(state)
    one_frame = tiny_batch["video"][:, :1]
    three_frames = one_frame.expand(-1, 3, -1, -1, -1)
    text = dict(text_ids=tiny_batch["text_ids"], text_mask=tiny_batch["text_mask"])
    torch.testing.assert_close(
        tiny_model(mode="video", video=three_frames)["video_feat"],
        single(mode="video", video=one_frame)["video_feat"],
    )
    joint3 = tiny_model(mode="joint", video=three_frames, **text)
    joint1 = single(mode="joint", video=one_frame, **text)
    for key in joint1:
        torch.testing.assert_close(joint3[key], joint1[key])


def reference_joint(model, text_ids, text_mask, video):
    """The joint pass written out from the All-in-one description, sharing only parameters
    (and the already-tested blocks) with the model."""
    frames, length = model.num_frames, text_ids.shape[1]
    emb = model.text_embeddings
    text = F.layer_norm(
        emb.word_embeddings.weight[text_ids]
        + emb.position_embeddings.weight[:length]
        + emb.token_type_embeddings.weight[0],
        (TINY["width"],),
        emb.LayerNorm.weight,
        emb.LayerNorm.bias,
        eps=1e-12,
    )
    text = text + model.token_type_embeddings.weight[0]
    vit = model.transformer
    conv = vit.patch_embed.proj
    per_frame = []
    for t in range(frames):
        patches = F.conv2d(video[:, t], conv.weight, conv.bias, stride=TINY["patch_size"])
        patches = (
            patches.flatten(2).transpose(1, 2) + vit.pos_embed[:, 1:] + vit.temporal_embed[:, t]
        )
        cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(len(video), -1, -1)
        tokens = torch.cat([cls, patches], 1) + model.token_type_embeddings.weight[1]
        per_frame.append(torch.cat([text, tokens], 1))
    x = torch.stack(per_frame, 1)  # [B, F, L + N, D]
    num_visual = x.shape[2] - length
    fold = num_visual // 8
    source_frame = torch.arange(frames)[:, None].repeat(1, num_visual)
    source_frame[:, 1 : fold + 1] = (source_frame[:, 1 : fold + 1] - 1) % frames
    source_frame[:, num_visual - fold :] = (source_frame[:, num_visual - fold :] + 1) % frames
    token = torch.arange(num_visual)[None, :].expand(frames, -1)
    key_mask = torch.cat(
        [text_mask.bool(), torch.ones(len(video), num_visual, dtype=torch.bool)], 1
    )
    for block in vit.blocks:
        visual = x[:, source_frame, length + token]
        x = torch.cat([x[:, :, :length], visual], 2)
        x = torch.stack([block(x[:, t], key_mask) for t in range(frames)], 1)
    x = vit.norm(x).mean(1)
    hidden = x[:, :length]
    pooled = torch.tanh(model.pooler.dense(x[:, 0]))
    head = model.mlm_score
    transformed = F.layer_norm(
        F.gelu(head.transform.dense(hidden)),
        (TINY["width"],),
        head.transform.LayerNorm.weight,
        head.transform.LayerNorm.bias,
        eps=1e-12,
    )
    mlm_logits = transformed @ head.decoder.weight.T + head.bias
    return hidden, pooled, mlm_logits


def test_joint_pass_matches_reference(tiny_model, tiny_batch):
    # Large random weights in float64: at the release's small init every token looks alike and
    # a wrong roll would hide below float32 tolerance.
    tiny_model.double()
    with torch.no_grad():
        for parameter in tiny_model.parameters():
            parameter.normal_(0.0, 0.5)
    video = tiny_batch["video"].double()
    args = (tiny_batch["text_ids"], tiny_batch["text_mask"], video)
    out = tiny_model(mode="joint", text_ids=args[0], text_mask=args[1], video=args[2])
    hidden, pooled, mlm_logits = reference_joint(tiny_model, *args)
    torch.testing.assert_close(out["text_hidden"], hidden)
    torch.testing.assert_close(out["pooled"], pooled)
    torch.testing.assert_close(out["mlm_logits"], mlm_logits)
    torch.testing.assert_close(out["vtm_logits"], tiny_model.vtm_score(pooled))


def test_bad_inputs_name_the_culprit(tiny_model, tiny_batch):
    with pytest.raises(ValueError, match="mode"):
        tiny_model(mode="audio", video=tiny_batch["video"])
    with pytest.raises(ValueError, match="video"):
        tiny_model(mode="video", video=tiny_batch["video"][:, :2])
    with pytest.raises(ValueError, match="text_ids"):
        tiny_model(mode="text", text_ids=torch.zeros(2, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="text_mask"):
        tiny_model(
            mode="text", text_ids=tiny_batch["text_ids"], text_mask=tiny_batch["text_mask"][:, :3]
        )
    with pytest.raises(ValueError, match="text_ids is required"):
        tiny_model(mode="joint", video=tiny_batch["video"])
