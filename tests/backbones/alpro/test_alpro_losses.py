"""The ALPRO loss source against formulas written here, on the tiny model in eval mode (dropout
and stochastic depth off, so that every pass is deterministic)."""

import logging
import math

import pytest
import torch
from alpro_tiny import ENTITIES, TINY, prompter_files, texts, tiny_model, training_batch

from meltr.backbones.alpro import AlproLoss, EntityPrompter, load_prompter, read_entities
from meltr.backbones.alpro.losses import hard_negatives, pem_loss

B, ANSWERS = 4, 6


@pytest.fixture(scope="module")
def model():
    return tiny_model(num_entities=len(ENTITIES), num_answers=ANSWERS).eval()


@pytest.fixture(scope="module")
def batch():
    return training_batch(B, torch.Generator().manual_seed(0), answers=[1, -1, 2, 5])


@pytest.fixture(scope="module")
def prompter():
    """A prompter of 2 templates x 5 entities with random prompt tokens (template-major)."""
    ids, mask = texts(2 * len(ENTITIES), 6, torch.Generator().manual_seed(5))
    return EntityPrompter(tiny_model(seed=1), ids, mask, num_templates=2)


def cross_entropy(logits, target):
    return -(logits[target] - torch.logsumexp(logits, 0))


def features(model, batch):
    with torch.no_grad():
        text = model(mode="text", text_ids=batch["text_ids"], text_mask=batch["text_mask"])
        video = model(mode="video", video=batch["video"])
    return text, video


def test_vtc_is_the_symmetric_cross_entropy_at_the_learnt_temperature(model, batch):
    text, video = features(model, batch)
    logits = text["text_feat"] @ video["video_feat"].T / model.temp.clamp(0.001, 0.5)
    t2v = torch.stack([cross_entropy(logits[i], i) for i in range(B)]).mean()
    v2t = torch.stack([cross_entropy(logits[:, j], j) for j in range(B)]).mean()
    ours = AlproLoss(tasks=("vtc",))(model, batch)["vtc"]
    torch.testing.assert_close(ours, (t2v + v2t) / 2)


def test_hard_negatives_follow_the_softmax_of_the_other_columns():
    """Over 8000 draws each row's frequencies match ``exp(s_ij) / sum_{k != i} exp(s_ik)``;
    never the row itself."""
    similarity = torch.tensor([[5.0, 1.0, 0.0, -1.0], [2.0, 9.0, 2.0, 1.0], [0.5, 0.0, 3.0, 0.5]])
    similarity = torch.cat([similarity, torch.tensor([[0.0, 1.0, 2.0, 4.0]])])
    torch.manual_seed(0)
    draws = torch.stack([hard_negatives(similarity) for _ in range(8000)])
    for i in range(4):
        others = [j for j in range(4) if j != i]
        weights = torch.tensor([math.exp(similarity[i, j]) for j in others])
        counts = torch.tensor([(draws[:, i] == j).sum().item() for j in others], dtype=torch.float)
        assert (draws[:, i] == i).sum() == 0
        torch.testing.assert_close(counts / 8000, weights / weights.sum(), atol=0.02, rtol=0)


def test_vtm_scores_positives_and_one_sampled_hard_negative_per_text_and_per_video(model, batch):
    """Each pair fused on its own; negatives drawn, with the same RNG state, from the
    softmax of the similarities (diagonal excluded): a video per text, then a text per video;
    labels 1 for the B positives, 0 for the 2 B negatives."""
    torch.manual_seed(7)
    ours = AlproLoss(tasks=("vtc", "vtm"))(model, batch)["vtm"]

    text, video = features(model, batch)
    similarity = text["text_feat"] @ video["video_feat"].T / model.temp
    torch.manual_seed(7)
    masked = similarity - torch.diag(torch.full((B,), math.inf))
    video_for_text = torch.multinomial(masked.softmax(1), 1).squeeze(1)
    text_for_video = torch.multinomial(masked.T.softmax(1), 1).squeeze(1)
    pairs = [(i, i, 1) for i in range(B)]
    pairs += [(i, int(video_for_text[i]), 0) for i in range(B)]
    pairs += [(int(text_for_video[j]), j, 0) for j in range(B)]
    terms = []
    with torch.no_grad():
        for t, v, label in pairs:
            logits = model(
                mode="fusion",
                text_embeds=text["text_embeds"][t : t + 1],
                text_mask=batch["text_mask"][t : t + 1],
                video_embeds=video["video_embeds"][v : v + 1],
            )["itm_logits"][0]
            terms.append(cross_entropy(logits, label))
    torch.testing.assert_close(ours, torch.stack(terms).mean(), rtol=1e-5, atol=1e-6)


def test_mlm_is_the_cross_entropy_at_the_masked_tokens(model, batch):
    with torch.no_grad():
        video = model(mode="video", video=batch["video"])["video_embeds"]
        logits = model(
            mode="mlm", mlm_ids=batch["mlm_ids"], text_mask=batch["text_mask"], video_embeds=video
        )["mlm_logits"]
    labels = batch["mlm_labels"]
    positions = (labels != -100).nonzero().tolist()
    assert positions
    expected = torch.stack([cross_entropy(logits[b, p], labels[b, p]) for b, p in positions])
    torch.testing.assert_close(AlproLoss(tasks=("qa", "mlm"))(model, batch)["mlm"], expected.mean())


