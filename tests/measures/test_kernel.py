"""Empirical NTK, kernel-target alignment and kernel distance (#11) against hand-computed
cases and a Jacobian computed row by row with autograd (the oracle)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from heldout.measures import evaluate
from heldout.measures.kernel import (
    NTKAlignment,
    empirical_ntk,
    kernel_alignment,
    kernel_distance,
    target_matrix,
)


def _mlp(batch_norm: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(5, 8)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(8))
    layers += [nn.Tanh(), nn.Linear(8, 3)]
    return nn.Sequential(*layers)


def _data(n: int = 12, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)


def _ntk_oracle(model, x):
    """J J^T with the Jacobian built one output of one example at a time (eval mode)."""
    model.eval()
    params = list(model.parameters())
    rows = []
    for i in range(len(x)):
        out = model(x[i : i + 1])[0]
        rows.append(torch.stack([
            torch.cat([g.reshape(-1) for g in torch.autograd.grad(out[k], params,
                                                                   retain_graph=True)])
            for k in range(len(out))
        ]))
    jac = torch.stack(rows).double()  # (n, C, P)
    return torch.einsum("ikp,jkp->ij", jac, jac)


def test_ntk_of_a_linear_model_by_hand():
    # f(x) = Wx, W in R^{C x d}: ∂f_k/∂W = e_k x^T, so K(x, x') = Σ_k x·x' = C (x·x')
    torch.manual_seed(0)
    x = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, -1.0], [3.0, 0.0, 1.0]])
    model = nn.Linear(3, 4, bias=False)
    expected = 4 * (x @ x.T).double()  # [[5, 2, 3], [2, 2, -1], [3, -1, 10]] * 4
    assert torch.equal(expected[0], torch.tensor([20.0, 8.0, 12.0], dtype=torch.float64))
    torch.testing.assert_close(empirical_ntk(model, x, chunk_size=2), expected)
    # with a bias, each output adds ∂f_k/∂b_k = 1: K = C (x·x' + 1)
    biased = nn.Linear(3, 4)
    torch.testing.assert_close(empirical_ntk(biased, x), 4 * (x @ x.T + 1).double())


@pytest.mark.parametrize("batch_norm", [False, True])
def test_ntk_equals_a_jacobian_oracle(batch_norm):
    model, (x, _) = _mlp(batch_norm), _data()
    if batch_norm:
        with torch.no_grad():
            model.train()
            model(torch.randn(64, 5) * 3 + 1)  # non-trivial running statistics
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    got = empirical_ntk(model, x, chunk_size=5)
    assert model.training  # mode restored, buffers untouched
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])
    torch.testing.assert_close(got, _ntk_oracle(model, x), rtol=1e-5, atol=1e-6)
    assert torch.equal(got, got.T)


def test_alignment_by_hand_on_a_3x3_case():
    kernel = torch.tensor([[2.0, 1.0, 0.0], [1.0, 2.0, 1.0], [0.0, 1.0, 2.0]])
    y = torch.tensor([1.0, 1.0, -1.0])
    # uncentered: y^T K y = [1, 1, -1]·[3, 2, -1] = 6; ‖K‖_F = sqrt(16) = 4; ‖yy^T‖_F = 3
    assert kernel_alignment(kernel, y, centered=False) == pytest.approx(6 / 12, rel=1e-15)
    # centered: HKH = [[10, -2, -8], [-2, 4, -2], [-8, -2, 10]] / 9, ‖HKH‖_F = sqrt(360)/9;
    # Hy = [2, 2, -4]/3, (Hy)^T HKH (Hy) = 360/81, ‖Hy‖² = 24/9
    # A = (360/81) / (sqrt(360)/9 * 24/9) = sqrt(360)/24 = sqrt(10)/4
    assert kernel_alignment(kernel, y) == pytest.approx(math.sqrt(10) / 4, rel=1e-14)
    # a column vector and a (n, 1) matrix are the same targets
    assert kernel_alignment(kernel, y[:, None]) == kernel_alignment(kernel, y)


def test_alignment_of_one_hot_targets_and_of_the_ideal_kernel():
    y = torch.tensor([0, 2, 1, 0, 2])
    onehot = target_matrix(y, 4)
    assert onehot.shape == (5, 4) and torch.equal(onehot.argmax(1), y)
    ideal = onehot @ onehot.T  # K = YY^T: perfectly aligned
    assert kernel_alignment(ideal, onehot) == pytest.approx(1.0, rel=1e-14)
    assert kernel_alignment(ideal, onehot, centered=False) == pytest.approx(1.0, rel=1e-14)
    # a constant kernel: uncentered it is partly "aligned", centered it is zero (NaN)
    constant = torch.ones(5, 5)
    assert 0 < kernel_alignment(constant, onehot, centered=False) < 1
    assert math.isnan(kernel_alignment(constant, onehot))
    regression = target_matrix(torch.tensor([0.5, -1.0, 2.0]))
    assert regression.shape == (3, 1) and regression.dtype == torch.float64


def test_kernel_distance_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    assert kernel_distance(a, 5 * a) == 0.0  # only the scale changed
    # <a, b> = 2, ‖a‖ = sqrt(2), ‖b‖ = 2: 1 - 2 / (2 sqrt 2) = 1 - 1/sqrt 2
    assert kernel_distance(a, b) == pytest.approx(1 - 1 / math.sqrt(2), rel=1e-15)
    with pytest.raises(ValueError, match="shape"):
        kernel_distance(a, torch.ones(3, 3))


def test_adapter_distance_is_zero_at_init_and_grows_after_training():
    model, (x, y) = _mlp(batch_norm=True), _data(n=40)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    measure = NTKAlignment(sample_size=16, chunk_size=8)
    at_init = evaluate(model, {"train": (x, y)}, [measure], initial_state=init)
    assert at_init["train/ntk_distance"] == 0.0
    assert at_init["train/ntk_alignment"] == at_init["train/ntk_alignment_init"]
    assert 0 <= at_init["train/ntk_alignment"] <= 1

    opt = torch.optim.SGD(model.parameters(), lr=2.0)
    model.train()
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.grad.clone() for p in model.parameters()]
    later = evaluate(model, {"train": (x, y), "test": _data(seed=3)}, [measure],
                     initial_state=init)
    assert set(later) == {"train/ntk_alignment", "train/ntk_alignment_init",
                          "train/ntk_distance"}  # "test" is not in splits
    assert later["train/ntk_distance"] > 1e-3
    assert later["train/ntk_alignment_init"] == pytest.approx(
        at_init["train/ntk_alignment"], rel=1e-12)
    assert model.training
    for k, v in model.state_dict().items():  # the measure changed nothing
        assert torch.equal(v, state[k])
    for p, g in zip(model.parameters(), grads, strict=True):
        assert torch.equal(p.grad, g)


def test_adapter_without_initial_state_reports_alignment_only():
    model, (x, y) = _mlp(), _data()
    out = evaluate(model, {"train": (x, y)}, [NTKAlignment()])
    assert list(out) == ["train/ntk_alignment"]
    expected = kernel_alignment(empirical_ntk(model, x), target_matrix(y, 3))
    assert out["train/ntk_alignment"] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("bad", [{"sample_size": 1}, {"chunk_size": 0}])
def test_adapter_validates_its_fields(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        NTKAlignment(**bad)
