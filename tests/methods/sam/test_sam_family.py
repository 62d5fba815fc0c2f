"""ASAM, TRAM and UDIM against hand computations and independent autograd computations; their
state_dict round trips, their registered techniques in tiny heldout runs (exact resume), and
the Trainer's refusal of two step strategies."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from heldout.config import parse_overrides
from heldout.core.technique import CombinationError
from heldout.engine.trainer import Trainer
from heldout.methods.sam import (
    ASAM,
    SAM,
    TRAM,
    UDIM,
    AdaptiveSharpnessAware,
    TrustRegionAware,
    UnknownDomainInconsistency,
    inconsistency_penalty,
    logit_divergence,
    per_example_linear_gradients,
    udim_input_perturbation,
)
from heldout.registry import TECHNIQUES
from heldout.run.execute import execute
from heldout.store import Store
from tests.conftest import assert_resume_is_exact, tiny_config


def _closure(opt, model, x, y, calls=None):
    def closure():
        opt.zero_grad()
        if calls is not None:  # the weights each pass sees
            calls.append([p.detach().clone() for p in model.parameters()])
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return closure


def _relu_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 5, bias=False), nn.ReLU(),
                         nn.Linear(5, 2, bias=False)).double()


# ----------------------------------------------------------------------------- ASAM


def _perturbation(wrapper_cls, model, x, y, **kwargs):
    """e of the first pass: the weights the second closure call sees minus the originals."""
    calls = []
    opt = wrapper_cls(torch.optim.SGD(model.parameters(), lr=0.0), model=model, **kwargs)
    opt.step(_closure(opt, model, x, y, calls))
    return [after - before for before, after in zip(calls[0], calls[1], strict=True)]


def test_asam_perturbation_is_invariant_to_layer_rescaling():
    """W1 × c, W2 ÷ c leaves a ReLU net's function unchanged; ASAM's e/|w| must not change
    (so L(w + e) is the same), SAM's does."""
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randint(0, 2, (16,))
    c = 4.0
    net = _relu_net()
    scaled = copy.deepcopy(net)
    with torch.no_grad():
        scaled[0].weight.mul_(c)
        scaled[2].weight.div_(c)
    e = _perturbation(ASAM, net, x, y, rho=0.3, eta=0.0)
    e_scaled = _perturbation(ASAM, scaled, x, y, rho=0.3, eta=0.0)
    for w, w_s, d, d_s in zip(net.parameters(), scaled.parameters(), e, e_scaled, strict=True):
        torch.testing.assert_close(d_s / w_s, d / w)

    def perturbed_loss(model, delta):
        probe = copy.deepcopy(model)
        with torch.no_grad():
            for p, v in zip(probe.parameters(), delta, strict=True):
                p.add_(v)
        return F.cross_entropy(probe(x), y)

    torch.testing.assert_close(perturbed_loss(scaled, e_scaled), perturbed_loss(net, e))
    sam = [_perturbation(SAM, m, x, y, rho=0.3) for m in (net, scaled)]
    ratio = [(d / w, d_s / w_s) for w, w_s, d, d_s in
             zip(net.parameters(), scaled.parameters(), *sam, strict=True)]
    assert not all(torch.allclose(a, b) for a, b in ratio)  # plain SAM is not invariant


def test_asam_step_matches_hand_computation_weight_scaled_bias_not():
    """L = ½ (w x + b − y)², one weight and one bias: e_w = ρ T_w² g_w / N, e_b = ρ g_b / N with
    T_w = |w| + η, N = √((T_w g_w)² + g_b²); then SGD with the gradient at w + e."""
    model = nn.Linear(1, 1).double()
    w, b, x, y, rho, eta, lr = 0.5, -0.25, 2.0, 0.0, 0.2, 0.1, 0.05
    with torch.no_grad():
        model.weight.fill_(w)
        model.bias.fill_(b)
    opt = ASAM(torch.optim.SGD(model.parameters(), lr=lr), rho=rho, eta=eta, model=model)
    seen = []

    def closure():
        opt.zero_grad()
        seen.append((model.weight.item(), model.bias.item()))
        loss = 0.5 * (model(torch.tensor([[x]], dtype=torch.float64)) - y).pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    residual = w * x + b - y
    g_w, g_b = residual * x, residual
    t_w = abs(w) + eta
    norm = math.hypot(t_w * g_w, g_b)
    e_w, e_b = rho * t_w**2 * g_w / norm, rho * g_b / norm
    assert seen[1] == pytest.approx((w + e_w, b + e_b), rel=1e-12)
    residual2 = (w + e_w) * x + (b + e_b) - y
    assert model.weight.item() == pytest.approx(w - lr * residual2 * x, rel=1e-12)
    assert model.bias.item() == pytest.approx(b - lr * residual2, rel=1e-12)


