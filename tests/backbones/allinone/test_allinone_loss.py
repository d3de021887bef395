import math

import pytest
import torch
from torch.func import functional_call, jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

from meltr.backbones.allinone import AllInOneRetrievalLoss
from meltr.backbones.allinone.losses import sample_hard_negatives

TEMPERATURE = 0.05


def features(model, batch):
    text = model(mode="text", text_ids=batch["text_ids"], text_mask=batch["text_mask"])
    video = model(mode="video", video=batch["video"])
    return text["text_feat"], video["video_feat"]


def test_keys_and_order(tiny_model, tiny_batch):
    losses = AllInOneRetrievalLoss(tasks=("itc", "vtm", "mlm"))(tiny_model, tiny_batch)
    assert list(losses) == ["itc", "vtm", "mlm"]
    assert all(v.dim() == 0 for v in losses.values())


def test_itc_matches_independent_formula(tiny_model, tiny_batch):
    loss = AllInOneRetrievalLoss(tasks=("itc",))(tiny_model, tiny_batch)["itc"]
    text, video = (f.detach() for f in features(tiny_model, tiny_batch))
    B = len(text)
    total = 0.0
    for i in range(B):
        row = [float(text[i] @ video[j]) / TEMPERATURE for j in range(B)]
        col = [float(text[j] @ video[i]) / TEMPERATURE for j in range(B)]
        total += math.log(sum(math.exp(r) for r in row)) - row[i]
        total += math.log(sum(math.exp(c) for c in col)) - col[i]
    assert loss.item() == pytest.approx(total / (2 * B), rel=1e-5)


def test_mlm_matches_manual_cross_entropy(tiny_model, tiny_batch):
    loss = AllInOneRetrievalLoss(tasks=("itc", "mlm"))(tiny_model, tiny_batch)["mlm"]
    logits = tiny_model(
        mode="joint",
        text_ids=tiny_batch["mlm_ids"],
        text_mask=tiny_batch["text_mask"],
        video=tiny_batch["video"],
    )["mlm_logits"]
    labels = tiny_batch["mlm_labels"]
    terms = [
        -torch.log_softmax(logits[b, t], dim=0)[labels[b, t]]
        for b in range(labels.shape[0])
        for t in range(labels.shape[1])
        if labels[b, t] != -100
    ]
    torch.testing.assert_close(loss, torch.stack(terms).mean())


def test_hard_negatives_follow_softmax_excluding_the_positive():
    similarity = torch.tensor([[0.9, 0.80, 0.70], [0.1, 0.2, 0.15], [0.5, 0.45, 0.4]])
    torch.manual_seed(0)
    draws = torch.stack([sample_hard_negatives(similarity, 0.1) for _ in range(1000)])
    for i in range(3):
        others = [j for j in range(3) if j != i]
        weights = torch.tensor([math.exp(similarity[i, j] / 0.1) for j in others])
        expected = weights / weights.sum()
        observed = torch.stack([(draws[:, i] == j).double().mean() for j in others])
        assert (draws[:, i] != i).all()
        torch.testing.assert_close(observed, expected.double(), atol=0.05, rtol=0)


def test_vtm_replays_under_a_fixed_rng_state_and_matches_manual_loss(tiny_model, tiny_batch):
    source = AllInOneRetrievalLoss(tasks=("itc", "vtm"))
    torch.manual_seed(5)
    first = source(tiny_model, tiny_batch)["vtm"]
    torch.manual_seed(5)
    second = source(tiny_model, tiny_batch)["vtm"]
    assert torch.equal(first, second)

    # The same negatives drawn by hand from the same RNG state, then the 2-way CE by hand.
    text, video = features(tiny_model, tiny_batch)
    similarity = (text @ video.T).detach()
    B = len(text)
    off_diagonal = ~torch.eye(B, dtype=torch.bool)
    weights = torch.exp(similarity / TEMPERATURE) * off_diagonal
    torch.manual_seed(5)
    negative_text = torch.multinomial(weights.T / weights.T.sum(1, keepdim=True), 1)[:, 0]
    negative_video = torch.multinomial(weights / weights.sum(1, keepdim=True), 1)[:, 0]
    pairs = [(i, i, 1) for i in range(B)]
    pairs += [(int(negative_text[v]), v, 0) for v in range(B)]
    pairs += [(t, int(negative_video[t]), 0) for t in range(B)]
    terms = []
    for t, v, label in pairs:
        logits = tiny_model(
            mode="joint",
            text_ids=tiny_batch["text_ids"][t : t + 1],
            text_mask=tiny_batch["text_mask"][t : t + 1],
            video=tiny_batch["video"][v : v + 1],
        )["vtm_logits"][0]
        terms.append(-torch.log_softmax(logits, 0)[label])
    torch.testing.assert_close(first, torch.stack(terms).mean())


def test_gradients_are_finite_and_reach_every_parameter(tiny_model, tiny_batch):
    losses = AllInOneRetrievalLoss(tasks=("itc", "mlm", "vtm"))(tiny_model, tiny_batch)
    sum(losses.values()).backward()
    for name, parameter in tiny_model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name


def test_jvp_over_functional_call_agrees_with_finite_differences(tiny_model, tiny_batch):
    model = tiny_model.double()
    batch = {k: v[:3].double() if v.is_floating_point() else v[:3] for k, v in tiny_batch.items()}
    source = AllInOneRetrievalLoss(tasks=("itc", "mlm", "vtm"))
    params = {k: v.detach() for k, v in model.named_parameters()}
    generator = torch.Generator().manual_seed(7)
    direction = {
        k: torch.randn(v.shape, generator=generator, dtype=v.dtype) for k, v in params.items()
    }

    def losses(p):
        torch.manual_seed(11)
        return torch.stack(
            list(source(lambda **kw: functional_call(model, p, (), kw), batch).values())
        )

    with sdpa_kernel(SDPBackend.MATH):
        _, tangent = jvp(losses, (params,), (direction,))
    eps = 1e-6
    with torch.no_grad():
        plus = losses({k: v + eps * direction[k] for k, v in params.items()})
        minus = losses({k: v - eps * direction[k] for k, v in params.items()})
    torch.testing.assert_close(tangent, (plus - minus) / (2 * eps), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "tasks, match",
    [(("mlm", "itc"), "start with"), (("itc", "mfm"), "unknown"), (("itc", "mlm", "mlm"), "dup")],
)
def test_bad_tasks_are_refused(tasks, match):
    with pytest.raises(ValueError, match=match):
        AllInOneRetrievalLoss(tasks=tasks)


def test_missing_batch_key_is_named(tiny_model, tiny_batch):
    del tiny_batch["mlm_labels"]
    with pytest.raises(KeyError, match="mlm_labels"):
        AllInOneRetrievalLoss()(tiny_model, tiny_batch)
