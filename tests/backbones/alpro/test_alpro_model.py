"""The ALPRO model against independent computations on the tiny configuration (eval mode:
dropout and stochastic depth off)."""

import math

import pytest
import torch
import torch.nn.functional as F
from alpro_tiny import FRAMES, GRID, PATCH, SIZE, TINY, texts, tiny_model, videos

from meltr.backbones.alpro import Alpro
from meltr.backbones.alpro.model import CLIP_MEAN, CLIP_STD
from meltr.backbones.alpro.timesformer import TimeSformer
from meltr.data.transforms import IMAGENET_MEAN, IMAGENET_STD

B, L = 3, 7


@pytest.fixture(scope="module")
def model():
    return tiny_model(num_entities=5, num_answers=6).eval()


@pytest.fixture(scope="module")
def inputs():
    generator = torch.Generator().manual_seed(0)
    ids, mask = texts(B, L, generator)
    return {"video": videos(B, generator), "text_ids": ids, "text_mask": mask}


def attend(module, x):
    """Multi-head self-attention of one sequence ``x`` ``[N, D]`` written out: ``softmax(q k^T /
    sqrt(d)) v`` per head with ``module``'s qkv and proj weights."""
    heads = module.heads
    q, k, v = (x @ module.qkv.weight.T + module.qkv.bias).chunk(3, dim=-1)
    split = [t.reshape(x.shape[0], heads, -1).transpose(0, 1) for t in (q, k, v)]
    weights = (split[0] @ split[1].transpose(1, 2) / math.sqrt(split[0].shape[-1])).softmax(-1)
    out = (weights @ split[2]).transpose(0, 1).reshape(x.shape)
    return out @ module.proj.weight.T + module.proj.bias


def reference_block(block, x, frames):
    """One divided space-time block on one clip ``x`` ``[1 + N T, D]``, token ``1 + n T + t``
    = patch n of frame t: temporal attention per patch, spatial attention per frame with the cls
    token, cls updates averaged over frames, then the MLP."""
    positions = (x.shape[0] - 1) // frames
    out = x.clone()
    for n in range(positions):
        rows = [1 + n * frames + t for t in range(frames)]
        update = attend(block.temporal_attn, block.temporal_norm1(x[rows]))
        out[rows] = x[rows] + block.temporal_fc(update)
    patches = out.clone()
    cls_updates = []
    for t in range(frames):
        rows = [1 + n * frames + t for n in range(positions)]
        sequence = torch.cat([x[:1], patches[rows]])
        update = attend(block.attn, block.norm1(sequence))
        cls_updates.append(update[0])
        out[rows] = patches[rows] + update[1:]
    out[0] = x[0] + torch.stack(cls_updates).mean(0)
    return out + block.mlp.fc2(F.gelu(block.mlp.fc1(block.norm2(out))))


def test_divided_space_time_block_against_the_written_out_attention(model):
    block = model.visual_encoder.model.blocks[1]
    x = torch.randn(2, 1 + GRID * GRID * FRAMES, TINY["width"])
    with torch.no_grad():
        ours = block(x, FRAMES)
        expected = torch.stack([reference_block(block, clip, FRAMES) for clip in x])
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_embeddings_put_patch_n_of_frame_t_at_token_1_plus_n_t():
    """Without blocks the TimeSformer is its embeddings and final norm: token ``1 + n T + t`` =
    conv patch n of frame t + pos[1 + n] + time[t]; token 0 = cls + pos[0]."""
    torch.manual_seed(0)
    net = TimeSformer(SIZE, PATCH, FRAMES, 8, depth=0, heads=2, mlp_ratio=2.0, drop_path_rate=0.0)
    with torch.no_grad():
        for table in (net.cls_token, net.pos_embed, net.time_embed):
            table.normal_()
        video = torch.randn(2, FRAMES, 3, SIZE, SIZE)
        ours = net(video)
        conv = net.patch_embed.proj
        for b in range(2):
            expected = [net.cls_token[0, 0] + net.pos_embed[0, 0]]
            for n in range(GRID * GRID):
                row, col = divmod(n, GRID)
                for t in range(FRAMES):
                    pixels = video[b, t, :, row * PATCH : (row + 1) * PATCH, col * PATCH :]
                    patch = (conv.weight * pixels[:, :, :PATCH]).sum((1, 2, 3)) + conv.bias
                    expected.append(patch + net.pos_embed[0, 1 + n] + net.time_embed[0, t])
            torch.testing.assert_close(ours[b], net.norm(torch.stack(expected)))


