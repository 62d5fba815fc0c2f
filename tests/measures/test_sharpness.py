"""Sharpness and Hessian measures against closed forms on quadratic losses, and their contract:
rescaling invariance of adaptive sharpness, batch accumulation, no change to the model."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from heldout.core.measure import evaluate
from heldout.measures.sharpness import (
    Hessian,
    Sharpness,
    _checkpoints,
    hessian_top_eigenvalue,
    hessian_trace,
    sharpness,
)
from heldout.registry import MEASURES

D = 24
DUMMY = (torch.zeros(1, 1), torch.zeros(1, dtype=torch.long))  # the quadratic ignores its data


class Quadratic(nn.Module):
    """A parameter w whose loss (see ``quadratic``) is ½ (w − c)ᵀ A (w − c), stationary at c."""

    def __init__(self, center: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(center.clone())
        self.register_buffer("center", center.clone())


def quadratic(a: torch.Tensor):
    def loss_fn(model, x, y):
        d = model.w - model.center
        return 0.5 * d @ a @ d

    return loss_fn


def spd(eigenvalues, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=gen,
                                       dtype=torch.float64))
    return q @ torch.diag(torch.as_tensor(eigenvalues, dtype=torch.float64)) @ q.T


def center(seed=1):
    gen = torch.Generator().manual_seed(seed)
    sign = torch.where(torch.rand(D, generator=gen) < 0.5, -1.0, 1.0)
    return (sign * (0.5 + torch.rand(D, generator=gen))).double()  # |w| in [0.5, 1.5]



EIGS = [3.0, 1.0] + torch.linspace(-0.5, 0.9, D - 2).tolist()


# --------------------------------------------------------------------------- Hessian


def test_top_eigenvalue_is_lambda_max():
    a = spd(EIGS)
    lam = hessian_top_eigenvalue(Quadratic(center()), DUMMY, iterations=200, tol=1e-10,
                                 loss_fn=quadratic(a))
    assert lam == pytest.approx(3.0, rel=1e-6)


def test_trace_is_exact_for_a_diagonal_hessian():
    a = torch.diag(torch.linspace(-1.0, 4.0, D, dtype=torch.float64))
    # Rademacher probes: vᵀAv = Σ a_i v_i² = tr(A) for every draw (Gaussian probes would not)
    trace = hessian_trace(Quadratic(center()), DUMMY, samples=2, loss_fn=quadratic(a))
    assert trace == pytest.approx(float(a.trace()), rel=1e-12)


def test_trace_is_within_hutchinson_error_for_a_dense_hessian():
    a = spd(EIGS, seed=3)
    samples = 400
    off_diagonal = float((a**2).sum() - (a.diagonal() ** 2).sum())
    std = math.sqrt(2 * off_diagonal / samples)  # Var(vᵀAv) = 2 Σ_{i≠j} A_ij² for ±1 v
    exact = float(a.trace())
    assert 4 * std < 0.2 * abs(exact)  # the tolerance below is a real constraint
    trace = hessian_trace(Quadratic(center()), DUMMY, samples=samples, seed=5,
                          loss_fn=quadratic(a))
    assert abs(trace - exact) < 4 * std


# --------------------------------------------------------------------------- sharpness oracles


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_average_case_matches_closed_form(adaptive, norm):
    """δ = ρ T ⊙ ξ at a stationary point: E ½δᵀAδ = ½ρ² Σ A_ii T_i² E ξ_i² (no 1/√d)."""
    a, c, rho, eta, n = spd(EIGS, seed=2), center(), 0.3, 0.1, 3000
    t = c.abs() + eta if adaptive else torch.ones(D, dtype=torch.float64)
    b = rho**2 * (t[:, None] * a * t[None, :])  # E ½ ξᵀBξ, ξ i.i.d. with E ξ² = s2, E ξ⁴ = s4
    s2, s4 = (1.0, 3.0) if norm == "l2" else (1 / 3, 1 / 5)
    expected = 0.5 * s2 * float(b.diagonal().sum())
    off = float((b**2).sum() - (b.diagonal() ** 2).sum())
    var = 0.25 * (float((b.diagonal() ** 2).sum()) * (s4 - s2**2) + 2 * off * s2**2)
    value = sharpness(Quadratic(c), DUMMY, rho, kind="average", adaptive=adaptive, norm=norm,
                      eta=eta, n_samples=n, seed=7, loss_fn=quadratic(a))
    assert abs(value - expected) < 4 * math.sqrt(var / n)


@pytest.mark.parametrize("adaptive", [False, True])
def test_worst_case_l2_at_a_stationary_point_is_half_rho2_lambda_max(adaptive):
    a, c, rho = spd(EIGS), center(), 0.5
    t = c.abs() if adaptive else torch.ones(D, dtype=torch.float64)
    # max_{‖u‖ ≤ ρ} ½ (t⊙u)ᵀ A (t⊙u) = ½ρ² λ_max(TAT)
    expected = 0.5 * rho**2 * float(torch.linalg.eigvalsh(t[:, None] * a * t[None, :])[-1])
    value = sharpness(Quadratic(c), DUMMY, rho, adaptive=adaptive, norm="l2", steps=60,
                      random_init=True, loss_fn=quadratic(a))  # ∇L = 0: start off centre
    assert expected * (1 - 1e-4) < value <= expected * (1 + 1e-9)


@pytest.mark.parametrize("adaptive", [False, True])
def test_worst_case_linf_on_a_diagonal_quadratic_is_the_corner(adaptive):
    diag = torch.linspace(0.2, 2.0, D, dtype=torch.float64)
    c, rho = center(), 0.05
    t = c.abs() if adaptive else torch.ones(D, dtype=torch.float64)
    expected = 0.5 * rho**2 * float((diag * t**2).sum())
    value = sharpness(Quadratic(c), DUMMY, rho, adaptive=adaptive, norm="linf", steps=5,
                      random_init=True, loss_fn=quadratic(torch.diag(diag)))
    assert value == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_worst_case_of_a_linear_loss_is_the_dual_norm(norm):
    """From δ = 0: max_{‖u‖_p ≤ ρ} gᵀ(T⊙u) = ρ‖T⊙g‖_q, reached by the steepest ascent in u."""
    gen = torch.Generator().manual_seed(4)
    g, c, rho = torch.randn(D, generator=gen, dtype=torch.float64), center(), 0.1
    value = sharpness(Quadratic(c), DUMMY, rho, norm=norm, steps=3,
                      loss_fn=lambda model, x, y: g @ model.w)
    scaled = c.abs() * g
    expected = rho * float(scaled.norm() if norm == "l2" else scaled.abs().sum())
    assert value == pytest.approx(expected, rel=1e-10)


def test_step_halving_checkpoints_follow_apgd():
    # p = 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93 (0.99 ≥ the end) of 20 steps, rounded up
    assert _checkpoints(20) == {5, 9, 12, 14, 16, 18, 19}


def test_ascent_iterates_follow_apgd_by_hand():
    """1-D, L(u) = −(u − 0.3)², box |u| ≤ 1, step 2, α = 0.75; worked out by hand:
    u1 = P(0 + 2) = 1; u2 = P(1 + .75(−1 − 1) + .25(1 − 0)) = −.25; u3 = .375 (the only
    improvement); u4 = −.5; u5 = .40625; u6 = .75(−1) + .5(.40625) − .25(−.5) = −.421875.
    Checkpoint w1 = 5 (iteration 5 from 0, i.e. after update 6): 1 < .75·5 improvements, so the
    step halves to 1 and the ascent restarts at the best point .375:
    u7 = .375 + .75(−.625 − .375) = −.375."""
    seen = []

    def loss_fn(model, x, y):
        seen.append(float(model.w.detach()))
        return -((model.w - 0.3) ** 2).sum()

    sharpness(Quadratic(torch.zeros(1, dtype=torch.float64)), DUMMY, 1.0, adaptive=False,
              steps=20, loss_fn=loss_fn)  # 20 steps: the first checkpoint is w1 = 5
    assert seen[:8] == [0.0, 1.0, -0.25, 0.375, -0.5, 0.40625, -0.421875, -0.375]


# --------------------------------------------------------------------------- real networks


def two_layer(scale: float) -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 16, bias=False), nn.ReLU(), nn.Linear(16, 3, bias=False))
    with torch.no_grad():
        net[0].weight.mul_(scale)
        net[2].weight.div_(scale)
    return net.double()


def classification_data(n=64, d=5, classes=3, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=gen, dtype=dtype),
            torch.randint(0, classes, (n,), generator=gen))


@pytest.mark.parametrize(("kind", "norm", "rho"), [
    ("worst", "linf", 0.05), ("worst", "l2", 0.5), ("average", "l2", 0.1)])
def test_adaptive_sharpness_is_invariant_to_layer_rescaling(kind, norm, rho):
    data = classification_data()
    plain, rescaled = two_layer(1.0), two_layer(4.0)  # W1·4, W2/4: the same function
    x = data[0]
    assert torch.allclose(plain(x), rescaled(x), rtol=1e-12)

    def value(net, adaptive):
        return sharpness(net, data, rho, kind=kind, norm=norm, adaptive=adaptive, steps=10,
                         normalize_logits=False, batch_size=None)

    adaptive = value(plain, True)
    assert abs(adaptive) > 1e-4  # not trivially 0 = 0 (an untrained net: the mean can be < 0)
    assert value(rescaled, True) == pytest.approx(adaptive, rel=1e-6)
    standard, standard_rescaled = value(plain, False), value(rescaled, False)
    assert abs(standard - standard_rescaled) > 0.1 * abs(standard)


def bn_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 3))


def test_chunked_data_gives_the_same_values():
    """The loss over unequal chunks is their size-weighted mean; m-sharpness is per batch."""
    net = two_layer(1.0)
    data = classification_data()
    chunks = [(data[0][a:b], data[1][a:b]) for a, b in ((0, 10), (10, 35), (35, 64))]
    for kwargs in ({"kind": "worst", "norm": "l2", "adaptive": False},
                   {"kind": "average", "norm": "linf"}):
        whole = sharpness(net, data, 0.2, batch_size=None, steps=6, **kwargs)
        assert sharpness(net, chunks, 0.2, batch_size=None, steps=6, **kwargs) == (
            pytest.approx(whole, rel=1e-10))
    assert hessian_trace(net, chunks, samples=3) == pytest.approx(
        hessian_trace(net, data, samples=3), rel=1e-10)
    assert hessian_top_eigenvalue(net, chunks, iterations=5) == pytest.approx(
        hessian_top_eigenvalue(net, data, iterations=5), rel=1e-10)
    # m = 16: four independent maxima, averaged
    per_batch = [sharpness(net, (data[0][i:i + 16], data[1][i:i + 16]), 0.01, batch_size=None,
                           steps=6) for i in range(0, 64, 16)]
    assert sharpness(net, data, 0.01, batch_size=16, steps=6) == pytest.approx(
        sum(per_batch) / 4, rel=1e-10)


def snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
            {n: p.requires_grad for n, p in model.named_parameters()},
            [m.training for m in model.modules()])


def assert_same(a, b):
    states, grads, flags, modes = a
    states2, grads2, flags2, modes2 = b
    assert states.keys() == states2.keys()
    assert all(torch.equal(states[k], states2[k]) for k in states)
    assert all((grads[n] is None and grads2[n] is None) or torch.equal(grads[n], grads2[n])
               for n in grads)
    assert flags == flags2 and modes == modes2


def test_measures_leave_the_model_and_global_rng_unchanged():
    net = bn_mlp().train()
    x, y = classification_data(dtype=torch.float32)
    F.cross_entropy(net(x), y).backward()  # populated grads, updated BN statistics
    net[3].bias.requires_grad_(False)
    before, rng = snapshot(net), torch.get_rng_state()
    sharpness(net, (x, y), 0.01, steps=4, random_init=True)
    sharpness(net, (x, y), 0.1, kind="average", norm="l2", n_samples=3)
    hessian_top_eigenvalue(net, (x, y), iterations=3)
    hessian_trace(net, (x, y), samples=2)
    evaluate(net, {"train": (x, y)}, [Sharpness(steps=2), Hessian(iterations=2, samples=2)])
    assert_same(before, snapshot(net))
    assert torch.equal(rng, torch.get_rng_state())
    # the check can fail: a training-mode forward does change the BN statistics
    net(x)
    assert not torch.equal(before[0]["1.running_mean"], net.state_dict()["1.running_mean"])


# --------------------------------------------------------------------------- adapters


def test_adapters_through_evaluate():
    net = bn_mlp().eval()
    train, test = classification_data(200, dtype=torch.float32), classification_data(50, seed=1,
                                                                                     dtype=torch.float32)
    measures = [Sharpness(n_examples=64, batch_size=32, steps=5),
                Hessian(iterations=10, samples=4, n_examples=64)]
    metrics = evaluate(net, {"train": train, "test": test}, measures, batch_size=50)
    assert set(metrics) == {"train/sharpness", "train/hessian_top_eigenvalue",
                            "train/hessian_trace"}
    first = (train[0][:64], train[1][:64])
    assert metrics["train/sharpness"] == pytest.approx(
        sharpness(net, first, 0.002, batch_size=32, steps=5), rel=1e-9)
    assert metrics["train/sharpness"] > 0
    assert metrics["train/hessian_trace"] == pytest.approx(
        hessian_trace(net, first, samples=4), rel=1e-6)
    assert metrics["train/hessian_top_eigenvalue"] == pytest.approx(
        hessian_top_eigenvalue(net, first, iterations=10), rel=1e-6)
    assert evaluate(net, {"train": train, "test": test}, measures, batch_size=50) == metrics
    average = evaluate(net, {"train": train}, [Sharpness(kind="average", n_samples=3, seed=1)])
    assert math.isfinite(average["train/sharpness"])


def test_registry_entries_and_validation():
    entry = MEASURES.get("sharpness")
    assert entry.cls is Sharpness and entry.papers == (67,)
    defaults = entry.defaults()
    assert (defaults["kind"], defaults["norm"], defaults["adaptive"], defaults["rho"]) == (
        "worst", "linf", True, 0.002)
    assert defaults["normalize_logits"] and defaults["batch_size"] == 128
    assert MEASURES.get("hessian").cls is Hessian
    for cls, field, value in [(Sharpness, "rho", 0.0), (Sharpness, "kind", "best"),
                              (Sharpness, "norm", "l1"), (Sharpness, "momentum", 1.0),
                              (Sharpness, "batch_size", 0), (Sharpness, "steps", 0),
                              (Hessian, "samples", 0), (Hessian, "iterations", 0)]:
        with pytest.raises(ValueError, match=field):
            cls(**{field: value})


class BagNet(nn.Module):
    """Token sums through ``F.embedding_bag`` (no second derivative in PyTorch) or, the same
    function, through ``F.embedding(...).sum`` (twice differentiable)."""

    def __init__(self, bag: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.table = nn.Parameter(torch.randn(11, 8, dtype=torch.float64))
        self.head = nn.Linear(8, 3).double()
        self.bag = bag

    def forward(self, tokens):
        rows = F.embedding_bag(tokens, self.table, mode="sum") if self.bag else F.embedding(
            tokens, self.table).sum(dim=1)
        return self.head(torch.tanh(rows))


def test_hessian_falls_back_to_finite_differences_without_double_backward():
    gen = torch.Generator().manual_seed(0)
    data = (torch.randint(0, 11, (40, 2), generator=gen), torch.randint(0, 3, (40,), generator=gen))
    bag = BagNet(True)
    (g,) = torch.autograd.grad(F.cross_entropy(bag(data[0]), data[1]), bag.table,
                               create_graph=True)
    with pytest.raises(NotImplementedError):  # the case the fallback exists for
        torch.autograd.grad((g * g).sum(), bag.table)
    exact = hessian_trace(BagNet(False), data, samples=3)
    assert hessian_trace(BagNet(True), data, samples=3) == pytest.approx(exact, rel=1e-6)
    assert hessian_top_eigenvalue(BagNet(True), data, iterations=30) == pytest.approx(
        hessian_top_eigenvalue(BagNet(False), data, iterations=30), rel=1e-6)


class Shift(nn.Module):
    """Adds a constant to every logit (no parameters, so it is never perturbed)."""

    def forward(self, logits):
        return logits + 3.0


def test_logit_normalization_removes_logit_scale_and_shift():
    data = classification_data()
    net = two_layer(1.0)
    louder = two_layer(1.0)
    with torch.no_grad():
        louder[2].weight.mul_(4.0)  # every logit times 4

    def value(model, normalize):
        return sharpness(model, data, 0.05, steps=5, normalize_logits=normalize)

    reference = value(net, True)
    assert value(louder, True) == pytest.approx(reference, rel=1e-9)
    assert value(nn.Sequential(net, Shift()), True) == pytest.approx(reference, rel=1e-9)
    assert abs(value(louder, False) - value(net, False)) > 0.1 * abs(value(net, False))


def test_measures_use_the_model_in_eval_mode():
    """As the paper's code: BatchNorm with its running statistics, whatever the model's mode."""
    x, y = classification_data(dtype=torch.float32)
    training = bn_mlp().train()
    training(x)  # running statistics that differ from the batch statistics of x[:32]
    evaluating = bn_mlp()
    evaluating.load_state_dict(training.state_dict())
    evaluating.eval()
    data = (x[:32], y[:32])
    for fn in (lambda m: sharpness(m, data, 0.01, steps=4),
               lambda m: sharpness(m, data, 0.1, kind="average", n_samples=3),
               lambda m: hessian_trace(m, data, samples=2)):
        assert fn(training) == fn(evaluating)
    assert training.training and not evaluating.training