def test_qa_is_the_cross_entropy_at_the_answers_in_the_vocabulary(model, batch):
    with torch.no_grad():
        logits = model(
            mode="qa",
            video=batch["video"],
            text_ids=batch["text_ids"],
            text_mask=batch["text_mask"],
        )["logits"]
    expected = torch.stack([cross_entropy(logits[b], a) for b, a in [(0, 1), (2, 2), (3, 5)]])
    torch.testing.assert_close(AlproLoss(tasks=("qa",))(model, batch)["qa"], expected.mean())


def test_prompter_soft_labels_are_a_softmax_over_the_template_mean_prompt_features(prompter):
    """``prompt_feat[e]`` = mean over templates k of ``text_feat(prompt k of entity e)``;
    soft labels ``softmax(video_feat(crop) @ prompt_feat.T / temp)``; kept when the largest is at
    least 0.2."""
    network = prompter.model
    ids, mask = texts(2 * len(ENTITIES), 6, torch.Generator().manual_seed(5))
    crop = torch.randn(3, 3, 3, 16, 16)
    with torch.no_grad():
        per_prompt = network(mode="text", text_ids=ids, text_mask=mask)["text_feat"]
        prompt_feat = (per_prompt[:5] + per_prompt[5:]) / 2
        video_feat = network(mode="video", video=crop)["video_feat"]
    expected = (video_feat @ prompt_feat.T / network.temp).softmax(1)
    soft, keep = prompter(crop)
    torch.testing.assert_close(soft, expected)
    assert keep.tolist() == (expected.max(1).values >= 0.2).tolist()
    prompter.train()
    assert not prompter.training and not network.training


def test_pem_loss_is_the_soft_label_cross_entropy_over_the_kept_items():
    logits = torch.randn(4, 5)
    soft = torch.rand(4, 5).softmax(1)
    keep = torch.tensor([True, False, True, True])
    expected = sum(
        -(soft[b] * (logits[b] - torch.logsumexp(logits[b], 0))).sum() for b in (0, 2, 3)
    )
    torch.testing.assert_close(pem_loss(logits, soft, keep), expected / 3)
    assert pem_loss(logits, soft, torch.zeros(4, dtype=torch.bool)).item() == 0.0
    with pytest.raises(ValueError, match="num_entities"):
        pem_loss(logits, torch.rand(4, 6), keep)


def test_pem_classifies_the_fused_region_against_the_prompters_labels(model, batch, prompter):
    soft, keep = prompter(batch["pem_crop"])
    text, video = features(model, batch)
    with torch.no_grad():
        logits = model(
            mode="fusion",
            text_embeds=text["text_embeds"],
            text_mask=batch["text_mask"],
            video_embeds=video["video_embeds"],
            region=batch["pem_region"],
        )["entity_logits"]
    ours = AlproLoss(tasks=("qa", "pem"), prompter=prompter)(model, batch)["pem"]
    torch.testing.assert_close(ours, pem_loss(logits, soft, keep))


def test_every_task_in_order_with_gradients_only_for_the_model(batch, prompter):
    model = tiny_model(num_entities=len(ENTITIES), num_answers=ANSWERS).eval()
    losses = AlproLoss(prompter=prompter)(model, batch)
    assert list(losses) == ["qa", "vtc", "vtm", "mlm", "pem"]
    losses["pem"].backward()
    assert model.mpm_head[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in prompter.parameters())
    assert model.classifier[0].weight.grad is None


def test_pem_is_left_out_with_a_warning_without_a_prompter(caplog):
    with caplog.at_level(logging.WARNING):
        loss = AlproLoss(tasks=("qa", "vtc", "vtm", "mlm", "pem"), prompter=None)
    assert loss.tasks == ("qa", "vtc", "vtm", "mlm")
    assert "PEM is left out, no prompter checkpoint was given" in caplog.text
    with pytest.raises(ValueError, match="primary task"):
        AlproLoss(tasks=("mlm", "qa"))


def test_load_prompter_reads_its_files(tmp_path):
    files = prompter_files(tmp_path)
    assert read_entities(files.entities) == list(ENTITIES)
    assert read_entities(files.entities, 2) == ["cat", "dog"]
    prompter = load_prompter(
        files.checkpoint,
        files.entities,
        files.vocab,
        model=lambda **kw: tiny_model(**kw),
        num_entities=3,
    )
    assert prompter.num_entities == 3
    for key, value in files.network.state_dict().items():
        torch.testing.assert_close(prompter.model.state_dict()[key], value, rtol=0, atol=0)
    assert load_prompter(None) is None
    with pytest.raises(ValueError, match="lists 5 entities, 6 wanted"):
        read_entities(files.entities, 6)
    with pytest.raises(ValueError, match="prompter checkpoint .*absent.pt does not exist"):
        load_prompter(tmp_path / "absent.pt", files.entities, files.vocab)


def test_load_prompter_refuses_a_file_without_the_weights_it_uses(tmp_path):
    files = prompter_files(tmp_path)
    state = files.network.state_dict()
    del state["vision_proj.weight"]
    torch.save(state, files.checkpoint)
    with pytest.raises(ValueError, match=r"lacks weights it needs: \['vision_proj.weight'\]"):
        load_prompter(
            files.checkpoint, files.entities, files.vocab, model=lambda **kw: tiny_model(**kw)
        )


def test_chance_levels():
    levels = AlproLoss(tasks=("vtc", "vtm")).chance_levels(TINY["width"])
    assert levels["vtc"] == pytest.approx(math.log(16))
    assert levels["vtm"] == pytest.approx(-(1 / 3) * math.log(1 / 3) - (2 / 3) * math.log(2 / 3))
