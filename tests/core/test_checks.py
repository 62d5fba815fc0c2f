"""Issue 9, the plain-loop API: every public function and wrapper refuses wrong input with one
clear line (property-based with hypothesis), and the places where heldout now agrees with the
authors' code (hard batches, RM3, the optimal AURC) or says precisely how it differs (cosine
power annealing), each on a hand-computed case."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from heldout.core.technique import Technique
from heldout.engine.trainer import Trainer
from heldout.measures.calibration import (
    brier_score,
    expected_calibration_error,
    maximum_calibration_error,
    reliability_diagram,
    risk_coverage,
)
from heldout.methods import (
    ASAM,
    SAM,
    TRAM,
    UDIM,
    AdaptiveSharpnessAware,
    HardBatches,
    PerpendicularGradient,
    RobustMeanGradients,
    SharpnessAware,
    TrustRegionAware,
    UnknownDomainInconsistency,
    cosine_power_annealing,
    distillation_loss,
    label_smoothing_cross_entropy,
    perpendicular_gradient,
    pskd_alpha,
    pskd_targets,
    schedule_factor,
    select_hard_batches,
    soft_cross_entropy,
    stablemax_cross_entropy,
)

FEW = settings(max_examples=30, deadline=None)
FLOAT_DTYPES = st.sampled_from([torch.float32, torch.float64, torch.bfloat16])


@st.composite
def classification(draw, dtype=None):
    """(logits (N, C), targets (N,)) with N in [1, 8], C in [1, 6], finite logits."""
    n, c = draw(st.integers(1, 8)), draw(st.integers(1, 6))
    values = draw(st.lists(st.floats(-50, 50, width=32), min_size=n * c, max_size=n * c))
    targets = draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n))
    dtype = dtype or draw(FLOAT_DTYPES)
    return torch.tensor(values, dtype=dtype).view(n, c), torch.tensor(targets)


# ----------------------------------------------------------------------------- StableMax CE


@FEW
@given(classification())
def test_stablemax_reductions_agree_and_keep_the_dtype(batch):
    logits, targets = batch
    none = stablemax_cross_entropy(logits, targets, reduction="none")
    total = stablemax_cross_entropy(logits, targets, reduction="sum")
    mean = stablemax_cross_entropy(logits, targets)
    assert none.shape == targets.shape
    assert none.dtype == total.dtype == mean.dtype == logits.dtype
    assert bool((none.double() >= 0).all())  # -log of a probability
    exact = stablemax_cross_entropy(logits.double(), targets, reduction="none")
    # each result is the float64 computation rounded once to the input's dtype
    torch.testing.assert_close(none, exact.to(logits.dtype), rtol=0, atol=0)
    torch.testing.assert_close(total, exact.sum().to(logits.dtype), rtol=0, atol=0)
    torch.testing.assert_close(mean, exact.mean().to(logits.dtype), rtol=0, atol=0)


@FEW
@given(classification(torch.float64), st.integers(1, 3))
def test_stablemax_rejects_a_wrong_label_count(batch, missing):
    logits, targets = batch
    for wrong in (targets[:-1], torch.cat([targets, targets[:missing]])):
        with pytest.raises(ValueError, match=r"stablemax_cross_entropy: expected targets of "
                                             rf"shape \({len(targets)},\)"):
            stablemax_cross_entropy(logits, wrong)


@FEW
@given(classification(torch.float32), st.sampled_from([torch.float32, torch.float64,
                                                       torch.bool]))
def test_stablemax_rejects_non_integer_labels(batch, dtype):
    logits, targets = batch
    with pytest.raises(TypeError, match="targets must be integer class indices"):
        stablemax_cross_entropy(logits, targets.to(dtype))


@FEW
@given(classification(torch.float32))
def test_stablemax_rejects_column_labels(batch):
    logits, targets = batch
    with pytest.raises(ValueError, match=r"got \(\d+, 1\)"):
        stablemax_cross_entropy(logits, targets[:, None])


@FEW
@given(classification(torch.float32), st.integers(0, 100), st.booleans())
def test_stablemax_rejects_labels_out_of_range(batch, offset, negative):
    logits, targets = batch
    bad = targets.clone()
    bad[0] = -1 - offset if negative else logits.shape[1] + offset
    with pytest.raises(ValueError, match=rf"class indices in \[0, {logits.shape[1]}\)"):
        stablemax_cross_entropy(logits, bad)


def test_stablemax_rejects_an_unknown_reduction_and_non_float_logits():
    with pytest.raises(ValueError, match="valid reductions: mean, sum, none"):
        stablemax_cross_entropy(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), "avg")
    with pytest.raises(TypeError, match="logits must be floating point"):
        stablemax_cross_entropy(torch.zeros(2, 3, dtype=torch.long),
                                torch.zeros(2, dtype=torch.long))


def test_stablemax_sum_and_none_by_hand():
    """Rows [1, -1, 0] and [0, 0, 0]: s = [2, 1/2, 1] and [1, 1, 1]; labels 0 and 2."""
    z = torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.0, 0.0]])
    losses = [-math.log(2 / 3.5), -math.log(1 / 3)]
    got = stablemax_cross_entropy(z, torch.tensor([0, 2]), reduction="none")
    assert got.tolist() == pytest.approx(losses, rel=1e-6)
    assert float(stablemax_cross_entropy(z, torch.tensor([0, 2]), reduction="sum")) == \
        pytest.approx(sum(losses), rel=1e-6)


def test_label_smoothing_and_distillation_check_their_labels_too():
    z = torch.zeros(4, 3)
    with pytest.raises(TypeError, match="label_smoothing_cross_entropy: targets must be integer"):
        label_smoothing_cross_entropy(z, torch.zeros(4), 0.1)
    with pytest.raises(ValueError, match=r"distillation_loss: expected targets of shape \(4,\)"):
        distillation_loss(z, z, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="teacher_logits of shape"):
        distillation_loss(z, torch.zeros(4, 5), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="soft_targets of shape"):
        soft_cross_entropy(z, torch.zeros(4, 2))


# ----------------------------------------------------------------------------- ⊥Grad


@FEW
@given(st.integers(1, 5), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_perpendicular_gradient_refuses_a_transposed_gradient(rows, cols, seed):
    gen = torch.Generator().manual_seed(seed)
    weight, grad = torch.randn(rows, cols, generator=gen), torch.randn(cols, rows, generator=gen)
    if rows == cols:  # same shape: the result is orthogonal to w and keeps ‖g‖
        out = perpendicular_gradient(weight.double(), grad.double())
        assert abs(float((out * weight.double()).sum())) < 1e-9 * float(grad.norm()) + 1e-12
        assert float(out.norm()) in (0.0, pytest.approx(float(grad.norm()), rel=1e-6))
        return
    with pytest.raises(ValueError, match=rf"weight of shape \({rows}, {cols}\) and grad of "
                                         rf"shape \({cols}, {rows}\) differ"):
        perpendicular_gradient(weight, grad)


def test_perpendicular_gradient_wrapper_rejects_a_bad_eps():
    params = [nn.Parameter(torch.ones(2))]
    for eps in (float("nan"), -1.0, "1e-30"):
        with pytest.raises((TypeError, ValueError), match="PerpendicularGradient: eps"):
            PerpendicularGradient(torch.optim.SGD(params, lr=0.1), eps)


# ----------------------------------------------------------------------------- SAM family

BAD_RADII = [float("nan"), float("inf"), -0.05, "0.05", None, True]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


WRAPPERS = {
    "SAM": lambda opt, m, r: SAM(opt, rho=r),
    "ASAM": lambda opt, m, r: ASAM(opt, rho=r, model=m),
    "TRAM": lambda opt, m, r: TRAM(opt, m, logit_scale=r),
    "UDIM": lambda opt, m, r: UDIM(opt, m, rho=r),
}
NAMES = {"SAM": "rho", "ASAM": "rho", "TRAM": "logit_scale", "UDIM": "rho"}


@pytest.mark.parametrize("wrapper", list(WRAPPERS))
@pytest.mark.parametrize("radius", BAD_RADII, ids=repr)
def test_wrappers_reject_a_radius_that_is_not_a_finite_non_negative_number(wrapper, radius):
    model = _model()
    error = TypeError if isinstance(radius, str | None | bool) else ValueError
    message = "real number" if error is TypeError else "finite number >= 0"
    with pytest.raises(error, match=f"{wrapper}: {NAMES[wrapper]} must be a {message}"):
        WRAPPERS[wrapper](torch.optim.SGD(model.parameters(), lr=0.1), model, radius)


@pytest.mark.parametrize(("technique", "name"), [
    (SharpnessAware, "rho"), (AdaptiveSharpnessAware, "rho"),
    (TrustRegionAware, "logit_scale"), (UnknownDomainInconsistency, "rho")])
@pytest.mark.parametrize("radius", [float("nan"), -1.0, "0.05"], ids=repr)
def test_techniques_reject_the_same_radii(technique, name, radius):
    with pytest.raises((TypeError, ValueError), match=name):
        technique(**{name: radius})


def test_sam_radius_zero_is_the_base_optimizer():
    model, twin = _model(), _model()
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    sam = SAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0)
    sgd = torch.optim.SGD(twin.parameters(), lr=0.1)
    for opt, m in ((sam, model), (sgd, twin)):
        def closure(opt=opt, m=m):
            opt.zero_grad()
            loss = F.cross_entropy(m(x), y)
            loss.backward()
            return loss
        opt.step(closure)
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b)


def _trajectory(model: nn.Module, opt: torch.optim.Optimizer, steps: int = 5) -> list[Tensor]:
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(8, 3, generator=gen), torch.randint(0, 2, (8,), generator=gen)

        def closure(x=x, y=y):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss
        opt.step(closure)
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("wrapper", ["SAM", "ASAM"])
def test_davda54_constructor_gives_the_same_trajectory(wrapper):
    """SAM(params, torch.optim.SGD, rho=..., lr=...) as davda54/sam, against the instance form."""
    cls = {"SAM": SAM, "ASAM": ASAM}[wrapper]
    extra = {"adaptive": True, "eta": 0.01} if wrapper == "SAM" else {"eta": 0.05}
    a, b = _model(), _model()
    by_instance = cls(torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4),
                      rho=0.3, **extra)
    by_class = cls(b.parameters(), torch.optim.SGD, rho=0.3, lr=0.1, momentum=0.9,
                   weight_decay=5e-4, **extra)
    assert isinstance(by_class.base, torch.optim.SGD)
    assert by_class.param_groups[0]["momentum"] == 0.9 and by_class.param_groups[0]["rho"] == 0.3
    first, second = _trajectory(a, by_instance), _trajectory(b, by_class)
    for p, q in zip(first, second, strict=True):
        assert torch.equal(p, q)
    assert not torch.equal(first[0], _model()[0].weight)  # it trained


def test_sam_constructor_refuses_mixed_forms():
    model = _model()
    with pytest.raises(TypeError, match="pass the wrapper's own settings by keyword"):
        SAM(torch.optim.SGD(model.parameters(), lr=0.1), 0.05)  # rho by position
    with pytest.raises(TypeError, match="got an optimizer instance and also lr"):
        SAM(torch.optim.SGD(model.parameters(), lr=0.1), rho=0.05, lr=0.1)
    with pytest.raises(TypeError, match=r"SAM\(model.parameters\(\), torch.optim.SGD"):
        SAM(model.parameters(), rho=0.05)
    with pytest.raises(TypeError, match="SGD.__init__|unexpected keyword"):
        SAM(model.parameters(), torch.optim.SGD, rh0=0.05, lr=0.1)  # a typo reaches SGD


# ----------------------------------------------------------------------------- calibration


@st.composite
def probabilities(draw):
    """(probs (N, C) rows that are distributions, in float32 or float64, targets (N,))."""
    n, c = draw(st.integers(1, 12)), draw(st.integers(1, 5))
    weights = draw(st.lists(st.floats(0, 1), min_size=n * c, max_size=n * c))
    probs = torch.tensor(weights, dtype=torch.float64).view(n, c) + 1e-3
    probs = probs / probs.sum(-1, keepdim=True)
    targets = torch.tensor(draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))
    return probs.to(draw(st.sampled_from([torch.float32, torch.float64]))), targets


@FEW
@given(probabilities(), st.integers(1, 20), st.sampled_from(["width", "mass"]))
def test_ece_is_a_fraction_for_any_probabilities(batch, n_bins, binning):
    probs, targets = batch
    ece = expected_calibration_error(probs, targets, n_bins, binning)
    assert 0.0 <= ece <= 1.0
    assert 0.0 <= maximum_calibration_error(probs, targets, n_bins, binning) <= 1.0
    assert 0.0 <= brier_score(probs, targets) <= 2.0
    curve = risk_coverage(probs, targets)
    assert 0.0 <= curve["aurc"] <= 1.0 and curve["eaurc"] >= -1e-12


@FEW
@given(classification(torch.float64), st.integers(1, 15))
def test_ece_from_logits_is_the_ece_of_the_softmax(batch, n_bins):
    logits, targets = batch
    probs = torch.softmax(logits, dim=-1)
    assert expected_calibration_error(logits, targets, n_bins, from_logits=True) == \
        pytest.approx(expected_calibration_error(probs, targets, n_bins), abs=1e-12)
    assert risk_coverage(logits, targets, from_logits=True) == \
        pytest.approx(risk_coverage(probs, targets), abs=1e-12)


@pytest.mark.parametrize("fn", [expected_calibration_error, maximum_calibration_error,
                                brier_score, risk_coverage, reliability_diagram])
def test_calibration_refuses_logits_labels_out_of_range_and_nan(fn):
    name = fn.__name__
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.1, 3.0, -2.0]])
    targets = torch.tensor([0, 1])
    with pytest.raises(ValueError, match=f"{name}: probs must be probabilities in "
                                         r"\[0, 1\].*from_logits=True"):
        fn(logits, targets)
    with pytest.raises(ValueError, match="each row of probs must sum to 1"):
        fn(torch.tensor([[0.5, 0.2, 0.1], [0.3, 0.3, 0.4]]), targets)
    probs = torch.softmax(logits, -1)
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\), got values in \[0, 3\]"):
        fn(probs, torch.tensor([0, 3]))
    with pytest.raises(TypeError, match="integer class indices"):
        fn(probs, targets.float())
    with pytest.raises(ValueError, match="probabilities"):
        fn(torch.tensor([[float("nan"), 0.5, 0.5], [0.2, 0.3, 0.5]]), targets)
    with pytest.raises(ValueError, match="logits must be finite"):
        fn(torch.tensor([[float("nan"), 0.5, 0.5], [0.2, 0.3, 0.5]]), targets, from_logits=True)
    with pytest.raises(ValueError, match=r"expected targets of shape \(2,\)"):
        fn(probs, torch.tensor([0, 1, 2]))


def test_the_issue_case_ece_of_logits_is_refused_not_4_88():
    gen = torch.Generator().manual_seed(0)
    logits = 5 * torch.randn(50, 3, generator=gen)
    targets = torch.randint(0, 3, (50,), generator=gen)
    with pytest.raises(ValueError, match="from_logits=True"):
        expected_calibration_error(logits, targets)
    assert 0 <= expected_calibration_error(logits, targets, from_logits=True) <= 1


def test_optimal_aurc_is_exact_as_in_the_pskd_code():
    """Five examples by decreasing confidence, wrong at ranks 1 and 4 (n = 5, e = 2).
    Risks 1/1, 1/2, 1/3, 2/4, 2/5 → AURC = 2.7333/5. The oracle puts both errors last:
    risks 0, 0, 0, 1/4, 2/5 → (1/4 + 2/5)/5 = 0.13, i.e. (1/n) Σ_i i/(n − e + i); the
    continuous r + (1 − r) ln(1 − r) with r = 2/5 would give 0.0935."""
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4], [0.55, 0.45]])
    targets = torch.tensor([1, 0, 0, 1, 0])
    out = risk_coverage(probs, targets)
    aurc = (1 + 1 / 2 + 1 / 3 + 2 / 4 + 2 / 5) / 5
    oracle = (1 / 4 + 2 / 5) / 5
    assert out["aurc"] == pytest.approx(aurc, abs=1e-15)
    assert out["aurc"] - out["eaurc"] == pytest.approx(oracle, abs=1e-15)
    r = 2 / 5
    assert abs(oracle - (r + (1 - r) * math.log(1 - r))) > 0.03  # not the approximation


# ----------------------------------------------------------------------------- PS-KD


@FEW
@given(st.integers(1, 500), st.data(), st.floats(0, 1))
def test_pskd_alpha_stays_in_zero_alpha_final(total, data, alpha_final):
    epoch = data.draw(st.integers(0, total - 1))
    alpha = pskd_alpha(epoch, total, alpha_final)
    assert 0 <= alpha <= alpha_final
    assert pskd_alpha(total - 1, total, alpha_final) == pytest.approx(alpha_final)


@FEW
@given(st.integers(1, 50), st.integers(0, 20))
def test_pskd_alpha_rejects_epochs_past_the_end_or_negative(total, beyond):
    for epoch in (total + beyond, -1 - beyond):
        with pytest.raises(ValueError, match="0 <= epoch < total_epochs"):
            pskd_alpha(epoch, total)
    with pytest.raises(ValueError, match="0 <= epoch < total_epochs"):
        pskd_alpha(0, -beyond)
    with pytest.raises(TypeError, match="epoch must be an integer"):
        pskd_alpha(0.5, total)
    with pytest.raises(ValueError, match=r"alpha_final must be in \[0, 1\]"):
        pskd_alpha(0, total, 1.5)


def test_pskd_alpha_of_the_issue():
    with pytest.raises(ValueError, match="epoch=9, total_epochs=5"):
        pskd_alpha(9, 5)


@FEW
@given(probabilities(), st.floats(0, 1))
def test_pskd_targets_are_distributions_for_any_valid_alpha(batch, alpha):
    past, targets = batch
    mixed = pskd_targets(targets, past, alpha)
    assert bool((mixed >= 0).all()) and bool((mixed <= 1 + 1e-6).all())
    torch.testing.assert_close(mixed.sum(-1), torch.ones(len(targets), dtype=past.dtype))


@FEW
@given(probabilities(), st.sampled_from([1.6, -0.1, float("nan"), float("inf")]))
def test_pskd_targets_reject_alpha_outside_the_unit_interval(batch, alpha):
    past, targets = batch
    with pytest.raises(ValueError, match="pskd_targets: alpha"):
        pskd_targets(targets, past, alpha)


def test_pskd_targets_reject_bad_past_and_labels():
    past = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    with pytest.raises(ValueError, match="past must be probabilities"):
        pskd_targets(torch.tensor([0, 1]), torch.tensor([[2.0, -1.0, 0.0], [0.0, 0.0, 1.0]]),
                     0.5)
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
        pskd_targets(torch.tensor([0, 3]), past, 0.5)
    with pytest.raises(ValueError, match=r"expected targets of shape \(2,\)"):
        pskd_targets(torch.tensor([0]), past, 0.5)


# ----------------------------------------------------------------------------- hard batches


@dataclass
class SeenBatches(Technique):
    """Records the example indices of each batch and the recorded losses when it was chosen
    (listed after HardBatches)."""

    hard: HardBatches
    seen: list = field(default_factory=list)
    losses: list = field(default_factory=list)

    def on_batch_start(self, state):
        self.seen.append(state.batch[2].tolist())
        self.losses.append(self.hard.state_dict()["batch_losses"].clone())


def _hard_run(n: int, batch_size: int, steps: int, **params) -> SeenBatches:
    torch.manual_seed(0)
    x, y = torch.randn(n, 3), torch.randint(0, 2, (n,))
    hard = HardBatches(seed=3, **params)
    spy = SeenBatches(hard)
    model = nn.Linear(3, 2)
    Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), (x, y), max_steps=steps,
            batch_size=batch_size, techniques=[hard, spy], measures=[]).fit()
    return spy


def _partition(n: int, batch_size: int) -> list[list[int]]:
    return [b.tolist() for b in torch.randperm(n, generator=torch.Generator().manual_seed(3))
            .split(batch_size)]


def test_hard_batches_train_a_round_in_dataset_order_by_default():
    """The authors' loop walks the loader and trains the selected batches as it meets them:
    each round is the δ·b highest recorded losses, in ascending batch index."""
    spy = _hard_run(40, 5, 8 + 4 + 4)
    partition = _partition(40, 5)
    assert spy.seen[:8] == partition
    for start in (8, 12):
        losses = spy.losses[start]
        chosen = torch.sort(losses, descending=True).indices[:4].sort().values.tolist()
        assert spy.seen[start:start + 4] == [partition[i] for i in chosen]
    other = _hard_run(40, 5, 8 + 4, order="hardest_first")
    assert other.seen[:8] == spy.seen[:8]  # the same first pass
    assert other.seen[8] == partition[int(spy.losses[8].argmax())]  # hardest first
    assert sorted(other.seen[8:12]) == sorted(spy.seen[8:12])  # the same set ...
    assert other.seen[8:12] != spy.seen[8:12]  # ... in another order


def test_hard_batches_drop_the_last_partial_batch_like_the_authors_loader():
    n, size = 23, 5  # 4 full batches; 3 examples of the permutation are never trained on
    seen = _hard_run(n, size, 10).seen
    partition = _partition(n, size)
    assert seen[:4] == partition[:4]
    assert all(len(b) == size for b in seen)
    assert not set(partition[4]) & {i for b in seen for i in b}
    kept = _hard_run(n, size, 10, drop_last=False).seen
    assert kept[:5] == partition  # the partial batch is the fifth
    with pytest.raises(ValueError, match="unknown order 'random'"):
        HardBatches(order="random")


def test_hard_batches_keep_one_batch_when_delta_b_is_below_one():
    """δ·b = 0.1·4 < 1: the authors' code would select none and stop training after the first
    pass; heldout trains the single hardest batch each round, so the budget is spent."""
    spy = _hard_run(20, 5, 4 + 3, fraction=0.1)
    partition = _partition(20, 5)
    assert spy.seen[:4] == partition and len(spy.seen) == 7
    for step in (4, 5, 6):  # one batch per round: the hardest at that moment
        assert spy.seen[step] == partition[int(spy.losses[step].argmax())]
    assert select_hard_batches(torch.tensor([0.1, 0.9, 0.5, 0.2]), 0.1).tolist() == [1]


# ----------------------------------------------------------------------------- RM3


def _rm3_updates(grads: list[float], pad: bool, lr: float = 0.5) -> list[float]:
    """Drive the technique by hand with scalar gradients; the weights after each step."""
    w = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=lr)
    rm3 = RobustMeanGradients(estimator="running_median", pad_window=pad)
    state = SimpleNamespace(model=SimpleNamespace(parameters=lambda: [w]))
    weights = []
    for g in grads:
        w.grad = torch.tensor([float(g)])
        rm3.on_after_backward(state)
        opt.step()
        rm3.on_after_step(state)
        weights.append(float(w.detach()))
    return weights


def test_rm3_waits_for_a_full_window_as_the_official_optimizer():
    """Gradients 1, 5, 2, -3, 4 with lr 0.5. Official rm3.py: the counter reaches 3 at step 3,
    so steps 1 and 2 make no update; then median(1, 5, 2) = 2 and median(5, 2, -3) = 2 and
    median(2, -3, 4) = 2: w = 0, 0, -1, -2, -3."""
    assert _rm3_updates([1, 5, 2, -3, 4], pad=False) == [0.0, 0.0, -1.0, -2.0, -3.0]
    # padding (heldout's former rule): medians (1,1,1)=1, (1,1,5)=1, then 2, 2, 2
    assert _rm3_updates([1, 5, 2, -3, 4], pad=True) == [-0.5, -1.0, -2.0, -3.0, -4.0]


def _official_rm3(params, grads_per_step, lr):
    """The official rule written out: a ring buffer of 3 started with copies of the first
    gradient, counter 1, each later gradient written at counter % 3; update with
    sum − min − max once counter >= 3."""
    buffers, counter = None, 0
    for grads in grads_per_step:
        if buffers is None:
            buffers, counter = [[g.clone() for _ in range(3)] for g in grads], 1
        else:
            for buf, g in zip(buffers, grads, strict=True):
                buf[counter % 3] = g.clone()
            counter += 1
        if counter >= 3:
            for p, buf in zip(params, buffers, strict=True):
                stacked = torch.stack(buf)
                p.sub_(lr * (stacked.sum(0) - stacked.min(0).values - stacked.max(0).values))


def test_rm3_in_the_trainer_matches_the_official_rule():
    torch.manual_seed(2)
    x, y = torch.randn(32, 4, dtype=torch.float64), torch.randint(0, 3, (32,))
    model = nn.Linear(4, 3).double()
    start = [p.detach().clone() for p in model.parameters()]
    seen = []

    @dataclass
    class Grads(Technique):
        def on_after_backward(self, state):  # before RM3 rewrites them
            seen.append([p.grad.detach().clone() for p in state.model.parameters()])

    Trainer(model, torch.optim.SGD(model.parameters(), lr=0.2), (x, y), max_steps=6,
            batch_size=8, techniques=[Grads(), RobustMeanGradients(estimator="running_median")],
            measures=[]).fit()
    # the batch gradients depend on the weights, so replay them through the official rule
    replay = [p.clone() for p in start]
    with torch.no_grad():
        _official_rm3(replay, seen, 0.2)
    for got, want in zip(model.parameters(), replay, strict=True):
        torch.testing.assert_close(got.detach(), want, rtol=1e-12, atol=1e-14)
    assert not torch.equal(replay[0], start[0])


def test_rm3_composes_with_sam_while_its_window_fills(tmp_path):
    from heldout.config import parse_overrides
    from heldout.run.execute import execute
    from heldout.store import Store
    from tests.conftest import tiny_config

    cfg = parse_overrides(tiny_config("steps=5", "batch_size=16",
                                      "techniques=sam,robust_mean_gradients"),
                          ["techniques.robust_mean_gradients.estimator=running_median"])
    result = execute(cfg, Store(tmp_path / "s"))
    assert result.status == "done"
    assert all(math.isfinite(v) for v in result.metrics.values())


# ----------------------------------------------------------------------------- schedules


def _authors_cosine_power(total: int, p: float = 10.0) -> np.ndarray:
    """sharpDARTS' cosine_power_annealing for epochs 1..T with max 1 and min 0: c at each
    epoch, p^(c + 1), min-max rescaled over the epochs given."""
    epochs = np.arange(total) + 1
    curve = np.power(p, (1 + np.cos(np.pi * epochs / total)) / 2 + 1)
    curve = curve - curve.min()
    return curve / curve.max()


@pytest.mark.parametrize(("total", "first_gap", "last_step", "largest_gap"), [
    (10, 0.061, 0.0064, 0.1645), (5, 0.219, 0.0273, 0.281), (100, None, None, 0.020)])
def test_cosine_power_annealing_differs_from_the_authors_as_documented(
        total, first_gap, last_step, largest_gap):
    authors = _authors_cosine_power(total)
    assert authors[0] == 1.0 and authors[-1] == 0.0
    closed_form = np.array([cosine_power_annealing(e, total, 1.0) for e in range(1, total + 1)])
    assert closed_form[-1] == pytest.approx(0.0, abs=1e-12)
    ratio = authors[:-1] / closed_form[:-1]  # the authors' curve is a rescaled closed form
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-12)
    heldout = np.array([schedule_factor("cosine_power", t, total) for t in range(total)])
    assert heldout[0] == 1.0 and heldout[-1] > 0
    assert (heldout - authors).max() == pytest.approx(largest_gap, abs=5e-4)
    if first_gap is not None:
        assert 1 - closed_form[0] == pytest.approx(first_gap, abs=5e-4)
        assert heldout[-1] == pytest.approx(last_step, abs=5e-5)


def test_other_public_functions_refuse_the_same_class_of_misuse():
    from heldout.methods import cosine_annealing, ema_update, entropy_regularization

    with pytest.raises(ValueError, match="mode must be 'bonus' or 'penalty', got 'penality'"):
        entropy_regularization(torch.zeros(2, 3), 0.1, "penality")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"expected a mask of shape \(2, 5\)"):
        entropy_regularization(torch.zeros(2, 5, 3), 0.1, mask=torch.ones(2, 3))
    average, model = nn.Linear(3, 2), nn.Linear(3, 2)
    for decay in (1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"ema_update: decay must be"):
            ema_update(average, model, decay)
    with pytest.raises(ValueError, match=r"average parameter of shape \(2, 3\) and model "
                                         r"parameter of shape \(3, 2\) differ"):
        ema_update(average, nn.Linear(2, 3), 0.9)
    for fn in (cosine_annealing, cosine_power_annealing):
        with pytest.raises(ValueError, match="total must be >= 1"):
            fn(0, 0, 1.0)