def test_asam_without_model_scales_every_parameter():
    model = nn.Linear(1, 1).double()
    with torch.no_grad():
        model.weight.fill_(0.5)
        model.bias.fill_(-2.0)
    opt = ASAM(torch.optim.SGD(model.parameters(), lr=0.0), rho=0.2, eta=0.1)
    model.weight.grad = torch.ones_like(model.weight)
    model.bias.grad = torch.ones_like(model.bias)
    opt.first_step()
    t_w, t_b = 0.6, 2.1
    norm = math.hypot(t_w, t_b)
    assert model.bias.item() == pytest.approx(-2.0 + 0.2 * t_b**2 / norm)
    assert model.weight.item() == pytest.approx(0.5 + 0.2 * t_w**2 / norm)


# ----------------------------------------------------------------------------- TRAM


def _two_class_tram(kind, decay=1.0, scale=2.0):
    """Linear 1 → 2 without bias; target weights (0, 0), current (1, 0); x = 1, y = 0."""
    model = nn.Linear(1, 2, bias=False).double()
    with torch.no_grad():
        model.weight.zero_()
    opt = TRAM(torch.optim.SGD(model.parameters(), lr=0.1), model, logit_scale=scale,
               divergence=kind, target_decay=decay)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0], [0.0]]))
    return model, opt


@pytest.mark.parametrize("kind", ["forward", "reverse", "symmetric"])
def test_tram_radius_and_first_step_match_hand_computation(kind):
    model, opt = _two_class_tram(kind)
    x, y = torch.ones(1, 1, dtype=torch.float64), torch.tensor([0])
    calls = []
    opt.step(_closure(opt, model, x, y, calls))
    s = 1 / (1 + math.exp(-1.0))  # current softmax (s, 1 − s); target (½, ½)
    forward = 0.5 * math.log(0.5 / s) + 0.5 * math.log(0.5 / (1 - s))
    reverse = s * math.log(s / 0.5) + (1 - s) * math.log((1 - s) / 0.5)
    kl = {"forward": forward, "reverse": reverse, "symmetric": forward + reverse}[kind]
    radius = 2.0 * kl
    assert opt.last_radius.item() == pytest.approx(radius, rel=1e-6)
    # g = (p − onehot) x = (s − 1, 1 − s): e = radius · (−1, 1)/√2
    e = calls[1][0] - calls[0][0]
    expected = radius * torch.tensor([[-1.0], [1.0]], dtype=torch.float64) / math.sqrt(2)
    torch.testing.assert_close(e, expected, rtol=1e-6, atol=1e-9)


def test_logit_divergence_is_per_example_kl():
    p = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    q = torch.tensor([[0.0, 1.0, 0.0], [1.0, -1.0, 0.5]])
    kl = [(a.softmax(-1) * (a.log_softmax(-1) - b.log_softmax(-1))).sum() for a, b in zip(p, q,
                                                                                          strict=True)]
    torch.testing.assert_close(logit_divergence(p, q), sum(kl) / 2)
    with pytest.raises(ValueError, match="forward, reverse, symmetric"):
        logit_divergence(p, q, "jensen")


@pytest.mark.parametrize("decay", [0.0, 0.5, 1.0])
def test_tram_target_tracks_the_previous_iterate_an_ema_or_the_start(decay):
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    opt = TRAM(torch.optim.SGD(model.parameters(), lr=0.5), model, logit_scale=1.0,
               target_decay=decay)
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))
    w0 = model.weight.detach().clone()
    opt.step(_closure(opt, model, x, y))
    w1 = model.weight.detach().clone()
    opt.step(_closure(opt, model, x, y))
    assert not torch.equal(w0, w1)
    expected = {0.0: w1, 0.5: 0.5 * w0 + 0.5 * w1, 1.0: w0}[decay]
    torch.testing.assert_close(opt.target["weight"], expected)


# ----------------------------------------------------------------------------- UDIM


