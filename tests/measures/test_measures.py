"""Oracle tests of the measures: each one against a hand-computed case, a closed form or an
independent NumPy re-computation that does not call the code under test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from heldout.measures import (
    ECE,
    Accuracy,
    EvalContext,
    GeneralizationGap,
    GradientWeightAlignment,
    Loss,
    SoftmaxCollapse,
    accuracy,
    evaluate,
    expected_calibration_error,
    generalization_gap,
    gradient_weight_cosine,
    softmax_collapse,
    softmax_collapse_fraction,
)
from heldout.tasks.base import Split


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _ece_oracle(probs: np.ndarray, targets: np.ndarray, n_bins: int) -> float:
    """Equal-width ECE with bins (k/B, (k+1)/B], written from the definition."""
    conf, correct = probs.max(axis=1), probs.argmax(axis=1) == targets
    total = 0.0
    for k in range(n_bins):
        in_bin = (conf > k / n_bins) & (conf <= (k + 1) / n_bins)
        if in_bin.any():
            total += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return total


# --- accuracy and loss --------------------------------------------------------------------

LOGITS = [[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 0.5], [0.0, 0.0, 5.0]]


def test_accuracy_hand_case():
    # arg-max: 0, 1, 0, 2 against targets 0, 1, 2, 2 -> 3 of 4
    assert accuracy(torch.tensor(LOGITS), torch.tensor([0, 1, 2, 2])) == 0.75
    assert accuracy(torch.tensor(LOGITS), torch.tensor([1, 0, 2, 1])) == 0.0


def test_accuracy_measure_with_corrupted_labels():
    # predictions 0, 1, 0, 2; noisy y = [0, 2, 0, 1]; clean y = [0, 1, 1, 2]
    split = Split(torch.tensor(LOGITS), torch.tensor([0, 2, 0, 1]), torch.tensor([0, 1, 1, 2]))
    out = Accuracy().compute(EvalContext(nn.Identity(), "train", split))
    # vs noisy: rows 0, 2 right; vs clean: rows 0, 1, 3 right; corrupted rows 1, 2, 3 and of
    # those only row 2 predicts its noisy label
    assert out == {"accuracy": 0.5, "clean_accuracy": 0.75, "memorized": pytest.approx(1 / 3)}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_loss_measure_equals_numpy(dtype):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 6, generator=gen) * 4
    y = torch.randint(0, 6, (50,), generator=gen)
    expected = -_log_softmax(logits.double().numpy())[np.arange(50), y.numpy()].mean()
    got = Loss(dtype=dtype).compute(EvalContext(nn.Identity(), "test", (logits, y)))
    assert got["loss"] == pytest.approx(expected, rel=1e-6 if dtype == "float32" else 1e-13)


# --- expected calibration error -----------------------------------------------------------


def test_ece_of_a_calibrated_predictor_is_near_zero():
    n = 200_000
    gen = torch.Generator().manual_seed(0)
    confidence = 0.5 + 0.5 * torch.rand(n, generator=gen, dtype=torch.float64)
    correct = torch.rand(n, generator=gen, dtype=torch.float64) < confidence
    probs = torch.stack([confidence, 1 - confidence], dim=1)
    targets = torch.where(correct, 0, 1)
    ece = expected_calibration_error(probs, targets)
    assert ece < 0.01
    assert ece == pytest.approx(_ece_oracle(probs.numpy(), targets.numpy(), 10), abs=1e-12)
    # an over-confident version of the same predictor is far from calibrated
    sharp = torch.stack([confidence.sqrt(), 1 - confidence.sqrt()], dim=1)
    assert expected_calibration_error(sharp, targets) > 0.05


@pytest.mark.parametrize("n_bins", [1, 10, 15])
def test_ece_of_a_known_miscalibrated_predictor(n_bins):
    # always 90% confident, right 60% of the time: |0.6 - 0.9| = 0.3
    probs = torch.tensor([[0.9, 0.1]], dtype=torch.float64).repeat(1000, 1)
    targets = torch.cat([torch.zeros(600), torch.ones(400)]).long()
    assert expected_calibration_error(probs, targets, n_bins) == pytest.approx(0.3, abs=1e-12)


def test_ece_two_bins_by_hand():
    # bins (0, 0.5] and (0.5, 1]; confidence 0.5 belongs to the first
    probs = torch.tensor([
        [0.4, 0.35, 0.25],  # conf 0.4, right  -> bin 0
        [0.2, 0.5, 0.3],  # conf 0.5, wrong  -> bin 0
        [0.8, 0.1, 0.1],  # conf 0.8, right  -> bin 1
        [0.1, 0.9, 0.0],  # conf 0.9, wrong  -> bin 1
        [0.6, 0.3, 0.1],  # conf 0.6, right  -> bin 1
    ], dtype=torch.float64)
    targets = torch.tensor([0, 2, 0, 0, 0])
    # bin 0: acc 1/2, conf 0.45 -> 0.05 with weight 2/5; bin 1: acc 2/3, conf 2.3/3 -> 0.1 with
    # weight 3/5; ECE = 0.02 + 0.06
    assert expected_calibration_error(probs, targets, n_bins=2) == pytest.approx(0.08, abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ece_bin_edges_are_lower_open_upper_closed(dtype):
    probs = torch.tensor([
        [0.5, 0.3, 0.2],  # conf 0.5 exactly, right: bin (0.4, 0.5]
        [0.45, 0.35, 0.2],  # conf 0.45, wrong: bin (0.4, 0.5]
        [0.55, 0.25, 0.2],  # conf 0.55, wrong: bin (0.5, 0.6]
    ], dtype=dtype)
    targets = torch.tensor([0, 1, 2])
    # (0.4, 0.5]: |1/2 - 0.475| · 2/3; (0.5, 0.6]: |0 - 0.55| · 1/3 -> (0.05 + 0.55) / 3 = 0.2
    # (with 0.5 in (0.5, 0.6] it would be (0.45 + 0.05) / 3 = 0.1667)
    tol = 1e-7 if dtype == torch.float32 else 1e-12
    assert expected_calibration_error(probs, targets, n_bins=10) == pytest.approx(0.2, abs=tol)


def test_ece_equal_mass_bins_by_hand():
    # 2-class; confidences in shuffled order, sorted: 0.6 (wrong), 0.7 | 0.8, 0.95 (right)
    confidence = torch.tensor([0.95, 0.6, 0.8, 0.7], dtype=torch.float64)
    probs = torch.stack([confidence, 1 - confidence], dim=1)
    targets = torch.tensor([0, 1, 0, 0])
    # low bin: |1 - 1.3| = 0.3, high bin: |2 - 1.75| = 0.25 -> 0.55 / 4
    assert expected_calibration_error(probs, targets, 2, "mass") == pytest.approx(0.1375,
                                                                                  abs=1e-12)
    # equal width puts all four in (0.5, 1]: |3 - 3.05| / 4
    assert expected_calibration_error(probs, targets, 2, "width") == pytest.approx(0.0125,
                                                                                   abs=1e-12)
    # more bins than examples: each example alone, (|1 - 0.7| + |0 - 0.6|) / 2
    two = torch.tensor([[0.7, 0.3], [0.6, 0.4]], dtype=torch.float64)
    assert expected_calibration_error(two, torch.tensor([0, 1]), 4, "mass") == pytest.approx(
        0.45, abs=1e-12)


def test_ece_rejects_bad_arguments():
    probs, targets = torch.tensor([[0.7, 0.3]]), torch.tensor([0])
    for n_bins in (0, -3):
        with pytest.raises(ValueError, match="n_bins"):
            expected_calibration_error(probs, targets, n_bins=n_bins)
        with pytest.raises(ValueError, match="n_bins"):
            ECE(n_bins=n_bins)
    with pytest.raises(ValueError, match="binning"):
        expected_calibration_error(probs, targets, binning="quantile")  # type: ignore[arg-type]


def test_ece_measure_uses_the_softmax_of_the_logits():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(300, 4, generator=gen) * 3
    y = torch.randint(0, 4, (300,), generator=gen)
    probs = np.exp(_log_softmax(logits.double().numpy()))
    for n_bins in (10, 15):
        got = ECE(n_bins=n_bins).compute(EvalContext(nn.Identity(), "test", (logits, y)))
        assert got["ece"] == pytest.approx(_ece_oracle(probs, y.numpy(), n_bins), abs=1e-12)


# --- Softmax Collapse ---------------------------------------------------------------------


def test_softmax_collapse_margins():
    collapsed = torch.tensor([[30.0, 0.0, 0.0]])  # exp(-30) ≈ 9e-14 < float32 eps / 2
    assert softmax_collapse(collapsed) == {"collapse": 1.0, "zero_loss": 1.0}
    assert softmax_collapse(torch.tensor([[5.0, 0.0, 0.0]])) == {"collapse": 0.0,
                                                                 "zero_loss": 0.0}
    assert softmax_collapse(collapsed, torch.float64) == {"collapse": 0.0, "zero_loss": 0.0}
    # the rows are counted: 2 of 4 collapsed, independent of the logit offset
    rows = torch.tensor([[30.0, 0.0, 0.0], [0.0, 5.0, 0.0], [-7.0, 33.0, 3.0],
                         [1.0, 2.0, 3.0]])
    assert softmax_collapse(rows) == {"collapse": 0.5, "zero_loss": 0.5}
    assert softmax_collapse_fraction(rows) == 0.5
    assert softmax_collapse_fraction(rows, torch.float64) == 0.0
    assert SoftmaxCollapse(dtype="float64").compute(
        EvalContext(nn.Identity(), "train", (rows, torch.zeros(4).long()))) == {
        "collapse": 0.0, "zero_loss": 0.0}


# --- generalization gap -------------------------------------------------------------------


def test_generalization_gap_hand_dict():
    metrics = {"train/accuracy": 1.0, "test/accuracy": 0.75, "val/accuracy": 0.5,
               "train/loss": 0.125, "test/loss": 0.625, "val/loss": 1.125}
    assert generalization_gap(metrics) == {"gap/accuracy": 0.25, "gap/loss": 0.5}
    assert generalization_gap(metrics, "val") == {"gap/accuracy": 0.5, "gap/loss": 1.0}
    assert generalization_gap({"train/accuracy": 0.9, "test/accuracy": 0.6}) == {
        "gap/accuracy": pytest.approx(0.3)}
    assert generalization_gap({"train/loss": 0.1}) == {}
    assert GeneralizationGap(reference="val").combine(metrics) == {"gap/accuracy": 0.5,
                                                                   "gap/loss": 1.0}


# --- naive loss minimization: gradient-weight cosine --------------------------------------


def _cosine_oracle(weight: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    """f(x) = Wx: ∇_W mean CE = (softmax(XWᵀ) − onehot)ᵀ X / n; cos(−∇, W)."""
    probs = np.exp(_log_softmax(x @ weight.T))
    onehot = np.eye(weight.shape[0])[y]
    grad = (probs - onehot).T @ x / len(y)
    return float(-(grad * weight).sum() / (np.linalg.norm(grad) * np.linalg.norm(weight)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradient_weight_cosine_of_a_linear_softmax_model(dtype):
    gen = torch.Generator().manual_seed(0)
    model = nn.Linear(5, 3, bias=False).to(dtype)
    with torch.no_grad():
        model.weight.copy_(torch.randn(3, 5, generator=gen))
    x = torch.randn(40, 5, generator=gen, dtype=dtype)
    y = (x[:, :3].argmax(dim=1) + (torch.rand(40, generator=gen) < 0.3).long()) % 3
    expected = _cosine_oracle(model.weight.detach().double().numpy(), x.double().numpy(),
                              y.numpy())
    sentinel = torch.full_like(model.weight, 7.0)
    model.weight.grad = sentinel.clone()
    model.train()
    got = gradient_weight_cosine(model, x, y, dtype)
    assert got == pytest.approx(expected, rel=1e-5 if dtype == torch.float32 else 1e-12)
    assert torch.equal(model.weight.grad, sentinel)  # the model's gradient is untouched
    assert model.training
    model.weight.grad = None
    gradient_weight_cosine(model, x, y, dtype)
    assert model.weight.grad is None


def test_gradient_weight_cosine_of_a_separable_fit_is_near_one():
    # W = c·I on data labelled by its arg-max: the loss only falls by scaling W up, so the
    # negative gradient points (almost) along W
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(500, 3, generator=gen, dtype=torch.float64)
    model = nn.Linear(3, 3, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.eye(3, dtype=torch.float64) * 2)
    y = x.argmax(dim=1)
    got = gradient_weight_cosine(model, x, y, torch.float64)
    assert got == pytest.approx(_cosine_oracle(model.weight.detach().numpy(), x.numpy(),
                                               y.numpy()), rel=1e-12)
    assert got > 0.5


# --- evaluate -----------------------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False])
def test_evaluate_keys_values_and_training_mode(training):
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5))  # dropout: eval mode matters
    x, y = torch.randn(30, 4, generator=gen), torch.randint(0, 3, (30,), generator=gen)
    xt, yt = torch.randn(20, 4, generator=gen), torch.randint(0, 3, (20,), generator=gen)
    model.train(training)
    splits = {"train": (x, y),
              "test": DataLoader(TensorDataset(xt, yt), batch_size=6, shuffle=False)}
    measures = [Accuracy(), Loss(), ECE(), GeneralizationGap(), GradientWeightAlignment()]
    metrics = evaluate(model, splits, measures, batch_size=7)
    assert model.training is training
    assert set(metrics) == {"train/accuracy", "train/loss", "train/ece", "train/nlm_alignment",
                            "test/accuracy", "test/loss", "test/ece", "gap/accuracy",
                            "gap/loss"}

    weight = model[0].weight.detach().double().numpy()
    bias = model[0].bias.detach().double().numpy()
    expected = {}
    for name, (inputs, targets) in {"train": (x, y), "test": (xt, yt)}.items():
        logits = inputs.double().numpy() @ weight.T + bias
        t = targets.numpy()
        expected[f"{name}/accuracy"] = (logits.argmax(1) == t).mean()
        expected[f"{name}/loss"] = -_log_softmax(logits)[np.arange(len(t)), t].mean()
        expected[f"{name}/ece"] = _ece_oracle(np.exp(_log_softmax(logits)), t, 10)
    expected["gap/accuracy"] = expected["train/accuracy"] - expected["test/accuracy"]
    expected["gap/loss"] = expected["test/loss"] - expected["train/loss"]
    # the bias is a weight column on a constant input
    expected["train/nlm_alignment"] = _cosine_oracle(
        np.hstack([weight, bias[:, None]]), np.hstack([x.double().numpy(), np.ones((30, 1))]),
        y.numpy())
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert expected["gap/accuracy"] != 0  # the gap is not trivially zero here


def test_generalization_gap_through_evaluate():
    # identity "model" on hand logits: train 4/4 right, test 1/4 right
    train = (torch.tensor(LOGITS), torch.tensor([0, 1, 0, 2]))
    test = (torch.tensor(LOGITS), torch.tensor([0, 0, 1, 1]))
    metrics = evaluate(nn.Identity(), {"train": train, "test": test},
                       [Accuracy(), GeneralizationGap()])
    assert metrics == {"train/accuracy": 1.0, "test/accuracy": 0.25, "gap/accuracy": 0.75}
