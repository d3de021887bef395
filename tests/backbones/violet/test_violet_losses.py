"""The Violet loss source against independent computations on a tiny model (eval mode, so that
dropout and stochastic depth are off and every pass is deterministic)."""

import math
from types import SimpleNamespace

import pytest
import torch
from violet_tiny import CELL, FRAMES, GRID, MASK, TINY, texts, tiny_model, videos

from meltr.backbones.violet import BlockwiseVideoMask, MaskTextTokens, VioletLoss

VOCAB = SimpleNamespace(
    mask_id=MASK, special_ids=frozenset(range(5)), vocab_size=TINY["vocab_size"]
)
B, K = 3, 3


@pytest.fixture(scope="module")
def model():
    return tiny_model(multiple_choice=True, num_answers=6, num_classes=4).eval()


@pytest.fixture(scope="module")
def batch():
    """Items masked by the package's transforms, then stacked."""
    generator = torch.Generator().manual_seed(0)
    text_ids, text_mask = texts(B, 7, generator)
    option_ids, option_mask = texts(B * K, 9, generator)
    video = videos(B, generator)
    items = []
    for b in range(B):
        item = {"video": video[b], "text_ids": text_ids[b], "text_mask": text_mask[b]}
        item = MaskTextTokens(VOCAB)(item, generator)
        items.append(BlockwiseVideoMask(cell_size=CELL)(item, generator))
    stacked = {key: torch.stack([item[key] for item in items]) for key in items[0]}
    stacked.update(
        option_ids=option_ids.view(B, K, 9),
        option_mask=option_mask.view(B, K, 9),
        answer_index=torch.tensor([1, -1, 2]),
        label=torch.tensor([3, 0, 1]),
        vq=torch.randint(
            0, TINY["mvm_vocab_size"], (B, FRAMES, GRID, GRID), generator=generator
        ).to(torch.int16),
    )
    return stacked


def neg_log_softmax(row, index):
    return -(row[index] - torch.logsumexp(row, 0))


def expected_vtm(model, batch, video_key="video"):
    """Every pair scored on its own (a 1 x 1 ``mode="score"`` call); then for each video v:
    -log softmax over texts t of s(t, v) / 0.05 at t = v, averaged over v."""
    with torch.no_grad():
        texts_alone = [
            model(
                mode="text",
                text_ids=batch["text_ids"][t : t + 1],
                text_mask=batch["text_mask"][t : t + 1],
            )
            for t in range(B)
        ]
        videos_alone = [model(mode="video", video=batch[video_key][v : v + 1]) for v in range(B)]
        scores = torch.tensor(
            [
                [
                    model(mode="score", text=text, video=video)["scores"].item()
                    for video in videos_alone
                ]
                for text in texts_alone
            ]
        )
    return sum(neg_log_softmax(scores[:, v] / 0.05, v) for v in range(B)) / B


def pretext(model, batch, text_key="mtm_ids", video_key="masked_video"):
    with torch.no_grad():
        return model(
            mode="pretext",
            video=batch[video_key],
            text_ids=batch[text_key],
            text_mask=batch["text_mask"],
        )


def test_vtm_is_the_cross_entropy_over_texts_of_every_pair(model, batch):
    with torch.no_grad():
        losses = VioletLoss(tasks=("vtm",))(model, batch)
    torch.testing.assert_close(losses["vtm"], expected_vtm(model, batch), atol=1e-5, rtol=1e-5)


def test_masked_video_for_all_feeds_the_masked_frames_to_vtm(model, batch):
    with torch.no_grad():
        masked = VioletLoss(tasks=("vtm",), masked_video_for_all=True)(model, batch)["vtm"]
    expected = expected_vtm(model, batch, video_key="masked_video")
    torch.testing.assert_close(masked, expected, atol=1e-5, rtol=1e-5)
    assert not torch.isclose(masked, expected_vtm(model, batch))


@pytest.mark.parametrize(
    "tasks, video_key", [(("vtm", "mtm"), "video"), (("vtm", "mtm", "mvm"), "masked_video")]
)
def test_mtm_averages_over_the_masked_tokens(model, batch, tasks, video_key):
    """With mvm among the tasks the one pretext pass sees the masked video, else the clean."""
    with torch.no_grad():
        losses = VioletLoss(tasks=tasks)(model, batch)
    logits, labels = pretext(model, batch, video_key=video_key)["mtm_logits"], batch["mtm_labels"]
    terms = [
        neg_log_softmax(logits[b, i], labels[b, i])
        for b in range(B)
        for i in range(labels.shape[1])
        if labels[b, i] != -100
    ]
    assert len(terms) >= B
    torch.testing.assert_close(losses["mtm"], sum(terms) / len(terms), atol=1e-5, rtol=1e-5)


def test_mvm_predicts_the_codes_of_the_masked_cells(model, batch):
    with torch.no_grad():
        losses = VioletLoss(tasks=("vtm", "mtm", "mvm"))(model, batch)
    logits = pretext(model, batch)["mvm_logits"]
    mask, vq = batch["mvm_mask"], batch["vq"].long()
    terms = [
        neg_log_softmax(logits[b, t, i, j], vq[b, t, i, j])
        for b in range(B)
        for t in range(FRAMES)
        for i in range(GRID)
        for j in range(GRID)
        if mask[b, t, i, j]
    ]
    torch.testing.assert_close(losses["mvm"], sum(terms) / len(terms), atol=1e-5, rtol=1e-5)