def _tanh_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def _objective(model, x, y, rho):
    """CE(x) + ρ ‖∇_θ CE(x)‖ (the function whose input gradient UDIM ascends)."""
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, list(model.parameters()), create_graph=True)
    return loss + rho * torch.sqrt(sum(g.pow(2).sum() for g in grads))


def test_udim_input_perturbation_matches_finite_differences():
    model = _tanh_net()
    x = torch.randn(3, 4, dtype=torch.float64)
    y = torch.tensor([0, 2, 1])
    rho, step = 0.3, 0.7
    h = 1e-6
    fd = torch.zeros_like(x)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            up, down = x.clone(), x.clone()
            up[i, j] += h
            down[i, j] -= h
            fd[i, j] = (_objective(model, up, y, rho) - _objective(model, down, y, rho)) / (2 * h)
    expected = x + step * fd / fd.norm(dim=0, keepdim=True)  # each column unit-norm over rows
    got = udim_input_perturbation(model, x, y, rho=rho, input_step=step)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
    per_example = udim_input_perturbation(model, x, y, rho=rho, input_step=step,
                                          normalize="example")
    torch.testing.assert_close(per_example, x + step * fd / fd.norm(dim=1, keepdim=True),
                               rtol=1e-6, atol=1e-7)


def test_inconsistency_penalty_hand_case():
    """One coordinate, two examples: clean (1, 3), perturbed (2, 6). μ = 2, v = 1,
    ṽ = (0 + 16)/2 = 8, v̄ = 4.5: ½ (3.5² + 3.5²) = 12.25; norms (4 + 36)/2 = 20."""
    clean, perturbed = torch.tensor([[1.0], [3.0]]), torch.tensor([[2.0], [6.0]])
    assert inconsistency_penalty([clean], [perturbed]).item() == pytest.approx(32.25)
    # dimensions divide the norm term per parameter: a second, 2-d parameter of zeros
    zeros = torch.zeros(2, 2)
    expected = ((1 - 4.5) ** 2 * 1 / 3 + (8 - 4.5) ** 2 * 1 / 3) / 2 + 20.0
    # v̄ on the zero coordinates is 0; the variance mean runs over all 3 coordinates
    assert inconsistency_penalty([clean, zeros], [perturbed, zeros]).item() == pytest.approx(
        expected)


def test_per_example_linear_gradients_match_autograd_per_example():
    torch.manual_seed(1)
    h = torch.randn(6, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (6,))
    layer = nn.Linear(4, 3).double()
    gw, gb = per_example_linear_gradients(h, y, layer.weight, layer.bias)
    for i in range(6):
        ref = torch.autograd.grad(F.cross_entropy(layer(h[i : i + 1]), y[i : i + 1]),
                                  [layer.weight, layer.bias])
        torch.testing.assert_close(gw[i], ref[0])
        torch.testing.assert_close(gb[i], ref[1])


def _independent_udim_update(model, x, y, rho, step, weight, lr):
    """θ − lr (g_sam + λ ∇R), every piece from plain autograd (per-example loop)."""
    params = list(model.parameters())
    # inputs: ascend CE + ρ‖g‖, direction normalized across the batch
    x_var = x.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(_objective(model, x_var, y, rho), [x_var])
    x_tilde = x + step * gx / gx.norm(dim=0, keepdim=True)
    # e from the clean gradient; SAM gradient at θ + e
    g = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    norm = torch.sqrt(sum(t.pow(2).sum() for t in g))
    probe = copy.deepcopy(model)
    with torch.no_grad():
        for p, t in zip(probe.parameters(), g, strict=True):
            p.add_(rho * t / norm)
    g_sam = torch.autograd.grad(F.cross_entropy(probe(x), y), list(probe.parameters()))
    # inconsistency: per-example last-layer gradients, one example at a time
    head = model[2]

    def per_example(inputs):
        rows = []
        for i in range(len(inputs)):
            loss = F.cross_entropy(model(inputs[i : i + 1]), y[i : i + 1])
            gw, gb = torch.autograd.grad(loss, [head.weight, head.bias], create_graph=True)
            rows.append(torch.cat([gw.reshape(-1), gb]))
        return torch.stack(rows)

    clean, pert = per_example(x), per_example(x_tilde)
    mu = clean.mean(0)
    v, v_t = (clean - mu).pow(2).mean(0), (pert - mu).pow(2).mean(0)
    v_bar = (v + v_t) / 2
    dims = head.weight.numel()
    norms = (pert[:, :dims].pow(2).sum(1).mean() / dims
             + pert[:, dims:].pow(2).sum(1).mean() / head.bias.numel())
    penalty = ((v - v_bar).pow(2).mean() + (v_t - v_bar).pow(2).mean()) / 2 + norms
    g_r = torch.autograd.grad(penalty, params)
    return [p.detach() - lr * (a + weight * b) for p, a, b in zip(params, g_sam, g_r,
                                                                  strict=True)]


