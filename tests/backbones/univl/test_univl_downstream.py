"""What the downstream tasks add to UniVL: the feature projection, the sentiment head and loss,
and BertAdam; each against a computation written here."""

import pytest
import torch
from official_univl import official_state_dict
from univl_tiny import TINY, tiny_batch

from meltr.backbones.univl import BertAdam, UniVL, UniVLLoss, load_univl_checkpoint

NEW_HEADS = {
    "feature_projection.weight",
    "feature_projection.bias",
    "sentiment_dense.weight",
    "sentiment_dense.bias",
}
RAW_DIM = 3


def _perturbed(model: UniVL) -> UniVL:
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model.double().eval()


@pytest.fixture
def downstream_model() -> UniVL:
    torch.manual_seed(0)
    return _perturbed(UniVL(**TINY, feature_dim=RAW_DIM, sentiment_head=True))


def test_projected_features_equal_the_projection_fed_to_the_plain_model(downstream_model):
    plain = UniVL(**TINY).double().eval()
    state = {k: v for k, v in downstream_model.state_dict().items() if k not in NEW_HEADS}
    plain.load_state_dict(state)
    batch = tiny_batch()
    raw = torch.randn(*batch["features"].shape[:2], RAW_DIM, dtype=torch.float64)
    weight = downstream_model.feature_projection.weight
    bias = downstream_model.feature_projection.bias
    projected = raw @ weight.T + bias
    mask = batch["feature_mask"]
    ours = downstream_model(mode="video", features=raw, feature_mask=mask)
    reference = plain(mode="video", features=projected, feature_mask=mask)
    torch.testing.assert_close(ours["video_hidden"], reference["video_hidden"], rtol=0, atol=1e-12)
    torch.testing.assert_close(
        downstream_model(mode="normalize", features=raw)["normalized_features"],
        plain(mode="normalize", features=projected)["normalized_features"],
        rtol=0,
        atol=1e-12,
    )
    with pytest.raises(ValueError, match=rf"\[B, T, {RAW_DIM}\]"):
        downstream_model(mode="video", features=projected, feature_mask=mask)


def test_regression_is_the_linear_head_on_the_pooled_cross_output(downstream_model):
    batch = tiny_batch()
    raw = torch.randn(*batch["features"].shape[:2], RAW_DIM, dtype=torch.float64)
    text = downstream_model(mode="text", text_ids=batch["text_ids"], text_mask=batch["text_mask"])
    video = downstream_model(mode="video", features=raw, feature_mask=batch["feature_mask"])
    prediction = downstream_model(mode="regress", text=text, video=video)["prediction"]
    pooled = downstream_model(mode="cross", text=text, video=video)["pooled"]
    head = downstream_model.sentiment_dense
    expected = pooled @ head.weight[0] + head.bias[0]
    torch.testing.assert_close(prediction, expected, rtol=0, atol=1e-12)

    labels = torch.tensor([2.4, -0.6, 0.0, -3.0], dtype=torch.float64)
    loss = UniVLLoss(tasks=("sentiment", "joint"))(
        downstream_model, batch | {"features": raw, "label": labels}
    )
    torch.testing.assert_close(loss["sentiment"], (expected - labels).abs().mean())
    assert list(loss) == ["sentiment", "joint"]


def test_regress_needs_the_head(tiny_model, batch):
    text = tiny_model(mode="text", text_ids=batch["text_ids"], text_mask=batch["text_mask"])
    video = tiny_model(mode="video", features=batch["features"], feature_mask=batch["feature_mask"])
    with pytest.raises(ValueError, match="sentiment_head=True"):
        tiny_model(mode="regress", text=text, video=video)
    with pytest.raises(ValueError, match="row by row"):
        tiny_model(mode="cross", text=text, video={k: v[:2] for k, v in video.items()})


def test_the_official_checkpoint_leaves_only_the_new_heads_missing(tmp_path):
    path = tmp_path / "univl.pretrained.bin"
    official = official_state_dict(TINY)
    torch.save(official, path)
    model = UniVL(**TINY, feature_dim=RAW_DIM, sentiment_head=True)
    report = load_univl_checkpoint(model, path)
    assert set(report.missing) == NEW_HEADS
    assert report.unexpected == []
    own = model.state_dict()
    assert all(torch.equal(own[key], value) for key, value in official.items())


def _release_bert_adam(parameters, gradients, lr, betas, eps, weight_decay, max_norm):
    """The release's update rule (UniVL's modules/optimization.py after the training loop's
    clip_grad_norm_(parameters, 1.0)), on plain tensors: one step per list of gradients; the
    weight decay off vectors (the release's bias / LayerNorm groups)."""
    parameters = [p.clone() for p in parameters]
    m = [torch.zeros_like(p) for p in parameters]
    v = [torch.zeros_like(p) for p in parameters]
    for step_gradients in gradients:
        total = torch.sqrt(sum((g**2).sum() for g in step_gradients))
        scale = min(1.0, max_norm / (float(total) + 1e-6))
        for i, (p, g) in enumerate(zip(parameters, step_gradients, strict=True)):
            g = g * scale
            m[i] = betas[0] * m[i] + (1 - betas[0]) * g
            v[i] = betas[1] * v[i] + (1 - betas[1]) * g * g
            update = m[i] / (v[i].sqrt() + eps)
            if p.dim() >= 2:
                update = update + weight_decay * p
            parameters[i] = p - lr * update
    return parameters


def test_bert_adam_follows_the_release_update_rule():
    generator = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (4,), (2, 2, 2)]
    start = [torch.randn(shape, generator=generator, dtype=torch.float64) for shape in shapes]
    # Step 0 has a large gradient (clipped), step 1 a small one (not clipped), step 2 a mix.
    gradients = [
        [5.0 * torch.randn(shape, generator=generator, dtype=torch.float64) for shape in shapes]
        for _ in range(3)
    ]
    gradients[1] = [0.01 * g for g in gradients[1]]
    settings = dict(lr=0.05, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)
    expected = _release_bert_adam(start, gradients, **settings, max_norm=1.0)

    parameters = [torch.nn.Parameter(p.clone()) for p in start]
    optimizer = BertAdam(parameters, **settings, max_grad_norm=1.0)
    for step_gradients in gradients:
        for parameter, gradient in zip(parameters, step_gradients, strict=True):
            parameter.grad = gradient.clone()
        optimizer.step()
    for ours, theirs in zip(parameters, expected, strict=True):
        torch.testing.assert_close(ours.detach(), theirs, rtol=1e-12, atol=1e-12)

    restored = BertAdam([torch.nn.Parameter(p.detach().clone()) for p in parameters], lr=0.05)
    restored.load_state_dict(optimizer.state_dict())
    assert restored.state_dict()["state"][0]["step"] == 3


def test_vectors_are_the_release_s_no_decay_parameters_but_one():
    """The shape rule of BertAdam picks the tensors the release's name rule exempts from decay
    ('bias', 'LayerNorm.bias', 'LayerNorm.weight' in the name), except the LayerNorm that the
    release does not name LayerNorm (it decays that weight)."""
    model = UniVL(**TINY, feature_dim=RAW_DIM, sentiment_head=True)
    by_name = {
        name
        for name, _ in model.named_parameters()
        if any(part in name for part in ("bias", "LayerNorm.bias", "LayerNorm.weight"))
    }
    by_shape = {name for name, parameter in model.named_parameters() if parameter.dim() < 2}
    assert by_shape - by_name == {"normalize_video.visual_norm2d.weight"}
    assert by_name <= by_shape
