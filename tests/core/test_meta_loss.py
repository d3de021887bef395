"""MetaLossTransformer and LinearMetaLoss against independent computations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import meltr


def _transformer(embedding="scale+task", dtype=torch.float64, init="paper"):
    torch.manual_seed(0)
    return meltr.MetaLossTransformer(
        3, dim=16, heads=4, ff_dim=24, scale_hidden=8, embedding=embedding, init=init
    ).to(dtype)


@pytest.mark.parametrize("embedding", ["scale+task", "scale", "task"])
def test_shapes_and_batching(embedding):
    meta = _transformer(embedding)
    losses = torch.rand(5, 3, dtype=torch.float64)
    batched = meta(losses)
    assert batched.shape == (5,)
    assert meta(losses[2]).shape == ()
    torch.testing.assert_close(torch.stack([meta(row) for row in losses]), batched)


def test_matches_torch_encoder_layer_with_copied_weights():
    meta = _transformer()
    layer = nn.TransformerEncoderLayer(16, 4, 24, dropout=0.0, batch_first=True).double()
    with torch.no_grad():
        layer.self_attn.in_proj_weight.copy_(meta.attention.in_proj.weight)
        layer.self_attn.in_proj_bias.copy_(meta.attention.in_proj.bias)
        layer.self_attn.out_proj.weight.copy_(meta.attention.out_proj.weight)
        layer.self_attn.out_proj.bias.copy_(meta.attention.out_proj.bias)
        layer.linear1.load_state_dict(meta.feed_forward[0].state_dict())
        layer.linear2.load_state_dict(meta.feed_forward[3].state_dict())
        layer.norm1.load_state_dict(meta.norm1.state_dict())
        layer.norm2.load_state_dict(meta.norm2.state_dict())
    losses = torch.rand(4, 3, dtype=torch.float64)
    tokens = meta.scale_embedding(losses.unsqueeze(-1)) + meta.task_embedding.weight
    expected = meta.head(layer(tokens).mean(dim=1)).squeeze(-1)
    torch.testing.assert_close(meta(losses), expected)


def test_task_embedding_only_has_zero_loss_derivative():
    meta = _transformer("task")
    losses = torch.rand(3, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(meta(losses), losses, allow_unused=True, materialize_grads=True)
    assert torch.equal(grad, torch.zeros(3, dtype=torch.float64))


def test_scale_embedding_has_nonzero_loss_derivative():
    meta = _transformer("scale")
    losses = torch.rand(3, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(meta(losses), losses)
    assert grad.abs().max() > 0


def test_mixed_second_derivative_matches_finite_differences():
    """d/dphi (dM/dl) via double backward vs central differences in one phi entry."""
    meta = _transformer()
    with torch.no_grad():
        for p in meta.parameters():
            p.add_(0.3 * torch.randn_like(p))
    losses = torch.tensor([0.7, 1.3, 0.2], dtype=torch.float64)
    weight = meta.scale_embedding[0].weight

    def dmeta_dl(create_graph):
        x = losses.clone().requires_grad_()
        return torch.autograd.grad(meta(x), x, create_graph=create_graph)[0]

    (mixed,) = torch.autograd.grad(dmeta_dl(True)[1], weight)
    eps = 1e-6
    with torch.no_grad():
        weight[3, 0] += eps
    plus = dmeta_dl(False)[1]
    with torch.no_grad():
        weight[3, 0] -= 2 * eps
    minus = dmeta_dl(False)[1]
    torch.testing.assert_close(mixed[3, 0], (plus - minus) / (2 * eps), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("init", ["sum", "paper"])
def test_initialisation(init):
    meta = meltr.MetaLossTransformer(2, init=init)
    weight = meta.attention.in_proj.weight.detach()
    assert 0.018 < float(weight.std()) < 0.022
    assert abs(float(weight.mean())) < 0.002
    assert torch.equal(meta.attention.in_proj.bias, torch.zeros_like(meta.attention.in_proj.bias))
    assert meta.head.bias is None
    head = meta.head.weight.detach()
    if init == "sum":
        assert torch.equal(head, torch.zeros_like(head))
    else:
        assert 0.01 < float(head.std()) < 0.03


@pytest.mark.parametrize("embedding", ["scale+task", "scale", "task"])
def test_sum_init_starts_at_the_plain_sum_with_unit_loss_derivatives(embedding):
    """The default start: M(l) = sum_t l_t and dM/dl_t = 1 exactly, for any losses."""
    torch.manual_seed(0)
    meta = meltr.MetaLossTransformer(3, dim=16, heads=4, embedding=embedding).double()
    losses = torch.tensor([[0.7, 2.3, 0.01], [5.0, 0.2, 1.1]], dtype=torch.float64)
    losses.requires_grad_()
    value = meta(losses)
    assert torch.equal(value, losses.detach().sum(dim=1))
    (grad,) = torch.autograd.grad(value.sum(), losses)
    assert torch.equal(grad, torch.ones_like(grad))


def test_sum_init_is_the_sum_plus_the_paper_network_with_the_same_weights():
    """M_sum(l) = sum_t l_t + M_paper(l) once both hold the same (non-zero) weights, and the
    mixed derivative d/dphi dM/dl, which the hypergradient descends, is the paper network's."""
    paper = _transformer(init="paper")
    residual = _transformer(init="sum")
    with torch.no_grad():
        for p in paper.parameters():
            p.add_(0.3 * torch.randn_like(p))
    weights = {k: v for k, v in paper.state_dict().items() if k != "sum_weight"}
    residual.load_state_dict(weights | {"sum_weight": residual.sum_weight})
    losses = torch.tensor([0.7, 1.3, 0.2], dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(residual(losses), losses.sum() + paper(losses))

    def mixed(meta):
        (dmeta_dl,) = torch.autograd.grad(meta(losses), losses, create_graph=True)
        return torch.autograd.grad(
            dmeta_dl @ torch.tensor([1.0, -2.0, 0.5]).double(), meta.head.weight
        )[0]

    torch.testing.assert_close(mixed(residual), mixed(paper))


def test_the_parameterisation_travels_with_the_state():
    """A state computes what it computed when saved, whichever init built the module; a state
    saved before ``sum_weight`` existed (the paper's network) loads as init="paper"."""
    paper, residual = _transformer(init="paper"), _transformer(init="sum")
    losses = torch.tensor([0.7, 1.3, 0.2], dtype=torch.float64)
    expected = paper(losses)
    old_state = {k: v for k, v in paper.state_dict().items() if k != "sum_weight"}
    residual.load_state_dict(old_state)
    assert residual.init == "paper"
    torch.testing.assert_close(residual(losses), expected)
    fresh = _transformer(init="sum")
    paper.load_state_dict(fresh.state_dict())
    assert paper.init == "sum"
    torch.testing.assert_close(paper(losses), losses.sum())


def test_sum_init_head_receives_a_hypergradient_at_the_start():
    """With the head at zero, d/dphi dM/dl is non-zero in the head (so phi leaves the sum on the
    first meta step) and zero everywhere upstream of it."""
    meta = _transformer(init="sum")
    losses = torch.tensor([0.7, 1.3, 0.2], dtype=torch.float64, requires_grad=True)
    (dmeta_dl,) = torch.autograd.grad(meta(losses), losses, create_graph=True)
    objective = dmeta_dl @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    head, scale = torch.autograd.grad(objective, [meta.head.weight, meta.scale_embedding[0].weight])
    assert head.abs().max() > 0
    assert torch.equal(scale, torch.zeros_like(scale))


def test_bad_shapes_and_arguments():
    meta = _transformer()
    with pytest.raises(ValueError, match=r"\[3\] or \[B, 3\].*\(4,\)"):
        meta(torch.rand(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="embedding"):
        meltr.MetaLossTransformer(3, embedding="both")
    with pytest.raises(ValueError, match="divisible"):
        meltr.MetaLossTransformer(3, dim=10, heads=4)
    with pytest.raises(ValueError, match="init must be one of"):
        meltr.MetaLossTransformer(3, init="zeros")


def test_linear_meta_loss():
    meta = meltr.LinearMetaLoss(3, init=[1.0, 0.5, -2.0])
    losses = torch.tensor([[0.2, 0.4, 0.1], [1.0, 2.0, 3.0]])
    torch.testing.assert_close(meta(losses), torch.tensor([0.2, -4.0]))
    assert meta(losses[0]).shape == ()
    assert torch.equal(meltr.LinearMetaLoss(2).weight, torch.ones(2))
    with pytest.raises(ValueError, match="2 values, expected num_tasks=3"):
        meltr.LinearMetaLoss(3, init=[1.0, 2.0])