def test_udim_step_matches_independent_computation():
    model = _tanh_net(2)
    x = torch.randn(5, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1, 0])
    rho, step, weight, lr = 0.2, 0.5, 0.7, 0.1
    expected = _independent_udim_update(model, x, y, rho, step, weight, lr)
    opt = UDIM(torch.optim.SGD(model.parameters(), lr=lr), model, rho=rho, input_step=step,
               weight=weight)
    opt.set_batch(x, y)
    opt.step(_closure(opt, model, x, y))
    for p, e in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.detach(), e, rtol=1e-9, atol=1e-12)
    assert opt.last_inconsistency is not None and opt.last_inconsistency > 0


def test_udim_warmup_is_sam_then_needs_the_batch():
    model = _tanh_net(3)
    twin = copy.deepcopy(model)
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 3, (6,))
    udim = UDIM(torch.optim.SGD(model.parameters(), lr=0.1), model, rho=0.1, warmup_steps=2)
    sam = SAM(torch.optim.SGD(twin.parameters(), lr=0.1), rho=0.1)
    for _ in range(2):
        udim.step(_closure(udim, model, x, y))
        sam.step(_closure(sam, twin, x, y))
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(RuntimeError, match="set_batch"):
        udim.step(_closure(udim, model, x, y))


# ----------------------------------------------------------------------------- state dicts


def _bn_net():
    torch.manual_seed(4)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))


WRAPPERS = {
    "asam": lambda m: ASAM(torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9), model=m),
    "tram": lambda m: TRAM(torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9), m,
                           logit_scale=5.0, target_decay=0.5),
    "udim": lambda m: UDIM(torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9), m,
                           input_step=0.3, warmup_steps=3),
}


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_wrapper_state_dict_round_trip_continues_identically(name):
    x, y = torch.randn(12, 4), torch.randint(0, 3, (12,))
    model = _bn_net()
    opt = WRAPPERS[name](model)

    def run(o, m, steps):
        for _ in range(steps):
            if isinstance(o, UDIM):
                o.set_batch(x, y)
            o.step(_closure(o, m, x, y))

    run(opt, model, 2)
    saved_opt, saved_model = copy.deepcopy(opt.state_dict()), copy.deepcopy(model.state_dict())
    fresh_model = _bn_net()
    fresh = WRAPPERS[name](fresh_model)
    fresh_model.load_state_dict(saved_model)
    fresh.load_state_dict(saved_opt)
    run(opt, model, 2)
    run(fresh, fresh_model, 2)
    for a, b in zip(model.state_dict().values(), fresh_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="state of a"):
        SAM(torch.optim.SGD(model.parameters(), lr=0.1)).load_state_dict(saved_opt)


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_batchnorm_statistics_move_once_per_step(name):
    """Only the first, unperturbed pass on the clean batch updates the running statistics."""
    x, y = torch.randn(12, 4), torch.randint(0, 3, (12,))
    model = _bn_net()
    twin = copy.deepcopy(model)
    opt = WRAPPERS[name](model)
    if isinstance(opt, UDIM):
        opt.warmup_steps = 0
        opt.set_batch(x, y)
    opt.step(_closure(opt, model, x, y))
    twin(x)  # one training-mode forward
    for key in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(model[1].state_dict()[key], twin[1].state_dict()[key])


# ----------------------------------------------------------------------------- techniques


def test_registered_defaults():
    assert TECHNIQUES.get("asam").defaults() == {"rho": 0.5, "eta": 0.01,
                                                 "preserve_batchnorm": True}
    assert TECHNIQUES.get("tram").papers == (39,)
    assert TECHNIQUES.get("tram").defaults()["target_decay"] == 0.0
    udim = TECHNIQUES.get("udim")
    assert udim.papers == (57,) and udim.defaults()["rho"] == 0.05
    assert "_optimizer" not in udim.defaults()
    for name in ("asam", "tram", "udim"):
        assert TECHNIQUES.get(name).cls.touches == frozenset({"step"})