def test_video_mode_renormalises_to_clip_statistics_and_pools_patches_over_frames(model, inputs):
    video = inputs["video"]
    mean_in, std_in = (torch.tensor(v).view(3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    mean_clip, std_clip = (torch.tensor(v).view(3, 1, 1) for v in (CLIP_MEAN, CLIP_STD))
    with torch.no_grad():
        out = model(mode="video", video=video)
        tokens = model.visual_encoder.model((video * std_in + mean_in - mean_clip) / std_clip)
    patches = tokens[:, 1:].reshape(B, GRID * GRID, FRAMES, -1).mean(dim=2)
    torch.testing.assert_close(out["video_embeds"], torch.cat([tokens[:, :1], patches], dim=1))
    expected_feat = F.normalize(tokens[:, 0] @ model.vision_proj.weight.T + model.vision_proj.bias)
    torch.testing.assert_close(out["video_feat"], expected_feat)


def fused_reference(model, text_embeds, text_mask, video_embeds):
    """The fusion layers run one by one over ``cat([text, video])``, padded text keys masked."""
    hidden = torch.cat([text_embeds, video_embeds], dim=1)
    keys = torch.cat([text_mask.bool(), torch.ones(video_embeds.shape[:2], dtype=torch.bool)], 1)
    for layer in model.text_encoder.bert.encoder.layer[TINY["fusion_layer"] :]:
        hidden = layer(hidden, keys)
    return hidden


def test_fusion_reads_text_cls_and_the_region_mean_of_the_video_patches(model, inputs):
    region = torch.zeros(B, GRID, GRID, dtype=torch.bool)
    region[0, 0, :] = True  # cells 0, 1
    region[1] = True
    region[2, 1, 1] = True  # cell 3
    with torch.no_grad():
        text = model(mode="text", text_ids=inputs["text_ids"], text_mask=inputs["text_mask"])
        video = model(mode="video", video=inputs["video"])
        out = model(
            mode="fusion",
            text_embeds=text["text_embeds"],
            text_mask=inputs["text_mask"],
            video_embeds=video["video_embeds"],
            region=region,
            answers=True,
        )
        hidden = fused_reference(
            model, text["text_embeds"], inputs["text_mask"], video["video_embeds"]
        )
        cells = [[0, 1], [0, 1, 2, 3], [3]]
        means = torch.stack([hidden[b, [L + 1 + c for c in cells[b]]].mean(0) for b in range(B)])
        torch.testing.assert_close(out["entity_logits"], model.mpm_head(means))
        torch.testing.assert_close(out["itm_logits"], model.itm_head(hidden[:, 0]))
        torch.testing.assert_close(out["answer_logits"], model.classifier(hidden[:, 0]))
        qa = model(mode="qa", **inputs)["logits"]
    torch.testing.assert_close(qa, out["answer_logits"])


def test_padding_is_invisible_and_the_text_layers_do_not_see_the_video(model, inputs):
    ids, mask = inputs["text_ids"].clone(), inputs["text_mask"]
    ids[mask == 0] = 7
    with torch.no_grad():
        before = model(mode="qa", **inputs)["logits"]
        after = model(mode="qa", video=inputs["video"], text_ids=ids, text_mask=mask)["logits"]
        text = model(mode="text", text_ids=ids, text_mask=mask)["text_feat"]
        reference = model(mode="text", text_ids=inputs["text_ids"], text_mask=mask)["text_feat"]
        other_video = model(mode="qa", video=inputs["video"].flip(0), text_ids=ids, text_mask=mask)
    torch.testing.assert_close(after, before)
    torch.testing.assert_close(text, reference)
    assert not torch.allclose(other_video["logits"], before)


def test_mlm_head_on_the_fused_text_positions_with_the_tied_decoder(model, inputs):
    predictions = model.text_encoder.cls.predictions
    assert predictions.decoder.weight is model.text_encoder.bert.embeddings.word_embeddings.weight
    mlm_ids = inputs["text_ids"].clone()
    mlm_ids[:, 2] = 4
    with torch.no_grad():
        video = model(mode="video", video=inputs["video"])["video_embeds"]
        ours = model(mode="mlm", mlm_ids=mlm_ids, text_mask=inputs["text_mask"], video_embeds=video)
        masked = model(mode="text", text_ids=mlm_ids, text_mask=inputs["text_mask"])
        hidden = fused_reference(model, masked["text_embeds"], inputs["text_mask"], video)
        transformed = predictions.transform(hidden[:, :L])
        expected = transformed @ predictions.decoder.weight.T + predictions.bias
    torch.testing.assert_close(ours["mlm_logits"], expected)


@pytest.mark.parametrize("value, used", [(0.07, 0.07), (0.9, 0.5), (1e-5, 1e-3)])
def test_temperature_is_clamped_with_the_gradient_of_temp(value, used):
    model = tiny_model()
    with torch.no_grad():
        model.temp.fill_(value)
    temperature = model(mode="temperature")["temperature"]
    temperature.backward()
    assert temperature.item() == pytest.approx(used)
    assert model.temp.grad.item() == 1.0


def test_fsdp_units_are_every_timesformer_block_and_bert_layer(model):
    units = model.fsdp_units()
    assert len(units) == TINY["video_depth"] + TINY["text_layers"]
    assert units[0] is model.visual_encoder.model.blocks[0]
    assert units[-1] is model.text_encoder.bert.encoder.layer[-1]


def test_bad_inputs_are_named(model, inputs):
    with pytest.raises(ValueError, match=r"4 frames of 4 patches.*3 frames of 4 patches"):
        model(mode="video", video=torch.zeros(1, 4, 3, SIZE, SIZE))
    with pytest.raises(ValueError, match="has 9 cells; the video has 4 patch tokens"):
        video = model(mode="video", video=inputs["video"])["video_embeds"]
        text = model(mode="text", text_ids=inputs["text_ids"])["text_embeds"]
        model(
            mode="fusion",
            text_embeds=text,
            text_mask=inputs["text_mask"],
            video_embeds=video,
            region=torch.ones(B, 3, 3, dtype=torch.bool),
        )
    with pytest.raises(ValueError, match="no classifier; build it with num_answers > 0"):
        tiny_model()(mode="qa", **inputs)
    with pytest.raises(ValueError, match="mode must be one of"):
        model(mode="score")
    with pytest.raises(ValueError, match="fusion_layer 3"):
        Alpro(**TINY | {"fusion_layer": 3})
