"""MetaLossTransformer on an MLP (with dropout) and a small SDPA transformer: the learner's
hypergradient against formulas written independently here (double backward; torch.func unroll).

The transformer's attention uses the default fused CPU kernel, which has neither double-backward
nor forward-mode rules, so Identity/Neumann/CG passing on it shows the backbone is never
differentiated twice (finite_difference) and that ``forward`` switches to the math kernel.
"""

from __future__ import annotations

import pytest
import torch
from core_toys import (
    MLP,
    TinyTransformer,
    mlp_batch,
    mlp_source,
    reference_hypergradient,
    relative_error,
    transformer_batch,
)
from torch.nn.attention import SDPBackend, sdpa_kernel

import meltr
from meltr.solvers import ConjugateGradient, Neumann, Unrolled

BACKBONES = {
    "mlp": (lambda dtype: MLP(dropout=0.2, dtype=dtype), mlp_batch),
    "sdpa": (lambda dtype: TinyTransformer(dtype=dtype), transformer_batch),
}
TOL = {
    torch.float64: {
        "autograd": 1e-9,
        "forward": 1e-9,
        "task_gradients": 1e-9,
        "finite_difference": 1e-6,
        "finite_difference_one_sided": 1e-6,
    },
    torch.float32: {
        "autograd": 1e-4,
        "forward": 1e-4,
        "task_gradients": 1e-4,
        "finite_difference": 3e-2,
        "finite_difference_one_sided": 3e-2,
    },
}


def _learner(model, meta, products="finite_difference", **kwargs):
    return meltr.MetaLearner(
        model,
        meta,
        mlp_source,
        torch.optim.SGD(model.parameters(), lr=0.1),
        torch.optim.Adam(meta.parameters(), lr=1e-3),
        products=products,
        **kwargs,
    )


def _meta(dtype):
    torch.manual_seed(0)
    meta = meltr.MetaLossTransformer(3, dim=16, heads=4, ff_dim=32, scale_hidden=8).to(dtype)
    with torch.no_grad():  # larger than N(0, 0.02) so dM/dl and d2M/dl dphi are well away from 0
        for p in meta.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return meta


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("backbone", sorted(BACKBONES))
@pytest.mark.parametrize("products", sorted(TOL[torch.float64]))
@pytest.mark.parametrize("direct_grad", [True, False])
def test_identity_matches_double_backward(dtype, backbone, products, direct_grad):
    make_model, make_batch = BACKBONES[backbone]
    torch.manual_seed(0)
    model, meta = make_model(dtype), _meta(dtype)
    primary, aux = make_batch(1, dtype), make_batch(2, dtype)
    learner = _learner(model, meta, products, gamma=0.3, direct_grad=direct_grad)
    expected = reference_hypergradient(model, meta, mlp_source, primary, aux, 0.3, direct_grad, 7)
    torch.manual_seed(7)
    actual = learner.hypergradient(primary, aux)
    assert relative_error(actual, expected) < TOL[dtype][products]


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_same_batch_for_primary_and_aux(backbone):
    make_model, make_batch = BACKBONES[backbone]
    torch.manual_seed(0)
    model, meta = make_model(torch.float64), _meta(torch.float64)
    batch = make_batch(1, torch.float64)
    learner = _learner(model, meta, gamma=0.3)
    expected = reference_hypergradient(model, meta, mlp_source, batch, batch, 0.3, True, 3)
    torch.manual_seed(3)
    assert relative_error(learner.hypergradient(batch, batch), expected) < 1e-6


@pytest.mark.parametrize("solver", [Neumann(steps=2, alpha=0.5), ConjugateGradient(maxiter=3)])
def test_hvp_solvers_agree_across_products_on_fused_attention(solver):
    torch.manual_seed(0)
    model, meta = TinyTransformer(dtype=torch.float64), _meta(torch.float64)
    primary, aux = transformer_batch(1, torch.float64), transformer_batch(2, torch.float64)
    results = {}
    for products in ("autograd", "forward", "finite_difference"):
        learner = _learner(model, meta, products, gamma=0.3, solver=solver)
        results[products] = learner.hypergradient(primary, aux)
    assert relative_error(results["forward"], results["autograd"]) < 1e-8
    assert relative_error(results["finite_difference"], results["autograd"]) < 1e-5