def test_two_step_strategies_are_refused_naming_both():
    model = nn.Linear(3, 2)
    data = (torch.randn(8, 3), torch.randint(0, 2, (8,)))
    with pytest.raises(CombinationError, match=r"'asam' and 'tram'"):
        Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), data, max_steps=1,
                techniques=[AdaptiveSharpnessAware(), TrustRegionAware()], measures=[])
    with pytest.raises(CombinationError, match=r"'udim' and 'sam'"):
        Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), data, max_steps=1,
                techniques=[UnknownDomainInconsistency(), TECHNIQUES.build("sam")],
                measures=[])


def _config(name):
    cfg = tiny_config("model.batch_norm=true", "batch_size=16", f"techniques={name}")
    if name == "udim":  # a visible input step on the tiny task's embedding outputs
        cfg = parse_overrides(cfg, ["techniques.udim.input_step=0.5"])
    return cfg


@pytest.mark.parametrize("name", ["asam", "tram", "udim"])
def test_technique_runs_in_heldout_and_resumes_exactly(name, tmp_path, monkeypatch):
    """A tiny run (token inputs, BatchNorm, minibatches) differs from plain training, and an
    interrupted run resumed from its step-8 checkpoint has the unbroken run's history."""
    cfg = _config(name)
    history = assert_resume_is_exact(cfg, tmp_path, monkeypatch)
    assert all(math.isfinite(v) for _, _, v in history)
    plain = execute(tiny_config("model.batch_norm=true", "batch_size=16"),
                    Store(tmp_path / "plain"))
    assert Store(tmp_path / "straight").final_metrics(cfg.identity) != plain.metrics


def _closure_step(opt, model, x, y):
    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return opt.step(closure)


def test_asam_is_sams_adaptive_rule_with_scale_weights():
    """One adaptive rule with an explicit option: ASAM is SAM(adaptive=True, scale="weights"),
    step for step; scale="all" (the sam technique's adaptive mode) also scales the biases."""
    import copy

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    twin, everything = copy.deepcopy(model), copy.deepcopy(model)
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    asam = ASAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.3, eta=0.02, model=model)
    sam = SAM(torch.optim.SGD(twin.parameters(), lr=0.1), rho=0.3, adaptive=True, eta=0.02,
              scale="weights", model=twin)
    scaled_all = SAM(torch.optim.SGD(everything.parameters(), lr=0.1), rho=0.3, adaptive=True,
                     eta=0.02, model=everything)
    for _ in range(3):
        for opt, net in ((asam, model), (sam, twin), (scaled_all, everything)):
            _closure_step(opt, net, x, y)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not all(torch.equal(a, b) for a, b in zip(model.parameters(),
                                                     everything.parameters(), strict=True))
    assert [asam.is_scaled(p) for p in model.parameters()] == [True, False, True, False]
    with pytest.raises(ValueError, match="scale must be 'all' or 'weights'"):
        SAM(torch.optim.SGD(model.parameters(), lr=0.1), adaptive=True, scale="biases")


def test_stacked_ascent_with_scale_weights_is_asams_first_step():
    from heldout.methods.sam import StackedAscent

    torch.manual_seed(1)
    models = [nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)) for _ in range(3)]
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    rhos = [0.1, 0.5, 0.3]
    layout, start = [], 0
    for name, p in models[0].named_parameters():
        layout.append((name, start, start + p.numel(), p.shape))
        start += p.numel()
    for m in models:
        F.cross_entropy(m(x), y).backward()
    flat = torch.stack([torch.cat([p.detach().flatten() for p in m.parameters()]) for m in models])
    grad = torch.stack([torch.cat([p.grad.flatten() for p in m.parameters()]) for m in models])
    rho = torch.tensor(rhos, dtype=torch.float64).unsqueeze(1)
    e = StackedAscent(rho, layout, eta=0.01, scale="weights").ascent(flat, grad)
    for k, m in enumerate(models):
        before = torch.cat([p.detach().flatten() for p in m.parameters()])
        ASAM(torch.optim.SGD(m.parameters(), lr=0.1), rho=rhos[k], eta=0.01,
             model=m).first_step()
        moved = torch.cat([p.detach().flatten() for p in m.parameters()]) - before
        torch.testing.assert_close(e[k], moved, rtol=1e-5, atol=1e-7)