def test_mvm_without_mtm_pairs_the_masked_video_with_the_clean_text(model, batch):
    with torch.no_grad():
        losses = VioletLoss(tasks=("vtm", "mvm"))(model, batch)
        both = VioletLoss(tasks=("vtm", "mtm", "mvm"))(model, batch)
    logits = pretext(model, batch, text_key="text_ids")["mvm_logits"]
    mask, vq = batch["mvm_mask"], batch["vq"].long()
    expected = torch.nn.functional.cross_entropy(logits[mask], vq[mask])
    torch.testing.assert_close(losses["mvm"], expected, atol=1e-5, rtol=1e-5)
    assert not torch.isclose(losses["mvm"], both["mvm"])


def test_multiple_choice_qa_leaves_out_items_without_an_answer(model, batch):
    with torch.no_grad():
        losses = VioletLoss(tasks=("qa", "vtm", "mtm", "mvm"))(model, batch)
        logits = model(
            mode="qa",
            video=batch["video"],
            option_ids=batch["option_ids"],
            option_mask=batch["option_mask"],
        )["logits"]
    assert list(losses) == ["qa", "vtm", "mtm", "mvm"]
    expected = (neg_log_softmax(logits[0], 1) + neg_log_softmax(logits[2], 2)) / 2
    torch.testing.assert_close(losses["qa"], expected, atol=1e-5, rtol=1e-5)


def test_open_ended_qa_uses_the_question(model, batch):
    open_ended = {k: v for k, v in batch.items() if k not in ("option_ids", "option_mask")}
    open_ended["answer_index"] = torch.tensor([5, 0, -1])
    with torch.no_grad():
        losses = VioletLoss(tasks=("qa", "mtm"))(model, open_ended)
        logits = model(
            mode="qa",
            video=batch["video"],
            text_ids=batch["text_ids"],
            text_mask=batch["text_mask"],
        )["logits"]
    expected = (neg_log_softmax(logits[0], 5) + neg_log_softmax(logits[1], 0)) / 2
    torch.testing.assert_close(losses["qa"], expected, atol=1e-5, rtol=1e-5)


def test_no_answer_at_all_gives_zero(model, batch):
    none = {**batch, "answer_index": torch.full((B,), -1)}
    with torch.no_grad():
        assert VioletLoss(tasks=("qa",))(model, none)["qa"] == 0


def test_classification_is_video_only_with_mvm(model, batch):
    video_only = {k: batch[k] for k in ("video", "masked_video", "mvm_mask", "vq", "label")}
    with torch.no_grad():
        losses = VioletLoss(tasks=("cls", "mvm"))(model, video_only)
        logits = model(mode="classify", video=batch["video"])["logits"]
        mvm_logits = model(mode="pretext", video=batch["masked_video"])["mvm_logits"]
    expected = sum(neg_log_softmax(logits[b], batch["label"][b]) for b in range(B)) / B
    torch.testing.assert_close(losses["cls"], expected, atol=1e-5, rtol=1e-5)
    mask = batch["mvm_mask"]
    expected_mvm = torch.nn.functional.cross_entropy(mvm_logits[mask], batch["vq"].long()[mask])
    torch.testing.assert_close(losses["mvm"], expected_mvm, atol=1e-5, rtol=1e-5)


def test_training_mode_losses_depend_only_on_the_global_rng(batch):
    model = tiny_model().train()
    source = VioletLoss(tasks=("vtm", "mtm", "mvm"))
    torch.manual_seed(7)
    first = source(model, batch)
    torch.manual_seed(7)
    second = source(model, batch)
    third = source(model, batch)
    for task in source.tasks:
        assert first[task] == second[task] and math.isfinite(first[task].item())
    assert any(first[task] != third[task] for task in source.tasks)  # dropout is on


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(tasks=("mtm", "vtm")), "must start with a primary task"),
        (dict(tasks=("vtm", "qa")), "unknown auxiliary"),
        (dict(tasks=("vtm", "mtm", "mtm")), "duplicates"),
        (dict(temperature=0.0), "positive"),
    ],
)
def test_bad_task_lists_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VioletLoss(**kwargs)


def test_bad_batches_are_named(model, batch):
    with pytest.raises(ValueError, match=r"answer_index \[7\] outside \[-1, 3\)"):
        VioletLoss(tasks=("qa",))(model, {**batch, "answer_index": torch.tensor([7, 0, 1])})
    with pytest.raises(KeyError, match="masked_video"):
        VioletLoss(tasks=("vtm", "mvm"))(
            model, {k: v for k, v in batch.items() if k != "masked_video"}
        )
    with pytest.raises(ValueError, match="at least 2 pairs"):
        VioletLoss(tasks=("vtm",))(model, {k: v[:1] for k, v in batch.items()})