def test_double_backward_through_default_kernel_is_unavailable():
    """Guards the premise above: if this starts passing, the fused-kernel tests prove less."""
    model = TinyTransformer(dtype=torch.float64)
    batch = transformer_batch(1, torch.float64)
    grads = torch.autograd.grad(
        model(batch["x"]).sum(), list(model.parameters()), create_graph=True
    )
    with pytest.raises(RuntimeError):
        torch.autograd.grad(sum(g.sum() for g in grads), list(model.parameters()))


def _unrolled_reference(model, meta, primary, aux, steps, lr, gamma, optimizer):
    """d L_pri(w_K(phi), phi) / d phi with w_K from ``steps`` inner updates, via torch.func."""
    w0 = {n: p.detach() for n, p in model.named_parameters()}
    phi0 = {n: p.detach() for n, p in meta.named_parameters()}

    def losses(w, batch):
        values = mlp_source(_Bound(model, w), batch)
        return torch.stack(list(values.values()))

    def l_pri(phi):
        def inner(w):
            return torch.func.functional_call(meta, phi, (losses(w, aux),))

        w = dict(w0)
        m = {n: torch.zeros_like(t) for n, t in w.items()}
        s = {n: torch.zeros_like(t) for n, t in w.items()}
        for k in range(1, steps + 1):
            g = torch.func.grad(inner)(w)
            if optimizer == "sgd":
                w = {n: w[n] - lr * g[n] for n in w}
                continue
            m = {n: 0.9 * m[n] + 0.1 * g[n] for n in w}
            s = {n: 0.999 * s[n] + 0.001 * g[n] ** 2 for n in w}
            w = {
                n: w[n] - lr * (m[n] / (1 - 0.9**k)) / ((s[n] / (1 - 0.999**k)).sqrt() + 1e-8)
                for n in w
            }
        lp, la = losses(w, primary), losses(w, aux)
        meta_aux = torch.func.functional_call(meta, phi, (la,))
        return lp[0] + gamma * (meta_aux - la.sum()).abs()

    with sdpa_kernel(SDPBackend.MATH):
        grads = torch.func.grad(l_pri)(phi0)
    return [grads[n] for n, _ in meta.named_parameters()]


class _Bound:
    """Calls ``model`` with parameters ``w`` (``mlp_source`` only calls ``model(x)``)."""

    def __init__(self, model, w):
        self.model, self.w = model, w

    def __call__(self, *args):
        return torch.func.functional_call(self.model, self.w, args)


# Adam is checked on the MLP only: in the transformer the key bias has a mathematically zero
# gradient whose float noise Adam normalises into full-size steps (implementation-dependent).
@pytest.mark.parametrize(
    ("backbone", "optimizer"), [("mlp", "sgd"), ("sdpa", "sgd"), ("mlp", "adam")]
)
def test_unrolled_matches_torch_func(backbone, optimizer):
    make_model, make_batch = BACKBONES[backbone]
    torch.manual_seed(0)
    model = MLP(dtype=torch.float64) if backbone == "mlp" else make_model(torch.float64)
    meta = _meta(torch.float64)
    primary, aux = make_batch(1, torch.float64), make_batch(2, torch.float64)
    lr = 0.1 if optimizer == "sgd" else 0.01
    learner = _learner(model, meta, gamma=0.3, solver=Unrolled(3, lr, optimizer))
    expected = _unrolled_reference(model, meta, primary, aux, 3, lr, 0.3, optimizer)
    # Adam's step m / (sqrt(v) + eps) is ill-conditioned where gradients are tiny, so
    # float64 rounding differences between the two orders of operations grow to ~1e-7.
    tol = 1e-9 if optimizer == "sgd" else 1e-5
    assert relative_error(learner.hypergradient(primary, aux), expected) < tol
