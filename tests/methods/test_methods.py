"""Oracle tests of the techniques: each one against a hand-computed case, a closed form or an
independent re-computation (NumPy or plain torch ops) that does not call the code under test."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from heldout.engine import Trainer
from heldout.measures import Accuracy, Loss
from heldout.methods import (
    EMA,
    SAM,
    ExponentialMovingAverage,
    GhostBatchNorm,
    GhostBN,
    PerpendicularGradient,
    WeightDecay,
    label_smoothing_cross_entropy,
    log_stablemax,
    perpendicular_gradient,
    stablemax,
    stablemax_cross_entropy,
)
from heldout.methods.normalization import ghost_batch_norm
from heldout.registry import TECHNIQUES

# --- StableMax ----------------------------------------------------------------------------

# s(x) = x + 1 (x >= 0), 1 / (1 - x) (x < 0), written out by hand:
#   z = [2, -1, 0]   -> s = [3, 1/2, 1],   Σ = 9/2  -> p = [2/3, 1/9, 2/9]
#   z = [0.5, -3, 1] -> s = [3/2, 1/4, 2], Σ = 15/4 -> p = [2/5, 1/15, 8/15]
Z = [[2.0, -1.0, 0.0], [0.5, -3.0, 1.0]]
P = [[2 / 3, 1 / 9, 2 / 9], [2 / 5, 1 / 15, 8 / 15]]


def test_stablemax_hand_values():
    z = torch.tensor(Z, dtype=torch.float64)
    torch.testing.assert_close(stablemax(z), torch.tensor(P, dtype=torch.float64),
                               rtol=1e-14, atol=0)
    torch.testing.assert_close(log_stablemax(z), torch.tensor(P, dtype=torch.float64).log(),
                               rtol=1e-14, atol=1e-15)
    # dim=0: the same s values normalized down the columns
    s = torch.tensor([[3.0, 0.5, 1.0], [1.5, 0.25, 2.0]], dtype=torch.float64)
    torch.testing.assert_close(stablemax(z, dim=0), s / s.sum(0), rtol=1e-14, atol=0)


def test_stablemax_cross_entropy_hand_value_and_dtype():
    z = torch.tensor(Z, dtype=torch.float32)
    loss = stablemax_cross_entropy(z, torch.tensor([0, 2]))
    assert loss.dtype == torch.float32  # computed in float64, returned in the input's dtype
    expected = -(math.log(2 / 3) + math.log(8 / 15)) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-7)


def test_stablemax_cross_entropy_hand_gradient():
    # L = -log s(z_0) + log Σ s; ∂L/∂z_i = -[i=0] s'(z_0)/s(z_0) + s'(z_i)/Σ,
    # s'(x) = 1 (x >= 0), 1/(1-x)^2 (x < 0). For z = [2, -1, 0]: [-1/3 + 2/9, (1/4)/(9/2), 2/9]
    z = torch.tensor([Z[0]], dtype=torch.float64, requires_grad=True)
    stablemax_cross_entropy(z, torch.tensor([0])).backward()
    torch.testing.assert_close(z.grad, torch.tensor([[-1 / 9, 1 / 18, 2 / 9]],
                                                    dtype=torch.float64), rtol=1e-13, atol=0)


def test_stablemax_gradient_survives_a_huge_margin():
    z = torch.tensor([[1000.0, 0.0, 0.0]], requires_grad=True)
    target = torch.tensor([0])
    softmax_ce = F.cross_entropy(z, target)  # float32 softmax: Softmax Collapse
    softmax_ce.backward()
    assert float(softmax_ce.detach()) == 0.0
    assert torch.count_nonzero(z.grad) == 0

    z.grad = None
    loss = stablemax_cross_entropy(z, target)
    loss.backward()
    # s = [1001, 1, 1], Σ = 1003: L = log(1003/1001), ∇ = [-1/1001 + 1/1003, 1/1003, 1/1003]
    exact = math.log(1003 / 1001)
    assert loss.dtype == torch.float32
    assert float(loss.detach()) == float(torch.tensor(exact).float())
    assert float(stablemax_cross_entropy(z.detach().double(), target)) == pytest.approx(
        exact, rel=1e-12)  # the float64 computation inside, seen with float64 logits
    assert torch.isfinite(z.grad).all()
    expected = torch.tensor([[-1 / 1001 + 1 / 1003, 1 / 1003, 1 / 1003]])
    torch.testing.assert_close(z.grad, expected, rtol=1e-5, atol=0)


# --- label smoothing ----------------------------------------------------------------------


def test_label_smoothing_hand_formula():
    # target distribution (1 - ε)·onehot + ε/K; loss = -Σ q_i log p_i
    logits, eps = np.array([1.0, 2.0, 3.0]), 0.1
    log_p = logits - np.log(np.exp(logits).sum())
    q = np.array([1 - eps + eps / 3, eps / 3, eps / 3])
    expected = -(q * log_p).sum()
    got = label_smoothing_cross_entropy(torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64),
                                        torch.tensor([0]), eps)
    assert float(got) == pytest.approx(expected, rel=1e-13)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_label_smoothing_matches_torch(eps):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 7, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 7, (16,), generator=gen)
    torch.testing.assert_close(label_smoothing_cross_entropy(logits, y, eps),
                               F.cross_entropy(logits, y, label_smoothing=eps),
                               rtol=1e-13, atol=0)


def test_label_smoothing_per_example_with_one_epsilon_per_row():
    """reduction="none" with a (K, 1) column of ε: row k equals torch's per-example label
    smoothing with ε_k; an unknown reduction names the valid ones."""
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 5, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (3, 5), generator=gen)
    eps = torch.tensor([[0.0], [0.1], [0.3]], dtype=torch.float64)
    got = label_smoothing_cross_entropy(logits, y, eps, reduction="none")
    for k in range(3):
        expected = F.cross_entropy(logits[k], y[k], label_smoothing=float(eps[k]),
                                   reduction="none")
        torch.testing.assert_close(got[k], expected, rtol=1e-13, atol=0)
    with pytest.raises(ValueError, match="valid reductions: mean, none"):
        label_smoothing_cross_entropy(logits[0], y[0], 0.1, reduction="sum")


# --- ⊥Grad --------------------------------------------------------------------------------


def _perp_oracle(w: np.ndarray, g: np.ndarray) -> np.ndarray:
    """g minus its projection on w, rescaled to ‖g‖ (flattened, float64)."""
    wf, gf = w.reshape(-1).astype(np.float64), g.reshape(-1).astype(np.float64)
    orth = gf - (wf @ gf) / (wf @ wf) * wf
    return (orth * np.linalg.norm(gf) / np.linalg.norm(orth)).reshape(g.shape)


def test_perpendicular_gradient_hand_cases():
    # w = [3, 4], g = [1, 0]: g⊥ = [1, 0] - 3/25·[3, 4] = [16, -12]/25, ‖g⊥‖ = 4/5 -> [0.8, -0.6]
    got = perpendicular_gradient(torch.tensor([3.0, 4.0], dtype=torch.float64),
                                 torch.tensor([1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(got, torch.tensor([0.8, -0.6], dtype=torch.float64),
                               rtol=1e-14, atol=1e-15)
    # a matrix, flattened: w = e_1, g = [1, 2, 3, 0] -> [0, 2, 3, 0]·√(14/13)
    w = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    g = torch.tensor([[1.0, 2.0], [3.0, 0.0]], dtype=torch.float64)
    expected = torch.tensor([[0.0, 2.0], [3.0, 0.0]], dtype=torch.float64) * math.sqrt(14 / 13)
    got = perpendicular_gradient(w, g)
    assert got.shape == (2, 2)
    torch.testing.assert_close(got, expected, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("shape", [(7,), (5, 3), (2, 3, 4), (4, 1, 3, 3)])
def test_perpendicular_gradient_is_orthogonal_with_the_same_norm(shape):
    gen = torch.Generator().manual_seed(len(shape))
    w = torch.randn(shape, generator=gen, dtype=torch.float64)
    g = torch.randn(shape, generator=gen, dtype=torch.float64) + 0.5 * w
    got = perpendicular_gradient(w, g)
    assert got.shape == shape
    assert abs(float((got * w).sum())) < 1e-12 * float(got.norm() * w.norm())
    assert float(got.norm()) == pytest.approx(float(g.norm()), rel=1e-12)
    np.testing.assert_allclose(got.numpy(), _perp_oracle(w.numpy(), g.numpy()), rtol=1e-10)
    # and in float32
    got32 = perpendicular_gradient(w.float(), g.float())
    assert abs(float((got32.double() * w).sum())) < 1e-5 * float(got32.norm() * w.norm())
    assert float(got32.norm()) == pytest.approx(float(g.norm()), rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1,), (), (6,), (4, 5), (3, 8, 8)])
@pytest.mark.parametrize("scale", [2.0, 3.0, -0.7])
def test_perpendicular_gradient_of_a_parallel_gradient_is_zero(dtype, shape, scale):
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    g = scale * w  # parallel (a one-element gradient always is)
    got = perpendicular_gradient(w, g)
    assert not torch.isnan(got).any()
    assert float(got.norm()) <= 1e-6 * float(g.norm())


def test_perpendicular_gradient_degenerate_inputs_stay_finite():
    g = torch.tensor([1.0, -2.0, 0.5])
    torch.testing.assert_close(perpendicular_gradient(torch.zeros(3), g), g)  # w = 0: no-op
    assert torch.equal(perpendicular_gradient(g, torch.zeros(3)), torch.zeros(3))  # g = 0


def _linear_problem(seed: int = 0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    model = nn.Linear(4, 3).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=dtype))
    x = torch.randn(10, 4, generator=gen, dtype=dtype)
    y = torch.randint(0, 3, (10,), generator=gen)
    return model, x, y


def test_perpendicular_gradient_wrapper_sgd_update_is_the_projected_gradient():
    lr = 0.1
    results = []
    for use_closure in (False, True):
        model, x, y = _linear_problem()
        opt = PerpendicularGradient(torch.optim.SGD(model.parameters(), lr=lr))
        before = [p.detach().clone() for p in model.parameters()]
        # the gradient, computed on a copy so the wrapper's own call is untouched
        twin = copy.deepcopy(model)
        F.cross_entropy(twin(x), y).backward()
        grads = [p.grad.numpy().copy() for p in twin.parameters()]

        def closure(model=model, opt=opt, x=x, y=y):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        if use_closure:
            loss = opt.step(closure)
            assert float(loss.detach()) == pytest.approx(
                float(F.cross_entropy(twin(x), y).detach()), rel=1e-12)
        else:
            closure()
            assert opt.step() is None
        for w0, g, p in zip(before, grads, model.parameters(), strict=True):
            step = (p.detach() - w0).numpy()
            np.testing.assert_allclose(step, -lr * _perp_oracle(w0.numpy(), g),
                                       rtol=1e-9, atol=1e-13)
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_perpendicular_gradient_wrapper_state_dict_round_trip():
    model, x, y = _linear_problem(dtype=torch.float32)

    def make(m, **kw):
        return PerpendicularGradient(torch.optim.AdamW(m.parameters(), **kw))

    def one_step(m, opt, i):
        opt.zero_grad()
        F.cross_entropy(m(x[i:]), y[i:]).backward()
        opt.step()

    opt = make(model, lr=1e-2, betas=(0.9, 0.98), weight_decay=0.1)
    for i in range(3):
        one_step(model, opt, i)
    saved = copy.deepcopy(opt.state_dict())
    model_b, model_c = copy.deepcopy(model), copy.deepcopy(model)
    opt_b = make(model_b, lr=0.5)  # different hyper-parameters: restored by the load
    opt_b.load_state_dict(saved)
    opt_c = make(model_c, lr=0.5)  # never loaded: must differ (the test can fail)
    assert opt_b.base.param_groups[0]["betas"] == (0.9, 0.98)
    assert opt_b.param_groups is opt_b.base.param_groups
    for m, o in ((model, opt), (model_b, opt_b), (model_c, opt_c)):
        one_step(m, o, 3)
    for a, b, c in zip(model.parameters(), model_b.parameters(), model_c.parameters(),
                       strict=True):
        assert torch.equal(a, b)
        assert not torch.equal(a, c)
    with pytest.raises(ValueError):
        SAM(torch.optim.SGD(model_c.parameters(), lr=0.1)).load_state_dict(saved)


# --- SAM ----------------------------------------------------------------------------------

A = np.array([[3.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.5, 1.0]])  # SPD
B = np.array([1.0, -1.0, 0.5])
W0 = np.array([0.5, -0.3, 0.8])


def _quadratic(split: bool = True):
    """L(w) = ½ wᵀAw − bᵀw over w split into two parameters (so the norm is global)."""
    w0 = torch.tensor(W0)
    params = [nn.Parameter(w0[:2].clone()), nn.Parameter(w0[2:].clone())] if split else [
        nn.Parameter(w0.clone())]
    a, b = torch.tensor(A), torch.tensor(B)

    def loss_fn():
        w = torch.cat(params)
        return 0.5 * w @ a @ w - b @ w

    return params, loss_fn


def _closure(opt, loss_fn):
    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    return closure


def _grad(w):
    return A @ w - B


def test_sam_one_step_on_a_quadratic_equals_the_hand_computation():
    rho, lr = 0.1, 0.2
    params, loss_fn = _quadratic()
    opt = SAM(torch.optim.SGD(params, lr=lr), rho=rho)
    loss = opt.step(_closure(opt, loss_fn))
    g = _grad(W0)
    e = rho * g / np.linalg.norm(g)
    expected = W0 - lr * _grad(W0 + e)
    assert float(loss.detach()) == pytest.approx(0.5 * W0 @ A @ W0 - B @ W0, rel=1e-14)
    np.testing.assert_allclose(torch.cat(params).detach().numpy(), expected, rtol=0, atol=1e-10)
    assert np.abs(expected - (W0 - lr * g)).max() > 1e-3  # differs from plain SGD


def test_adaptive_sam_one_step_on_a_quadratic_equals_the_hand_computation():
    rho, lr, eta = 0.5, 0.2, 0.01
    params, loss_fn = _quadratic()
    opt = SAM(torch.optim.SGD(params, lr=lr), rho=rho, adaptive=True, eta=eta)
    opt.step(_closure(opt, loss_fn))
    g = _grad(W0)
    t = np.abs(W0) + eta
    e = rho * t**2 * g / np.linalg.norm(t * g)
    expected = W0 - lr * _grad(W0 + e)
    np.testing.assert_allclose(torch.cat(params).detach().numpy(), expected, rtol=0, atol=1e-10)
    plain_e = rho * g / np.linalg.norm(g)
    assert np.abs(expected - (W0 - lr * _grad(W0 + plain_e))).max() > 1e-3


def test_sam_first_and_second_step_equal_step_with_closure():
    results = []
    for manual in (False, True):
        params, loss_fn = _quadratic()
        opt = SAM(torch.optim.SGD(params, lr=0.2, momentum=0.9), rho=0.1)
        for _ in range(3):
            if manual:
                loss_fn().backward()
                opt.first_step(zero_grad=True)
                loss_fn().backward()
                opt.second_step(zero_grad=True)
            else:
                opt.step(_closure(opt, loss_fn))
        results.append(torch.cat(params).detach())
    assert torch.equal(results[0], results[1])


def test_sam_step_without_closure_raises():
    params, _ = _quadratic()
    with pytest.raises(ValueError, match="closure"):
        SAM(torch.optim.SGD(params, lr=0.1)).step()


def _bn_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


@pytest.mark.parametrize("pass_model", [True, False])
def test_sam_batchnorm_statistics_move_once(pass_model):
    model = _bn_model()
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 4, generator=gen), torch.randint(0, 3, (16,), generator=gen)
    oracle = copy.deepcopy(model).train()
    with torch.no_grad():
        oracle(x)  # exactly one forward pass at the original weights
    opt = SAM(torch.optim.SGD(model.parameters(), lr=0.5), rho=0.5,
              model=model if pass_model else None)
    opt.step(_closure(opt, lambda: F.cross_entropy(model(x), y)))
    bn, bn_oracle = model[1], oracle[1]
    same = [torch.equal(getattr(bn, k), getattr(bn_oracle, k))
            for k in ("running_mean", "running_var", "num_batches_tracked")]
    if pass_model:
        assert all(same)
    else:
        assert not any(same)
    assert not torch.equal(model[0].weight, oracle[0].weight)  # it did step


def test_sam_around_perpendicular_gradient():
    rho, lr = 0.1, 0.2
    params, loss_fn = _quadratic(split=False)
    opt = SAM(PerpendicularGradient(torch.optim.SGD(params, lr=lr)), rho=rho)
    opt.step(_closure(opt, loss_fn))
    g = _grad(W0)
    g_adv = _grad(W0 + rho * g / np.linalg.norm(g))  # SAM's gradient, projected at w
    expected = W0 - lr * _perp_oracle(W0, g_adv)
    np.testing.assert_allclose(params[0].detach().numpy(), expected, rtol=0, atol=1e-10)


def test_sam_state_dict_round_trip():
    model, x, y = _linear_problem(dtype=torch.float32)

    def make(m, momentum):
        return SAM(torch.optim.SGD(m.parameters(), lr=0.1, momentum=momentum), rho=0.2)

    def one_step(m, opt, i):
        opt.step(_closure(opt, lambda: F.cross_entropy(m(x[i:]), y[i:])))

    opt = make(model, 0.9)
    for i in range(2):
        one_step(model, opt, i)
    saved = copy.deepcopy(opt.state_dict())
    model_b, model_c = copy.deepcopy(model), copy.deepcopy(model)
    opt_b, opt_c = make(model_b, 0.5), make(model_c, 0.9)
    opt_b.load_state_dict(saved)
    assert opt_b.param_groups[0]["momentum"] == 0.9
    for m, o in ((model, opt), (model_b, opt_b), (model_c, opt_c)):
        one_step(m, o, 2)
    for a, b, c in zip(model.parameters(), model_b.parameters(), model_c.parameters(),
                       strict=True):
        assert torch.equal(a, b)
        assert not torch.equal(a, c)  # without the momentum buffers it differs


# --- Ghost Batch Normalization ------------------------------------------------------------


def _ghost_oracle(x, gamma, beta, eps, ghost, momentum, running_mean, running_var):
    """Per-chunk BatchNorm by hand, with the sequential running-statistics updates."""
    dims = tuple(d for d in range(x.dim()) if d != 1)
    shape = [1, -1] + [1] * (x.dim() - 2)
    outs, rm, rv = [], running_mean.clone(), running_var.clone()
    for start in range(0, x.shape[0], ghost):
        c = x[start:start + ghost]
        n = c.numel() // c.shape[1]
        mu = c.mean(dim=dims)
        var = ((c - mu.view(shape)) ** 2).sum(dim=dims) / n
        outs.append((c - mu.view(shape)) / torch.sqrt(var.view(shape) + eps) * gamma.view(shape)
                    + beta.view(shape))
        m = momentum if momentum is not None else 1.0 / (start // ghost + 1)
        rm = (1 - m) * rm + m * mu
        rv = (1 - m) * rv + m * var * n / (n - 1)
    return torch.cat(outs), rm, rv


@pytest.mark.parametrize("shape,ghost", [((10, 3), 4), ((7, 2, 5), 3), ((11, 4), 3)])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_ghost_batch_norm_equals_per_chunk_batch_norm(shape, ghost, momentum):
    gen = torch.Generator().manual_seed(0)
    channels = shape[1]
    gbn = GhostBatchNorm(channels, ghost_batch_size=ghost, momentum=momentum).double()
    with torch.no_grad():
        gbn.weight.copy_(torch.rand(channels, generator=gen, dtype=torch.float64) + 0.5)
        gbn.bias.copy_(torch.randn(channels, generator=gen, dtype=torch.float64))
        gbn.running_mean.copy_(torch.randn(channels, generator=gen, dtype=torch.float64))
        gbn.running_var.copy_(torch.rand(channels, generator=gen, dtype=torch.float64) + 0.5)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 1
    expected, rm, rv = _ghost_oracle(x, gbn.weight.detach(), gbn.bias.detach(), gbn.eps, ghost,
                                     momentum, gbn.running_mean, gbn.running_var)
    out = gbn.train()(x)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gbn.running_mean, rm, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(gbn.running_var, rv, rtol=1e-12, atol=1e-14)
    assert int(gbn.num_batches_tracked) == -(-shape[0] // ghost)
    # the whole batch normalized at once is different (the test can fail)
    assert not torch.allclose(out, F.batch_norm(x, None, None, gbn.weight, gbn.bias, True))

    # evaluation: plain BatchNorm with the running statistics, by hand
    view = [1, -1] + [1] * (x.dim() - 2)
    by_hand = ((x - gbn.running_mean.view(view)) / torch.sqrt(gbn.running_var.view(view)
               + gbn.eps) * gbn.weight.view(view) + gbn.bias.view(view))
    torch.testing.assert_close(gbn.eval()(x).detach(), by_hand.detach(), rtol=1e-12,
                               atol=1e-13)


def test_ghost_batch_norm_transform_keeps_parameters_and_counts_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(),
                          nn.Sequential(nn.Linear(6, 6), nn.BatchNorm1d(6)), nn.Linear(6, 3))
    params = list(model.parameters())
    buffers = list(model.buffers())
    opt = torch.optim.SGD(model.parameters(), lr=0.5)  # built before the transform
    assert ghost_batch_norm(model, ghost_batch_size=4) == 2
    assert isinstance(model[1], GhostBatchNorm) and isinstance(model[3][1], GhostBatchNorm)
    assert model[1].ghost_batch_size == 4
    assert all(a is b for a, b in zip(params, model.parameters(), strict=True))
    assert all(a is b for a, b in zip(buffers, model.buffers(), strict=True))
    gamma = model[3][1].weight.detach().clone()
    x, y = torch.randn(12, 4), torch.randint(0, 3, (12,))
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    assert not torch.equal(model[3][1].weight, gamma)  # the old optimizer moves the BN γ
    assert int(model[1].num_batches_tracked) == 3  # 12 examples in ghost batches of 4


def test_ghost_bn_technique_refuses_a_model_without_batch_norm():
    with pytest.raises(ValueError, match="no BatchNorm"):
        GhostBN(ghost_batch_size=8).transform_model(nn.Sequential(nn.Linear(3, 3), nn.ReLU()))
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    assert GhostBN(ghost_batch_size=8).transform_model(model) is model
    assert isinstance(model[1], GhostBatchNorm)


# --- EMA ----------------------------------------------------------------------------------


def _set_params(model: nn.Module, values: list[np.ndarray]) -> None:
    with torch.no_grad():
        for p, v in zip(model.parameters(), values, strict=True):
            p.copy_(torch.from_numpy(v))


def test_ema_equals_a_hand_loop():
    decay = 0.8
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)).double()
    rng = np.random.default_rng(0)
    shapes = [tuple(p.shape) for p in model.parameters()]
    start = [rng.normal(size=s) for s in shapes]
    _set_params(model, start)
    ema = ExponentialMovingAverage(model, decay=decay)
    average = [v.copy() for v in start]
    for k in range(5):
        values = [rng.normal(size=s) for s in shapes]
        _set_params(model, values)
        with torch.no_grad():
            model[1].running_mean.fill_(float(k + 1))
            model[1].running_var.fill_(float(k + 2))
        ema.update(model)
        average = [decay * a + (1 - decay) * v for a, v in zip(average, values, strict=True)]
    assert ema.updates == 5
    for a, p in zip(average, ema.module.parameters(), strict=True):
        np.testing.assert_allclose(p.detach().numpy(), a, rtol=1e-12, atol=1e-14)
    # buffers are copied, not averaged
    assert torch.equal(ema.module[1].running_mean, torch.full((2,), 5.0, dtype=torch.float64))
    assert torch.equal(ema.module[1].running_var, torch.full((2,), 6.0, dtype=torch.float64))
    assert not any(p.requires_grad for p in ema.module.parameters())

    # state_dict round trip into an average of another model
    other = copy.deepcopy(model)
    _set_params(other, [rng.normal(size=s) for s in shapes])
    restored = ExponentialMovingAverage(other, decay=decay)
    restored.load_state_dict(copy.deepcopy(ema.state_dict()))
    assert restored.updates == 5
    final = [rng.normal(size=s) for s in shapes]
    _set_params(model, final)
    ema.update(model)
    restored.update(model)
    for a, b in zip(ema.module.state_dict().values(), restored.module.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)


def test_ema_technique_makes_the_trainer_evaluate_the_average():
    decay, lr, steps = 0.6, 0.5, 4
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 5, generator=gen), torch.randint(0, 3, (32,), generator=gen)
    xt, yt = torch.randn(40, 5, generator=gen), torch.randint(0, 3, (40,), generator=gen)
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    replica = copy.deepcopy(model)

    # the oracle: the same full-batch SGD by hand, with a hand EMA in NumPy
    average = [p.detach().double().numpy().copy() for p in replica.parameters()]
    opt = torch.optim.SGD(replica.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(replica(x), y).backward()
        opt.step()
        average = [decay * a + (1 - decay) * p.detach().double().numpy()
                   for a, p in zip(average, replica.parameters(), strict=True)]

    def loss_and_accuracy(weight, bias):
        logits = xt.double().numpy() @ weight.T + bias
        log_p = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1,
                                keepdims=True)) - logits.max(1, keepdims=True)
        return (-log_p[np.arange(len(yt)), yt.numpy()].mean(),
                (logits.argmax(1) == yt.numpy()).mean())

    ema_loss, ema_acc = loss_and_accuracy(*average)
    raw_loss, _ = loss_and_accuracy(*(p.detach().double().numpy()
                                      for p in replica.parameters()))
    assert abs(ema_loss - raw_loss) > 1e-3  # the average is not the raw model

    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=lr), (x, y),
                      max_steps=steps, eval_every=steps, eval_data={"test": (xt, yt)},
                      techniques=[EMA(decay=decay)], measures=[Accuracy(), Loss()])
    history = trainer.fit()
    step, metrics = history[-1]
    assert step == steps
    assert metrics["test/loss"] == pytest.approx(ema_loss, rel=1e-5)
    assert metrics["test/accuracy"] == pytest.approx(ema_acc, abs=1e-12)
    # the trained (raw) weights are the replica's
    for a, b in zip(model.parameters(), replica.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


# --- weight decay -------------------------------------------------------------------------


def test_weight_decay_sets_every_group_and_refuses_a_conflict():
    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.01}], lr=0.1)
    assert WeightDecay(0.3).wrap_optimizer(opt, nn.Identity()) is opt
    assert [g["weight_decay"] for g in opt.param_groups] == [0.3, 0.3]
    # the same value again is fine, a different non-zero value is refused
    WeightDecay(0.3).wrap_optimizer(opt, nn.Identity())
    with pytest.raises(ValueError, match="already has weight_decay"):
        WeightDecay(1.0).wrap_optimizer(opt, nn.Identity())
    with pytest.raises(ValueError, match="already has weight_decay"):
        WeightDecay(1.0).wrap_optimizer(torch.optim.AdamW([a]), nn.Identity())  # 0.01


def test_weight_decay_with_adamw_is_decoupled():
    lr, wd = 0.1, 0.5
    w0 = torch.tensor([1.5, -2.0, 0.25])
    p = nn.Parameter(w0.clone())
    opt = WeightDecay(wd).wrap_optimizer(torch.optim.AdamW([p], lr=lr, weight_decay=0.0),
                                         nn.Identity())
    p.grad = torch.zeros_like(p)  # zero gradient: the Adam term is exactly 0
    opt.step()
    torch.testing.assert_close(p.detach(), w0 * (1 - lr * wd), rtol=1e-7, atol=0)


# --- registry metadata --------------------------------------------------------------------


def test_every_technique_has_a_summary_and_a_source():
    entries = TECHNIQUES.entries()
    assert {"stablemax", "label_smoothing", "perp_grad", "sam", "ghost_bn", "ema",
            "weight_decay"} <= {e.name for e in entries}
    for entry in entries:
        assert entry.summary.strip() and "\n" not in entry.summary, entry.name
        assert entry.papers or entry.references, entry.name
        assert entry.citations(), entry.name


def test_ghost_bn_merges_a_last_chunk_of_one_example():
    from heldout.methods.normalization import GhostBatchNorm

    torch.manual_seed(0)
    ghost = GhostBatchNorm(3, ghost_batch_size=4)
    x = torch.randn(9, 3)
    out = ghost(x)
    expected = []
    for chunk in (x[:4], x[4:]):  # 4 + (4 + 1): the single example joins the second chunk
        mean, var = chunk.mean(0), chunk.var(0, unbiased=False)
        expected.append((chunk - mean) / torch.sqrt(var + ghost.eps))
    torch.testing.assert_close(out, torch.cat(expected))


def test_ema_with_nlm_alignment_in_the_trainer():
    from heldout.engine import Trainer
    from heldout.measures import Accuracy, GradientWeightAlignment
    from heldout.methods import EMA

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), (x, y), max_steps=3,
                      techniques=[EMA(decay=0.5)], eval_data={"train": (x, y)},
                      measures=[Accuracy(), GradientWeightAlignment()])
    trainer.fit()
    value = trainer.history[-1][1]["train/nlm_alignment"]
    assert -1.0 <= value <= 1.0
    ema_model = trainer.techniques[0].eval_model(trainer.state)
    assert not any(p.requires_grad for p in ema_model.parameters())
