"""Oracle tests of the norm, margin, flatness and distance measures (heldout.measures.norms):
hand-built networks whose norms, margins and path norms are known by hand, BatchNorm folding
by hand, and the PAC-Bayes / sharpness searches against closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from heldout.core.inputs import InputSpec
from heldout.measures import evaluate
from heldout.measures.bounds import magnitude_aware_pac_bayes_bound, pac_bayes_bound
from heldout.measures.flatness import PacBayesFlatness, pac_bayes_sigma, sharpness_radius
from heldout.measures.norms import (
    DistanceFromInit,
    Margin,
    Norms,
    distance_from_init,
    fold_batch_norm,
    log_growth_fit,
    margin_quantile,
    margins,
    norm_measures,
    path_norm,
    weight_matrices,
)
from heldout.models.mlp import mlp_network


def _phi(x: float) -> float:
    """Standard normal CDF."""
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def _solve(f, lo: float, hi: float) -> float:
    """Root of an increasing f on [lo, hi] by bisection."""
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) < 0 else (lo, mid)
    return (lo + hi) / 2


def _snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "training": [m.training for m in model.modules()],
    }


def _assert_unchanged(model: nn.Module, before: dict) -> None:
    after = _snapshot(model)
    assert before["training"] == after["training"]
    for k, v in before["state"].items():
        assert torch.equal(v, after["state"][k]), k
    for a, b in zip(before["grads"], after["grads"], strict=True):
        assert (a is None and b is None) or torch.equal(a, b)


# --- a hand-built 2-layer net ---------------------------------------------------------------
# f(x) = W2 relu(W1 x), W1 = diag(3, 1), W2 = diag(2, 0.5), no biases.
# ‖W1‖₂ = 3, ‖W1‖_F² = 10; ‖W2‖₂ = 2, ‖W2‖_F² = 4.25.
# Path norm: W2² relu(W1² 1) = diag(4, .25) (9, 1) = (36, .25) -> 36.25.
# Data: 5 x (e1, class 0): logits (6, 0), margin 6; 5 x (e2, class 1): logits (0, .5), margin .5.


def _two_layer() -> nn.Sequential:
    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.diag(torch.tensor([3.0, 1.0])))
        net[2].weight.copy_(torch.diag(torch.tensor([2.0, 0.5])))
    return net


def _two_layer_data() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.tensor([[1.0, 0.0]] * 5 + [[0.0, 1.0]] * 5)
    y = torch.tensor([0] * 5 + [1] * 5)
    return x, y


def test_norm_measures_hand_case():
    out = norm_measures(weight_matrices(_two_layer()))
    assert out["log_prod_of_spec"] == pytest.approx(math.log(9 * 4))
    assert out["log_sum_of_spec"] == pytest.approx(math.log(2) + math.log(36) / 2)  # log 12
    assert out["log_sum_of_spec"] == pytest.approx(math.log(12))
    assert out["fro_over_spec"] == pytest.approx(10 / 9 + 4.25 / 4)
    assert out["log_prod_of_fro"] == pytest.approx(math.log(10 * 4.25))
    assert out["log_sum_of_fro"] == pytest.approx(math.log(2) + math.log(42.5) / 2)
    assert out["param_norm"] == pytest.approx(14.25)
    assert "fro_dist" not in out and "log_prod_of_spec_over_margin" not in out


def test_spectral_norm_of_a_non_diagonal_matrix():
    # rank one: [[1, 1], [1, 1]] = 2 · (u uᵀ) with ‖u‖ = 1 -> spectral norm 2, Frobenius² 4
    out = norm_measures([torch.ones(2, 2)])
    assert out["log_prod_of_spec"] == pytest.approx(math.log(4))
    assert out["fro_over_spec"] == pytest.approx(1.0)


def test_path_norm_hand_cases():
    assert path_norm(_two_layer(), (2,)) == pytest.approx(36.25)
    # W1 = ones(2, 2), W2 = [[1, 2]]: W2² relu(W1² 1) = (1, 4)·(2, 2) = 10
    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        net[0].weight.fill_(1.0)
        net[2].weight.copy_(torch.tensor([[1.0, -2.0]]))  # the sign is squared away
    assert path_norm(net, (2,)) == pytest.approx(10.0)
    # biases are squared and included: + b2² = 9 on the output, + b1² (4) through W2²: 4·(1+4)
    net_b = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        net_b[0].weight.fill_(1.0)
        net_b[0].bias.fill_(-2.0)
        net_b[2].weight.copy_(torch.tensor([[1.0, -2.0]]))
        net_b[2].bias.fill_(3.0)
    assert path_norm(net_b, (2,)) == pytest.approx(10.0 + 4 * 5 + 9)


def test_norms_measure_through_evaluate_with_margin_and_init():
    net = _two_layer()
    init = _two_layer()
    with torch.no_grad():
        init[0].weight.copy_(torch.eye(2))  # W1 − W1⁰ = diag(2, 0); W2 unchanged
    x, y = _two_layer_data()
    before = _snapshot(net)
    metrics = evaluate(net, {"train": (x, y), "test": (x, y)}, [Norms()],
                       initial_state=init.state_dict())
    _assert_unchanged(net, before)
    assert not any(k.startswith("test/") for k in metrics)  # train only by default
    m = {k.split("/", 1)[1]: v for k, v in metrics.items()}
    # γ = the 1st smallest of 10 margins = 0.5 -> log γ² = log 0.25
    assert m["log_prod_of_spec_over_margin"] == pytest.approx(math.log(36 / 0.25))
    assert m["log_sum_of_spec_over_margin"] == pytest.approx(math.log(2) + math.log(144) / 2)
    assert m["log_spec_orig"] == pytest.approx(math.log(144) + math.log(10 / 9 + 4.25 / 4))
    assert m["log_prod_of_fro_over_margin"] == pytest.approx(math.log(42.5 / 0.25))
    assert m["fro_dist"] == pytest.approx(4.0)
    assert m["dist_spec_init"] == pytest.approx(4.0)
    assert m["log_spec_init"] == pytest.approx(math.log(144 * 4 / 9))  # Σ‖ΔW‖_F²/‖W‖₂² = 4/9
    assert m["path_norm"] == pytest.approx(36.25)
    assert m["path_norm_over_margin"] == pytest.approx(36.25 / 0.25)
    assert m["num_params"] == 8


def test_norms_path_norm_of_a_token_mlp_uses_the_one_hot_width():
    torch.manual_seed(0)
    net = mlp_network(InputSpec("tokens", (2,), vocab=5), 3, hidden=(4,))
    tokens = torch.tensor([[0, 1], [2, 3], [4, 0]])
    metrics = evaluate(net, {"train": (tokens, torch.tensor([0, 1, 2]))}, [Norms()])
    first, head = net.linear1, net.head
    hidden = torch.relu(first.weight.detach() ** 2 @ torch.ones(10) + first.bias.detach() ** 2)
    expected = float((head.weight.detach() ** 2 @ hidden + head.bias.detach() ** 2).sum())
    assert metrics["train/path_norm"] == pytest.approx(expected, rel=1e-5)


# --- BatchNorm folding ----------------------------------------------------------------------


def test_fold_batch_norm_one_channel_by_hand():
    # Linear w = 2, b = 1; BN γ = 3, β = 0.5, mean = 1, var = 3, eps = 1:
    # s = 3/√4 = 1.5 -> w' = 3, b' = 1.5·(1 − 1) + 0.5 = 0.5
    net = nn.Sequential(nn.Linear(1, 1), nn.BatchNorm1d(1, eps=1.0))
    with torch.no_grad():
        net[0].weight.fill_(2.0)
        net[0].bias.fill_(1.0)
        net[1].weight.fill_(3.0)
        net[1].bias.fill_(0.5)
        net[1].running_mean.fill_(1.0)
        net[1].running_var.fill_(3.0)
    net.train()
    before = _snapshot(net)
    folded = fold_batch_norm(net)
    _assert_unchanged(net, before)
    assert isinstance(folded[1], nn.Identity) and not folded.training
    assert folded[0].weight.item() == pytest.approx(3.0)
    assert folded[0].bias.item() == pytest.approx(0.5)
    x = torch.tensor([[0.0], [1.0], [-2.0]])
    net.eval()
    assert torch.allclose(folded(x), net(x))


def test_fold_batch_norm_keeps_the_eval_function_of_conv_and_biasless_linear():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv1d(2, 3, 3, padding=1), nn.BatchNorm1d(3), nn.ReLU(),
        nn.Conv1d(3, 4, 3, bias=False), nn.BatchNorm1d(4), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 6, 5, bias=False), nn.BatchNorm1d(5), nn.ReLU(),
        nn.Linear(5, 2),
    )
    net.train()
    with torch.no_grad():
        for _ in range(3):  # non-trivial running statistics
            net(torch.randn(16, 2, 8) * 3 + 1)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.weight.uniform_(0.5, 2.0)
                m.bias.uniform_(-1.0, 1.0)
    folded = fold_batch_norm(net)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in folded.modules())
    assert net.training  # the original is untouched
    x = torch.randn(7, 2, 8)
    net.eval()
    with torch.no_grad():
        assert torch.allclose(folded(x), net(x), atol=1e-5)
    assert folded[3].bias is not None and folded[7].bias is not None  # biases created


def test_fold_batch_norm_leaves_an_unfoldable_batch_norm():
    net = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.BatchNorm1d(3))
    assert isinstance(fold_batch_norm(net)[2], nn.BatchNorm1d)


# --- margins --------------------------------------------------------------------------------

LOGITS = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 2.5], [1.0, 0.5, 0.0]])
TARGETS = torch.tensor([0, 1, 0])  # margins 2, −0.5, 0.5


def test_margins_by_hand():
    assert margins(LOGITS, TARGETS).tolist() == pytest.approx([2.0, -0.5, 0.5])
    assert margin_quantile(LOGITS, TARGETS) == pytest.approx(-0.5)  # k = max(1, ⌊0.3⌋) = 1
    assert margin_quantile(LOGITS, TARGETS, percentile=70) == pytest.approx(0.5)  # k = 2
    assert margin_quantile(LOGITS, TARGETS, percentile=100) == pytest.approx(2.0)
    # 20 examples: the 10th percentile is the 2nd smallest
    logits = torch.stack([torch.tensor([float(i), 0.0]) for i in range(20)])
    assert margin_quantile(logits, torch.zeros(20, dtype=torch.long)) == pytest.approx(1.0)


def test_margin_measure_on_every_split():
    net = nn.Identity()
    metrics = evaluate(net, {"train": (LOGITS, TARGETS), "test": (LOGITS[:1], TARGETS[:1])},
                       [Margin()])
    assert metrics["train/margin"] == pytest.approx(-0.5)
    assert metrics["train/inverse_margin"] == pytest.approx(4.0)
    assert metrics["test/margin"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="percentile"):
        Margin(percentile=0.0)


# --- distance from initialization -----------------------------------------------------------


def test_distance_from_init_by_hand():
    lin = nn.Linear(2, 1)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0]]))
        lin.bias.fill_(0.5)
    initial = {"weight": torch.tensor([[1.0, 0.0]]), "bias": torch.tensor([0.5])}
    assert distance_from_init(lin, initial) == pytest.approx(2.0)
    x, y = torch.randn(4, 2), torch.zeros(4, dtype=torch.long)
    metrics = evaluate(lin, {"train": (x, y), "test": (x, y)}, [DistanceFromInit()],
                       initial_state=initial)
    assert metrics == pytest.approx({"train/distance_from_init": 2.0,
                                     "train/relative_distance_from_init": 2 / math.sqrt(1.25)})
    assert evaluate(lin, {"train": (x, y)}, [DistanceFromInit()]) == {}  # no initial state


def test_log_growth_fit_recovers_a_log_law():
    steps = [1, 10, 100, 1000, 10000]
    fit = log_growth_fit(steps, [2 + 3 * math.log(t) for t in steps])
    assert fit["slope"] == pytest.approx(3.0)
    assert fit["intercept"] == pytest.approx(2.0)
    assert fit["r2"] == pytest.approx(1.0)
    linear = log_growth_fit(steps, [float(t) for t in steps])
    assert linear["r2"] < 0.9  # linear growth is not a log law


# --- PAC-Bayes sigma' and sharpness alpha' against closed forms -----------------------------
# A bank of independent 1-D classifiers: example i is s_i·e_i, label 1 if s_i = +1 else 0, and
# logits (0, score_i) with score_i = w_i·s_i (+ u_i·s_i under noise). Example i is misclassified
# exactly when w_i + u_i < 0, so with u_i ~ N(0, σ²) the expected error is mean_i Φ(−w_i/σ).


class Bank(nn.Module):
    def __init__(self, weights: torch.Tensor) -> None:
        super().__init__()
        self.linear = nn.Linear(len(weights), 1, bias=False)
        with torch.no_grad():
            self.linear.weight.copy_(weights.view(1, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = self.linear(x)
        return torch.cat([torch.zeros_like(score), score], dim=1)


def _bank_data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    signs = torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0)
    return torch.diag(signs), (signs > 0).long()


def test_pac_bayes_sigma_matches_the_normal_cdf_closed_form():
    n = 2000
    x, y = _bank_data(n)
    model = Bank(torch.ones(n))
    before = _snapshot(model)
    sigma = pac_bayes_sigma(model, x, y, tolerance=0.002, mc_samples=20)
    _assert_unchanged(model, before)
    exact = 1 / 1.2815515655446004  # Φ(−1/σ) = 0.1
    assert sigma == pytest.approx(exact, abs=0.03)
    # the paper's defaults: within its tolerance of the target (plus Monte-Carlo error)
    default = pac_bayes_sigma(model, x, y)
    assert abs(_phi(-1 / default) - 0.1) < 0.02


def test_magnitude_aware_sigma_is_scale_free_and_plain_sigma_is_not():
    n = 2000
    x, y = _bank_data(n)
    weights = 10 ** torch.linspace(-1, 1, n)[torch.randperm(n, generator=torch.Generator()
                                                             .manual_seed(0))]
    model = Bank(weights)
    w = weights.tolist()
    eps = 1e-3
    plain_exact = _solve(lambda s: sum(_phi(-wi / s) for wi in w) / n - 0.1, 1e-3, 2.0)
    mag_exact = _solve(lambda s: sum(_phi(-wi / math.sqrt(s * s * wi * wi + eps * eps))
                                     for wi in w) / n - 0.1, 1e-3, 2.0)
    plain = pac_bayes_sigma(model, x, y, tolerance=0.002, mc_samples=20)
    mag = pac_bayes_sigma(model, x, y, tolerance=0.002, mc_samples=20, magnitude_eps=eps)
    assert plain == pytest.approx(plain_exact, rel=0.05)
    assert mag == pytest.approx(mag_exact, rel=0.05)
    assert abs(plain_exact - mag_exact) > 0.2  # the two closed forms differ here


def test_pac_bayes_sigma_on_the_loss():
    n = 500
    x, y = _bank_data(n)
    sigma = pac_bayes_sigma(Bank(torch.full((n,), 2.0)), x, y, criterion="loss",
                            target_deviation=0.5, search_depth=8, mc_samples=4)
    assert 0 < sigma < 2


def test_sharpness_radius_matches_the_worst_case_closed_form():
    # worst case in the box |u_i| <= α: example i flips exactly when w_i < α, so the error
    # rise is the share of w_i below α; it reaches 0.1 at the 10% quantile of w.
    n = 500
    x, y = _bank_data(n)
    weights = torch.linspace(0.05, 1.0, n)
    model = Bank(weights)
    before = _snapshot(model)
    alpha = sharpness_radius(model, x, y)
    _assert_unchanged(model, before)
    share = float((weights < alpha).double().mean())
    assert 0.085 <= share <= 0.115
    # magnitude-aware box α|w_i| + ε: i flips when α > 1 − ε/w_i; the 10% smallest w reach
    # that at α ≈ 1 − ε/0.145
    mag = sharpness_radius(model, x, y, magnitude_eps=1e-3)
    assert mag == pytest.approx(1 - 1e-3 / 0.145, abs=2e-3)


def test_pac_bayes_bound_formulas_by_hand():
    assert pac_bayes_bound(8.0, 0.5, 100) == pytest.approx(8 / 1 + math.log(200) + 10)
    v = torch.tensor([1.0, -2.0])
    sigma, eps = 0.5, 1e-3
    numerator = eps**2 + (sigma**2 + 1) * 5 / 2
    expected = 0.25 * (math.log(numerator / (eps**2 + sigma**2 * 1))
                       + math.log(numerator / (eps**2 + sigma**2 * 4))) + math.log(200) + 10
    assert magnitude_aware_pac_bayes_bound(v, sigma, 100, eps) == pytest.approx(expected)


def test_pac_bayes_flatness_measure_through_evaluate():
    n = 400
    x, y = _bank_data(n)
    model = Bank(torch.ones(n))
    initial = {"linear.weight": torch.zeros(1, n)}
    measure = PacBayesFlatness(search_depth=6, mc_samples=3, ascent_steps=4)
    before = _snapshot(model)
    metrics = evaluate(model, {"train": (x, y), "test": (x, y)}, [measure],
                       initial_state=initial)
    _assert_unchanged(model, before)
    m = {k.split("/", 1)[1]: v for k, v in metrics.items()}
    assert not any(k.startswith("test/") for k in metrics)
    sigma = m["pacbayes_sigma"]
    assert m["pacbayes_flatness"] == pytest.approx(1 / sigma**2)
    assert m["pacbayes_orig"] == pytest.approx(n / (4 * sigma**2) + math.log(n / sigma) + 10)
    assert m["pacbayes_init"] == pytest.approx(m["pacbayes_orig"])  # w⁰ = 0
    assert m["sharpness_flatness"] == pytest.approx(1 / m["sharpness_alpha"] ** 2)
    assert m["sharpness_orig"] == pytest.approx(
        n * math.log(2 * n) / (4 * m["sharpness_alpha"] ** 2)
        + math.log(n / m["sharpness_alpha"]) + 10)
    for key in ("pacbayes_mag_sigma", "pacbayes_mag_init", "sharpness_mag_alpha"):
        assert math.isfinite(m[key])
    again = evaluate(model, {"train": (x, y)}, [measure], initial_state=initial)
    assert again == {k: v for k, v in metrics.items() if k.startswith("train/")}  # seeded


def test_adapters_leave_a_batch_norm_mlp_untouched():
    torch.manual_seed(0)
    net = mlp_network(InputSpec("continuous", (6,)), 3, hidden=(8, 8), batch_norm=True)
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    initial = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()
    net(x)  # running statistics and a training-mode model
    loss = nn.functional.cross_entropy(net(x), y)
    loss.backward()  # gradients present
    before = _snapshot(net)
    measures = [Norms(), Margin(), DistanceFromInit(),
                PacBayesFlatness(search_depth=3, mc_samples=2, ascent_steps=2)]
    metrics = evaluate(net, {"train": (x, y)}, measures, initial_state=initial)
    _assert_unchanged(net, before)
    assert all(math.isfinite(v) for v in metrics.values())
    assert metrics["train/num_params"] == 6 * 8 + 8 * 8 + 8 * 3


def test_validation_names_the_field():
    with pytest.raises(ValueError, match="mc_samples"):
        PacBayesFlatness(mc_samples=0)
    with pytest.raises(ValueError, match="target_deviation"):
        PacBayesFlatness(target_deviation=0.0)
    with pytest.raises(ValueError, match="criterion"):
        PacBayesFlatness(criterion="accuracy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="splits"):
        Norms(splits=())
