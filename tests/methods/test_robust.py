"""Robust-mean gradients: the estimators against NumPy on hand-made per-example gradients, the
technique inside the heldout Trainer against a hand loop on a linear model, and its tiny heldout
runs (exact resume, composition with SAM on a BatchNorm model)."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from heldout.config import parse_overrides
from heldout.engine.trainer import Trainer
from heldout.methods.robust import (
    RobustMeanGradients,
    median_of_means,
    running_median,
    winsorized_mean,
)
from heldout.registry import TECHNIQUES
from heldout.run.execute import execute
from heldout.store import Store
from tests.conftest import assert_resume_is_exact, tiny_config

# ----------------------------------------------------------------------------- estimators


def test_winsorized_mean_hand_case():
    """Five examples, c = 25 %: ranks round(4·0.25) = 1 and round(4·0.75) = 3 → clamp to
    [1, 3] in the first coordinate and to [−2, 5] in the second."""
    g = torch.tensor([[0.0, 5.0], [1.0, -2.0], [2.0, 9.0], [3.0, 0.0], [100.0, -7.0]])
    expected = torch.tensor([(1 + 1 + 2 + 3 + 3) / 5, (5 - 2 + 5 + 0 - 2) / 5])
    torch.testing.assert_close(winsorized_mean(g, 0.25), expected)
    torch.testing.assert_close(winsorized_mean(g, 0.0), g.mean(0))


@pytest.mark.parametrize("m", [2, 6, 7, 11, 21, 100])
@pytest.mark.parametrize("c", [0.05, 0.1, 0.15, 0.25, 0.5])
def test_winsorized_mean_matches_numpy_nearest_percentiles(m, c):
    """The official code: np.percentile(t, [c, 100 − c], method='nearest'), clip, sum of the
    per-example terms of the mean loss (= mean of the clipped per-example gradients)."""
    rng = np.random.default_rng(m)
    g = rng.standard_normal((m, 3, 4))
    g[0] *= 50  # an outlier example
    low, high = np.percentile(g, [100 * c, 100 - 100 * c], axis=0, method="nearest")
    expected = np.clip(g, low, high).mean(axis=0)
    torch.testing.assert_close(winsorized_mean(torch.from_numpy(g), c),
                               torch.from_numpy(expected))


@pytest.mark.parametrize(("m", "groups"), [(6, 3), (10, 3), (7, 4), (9, 1), (12, 6)])
def test_median_of_means_matches_numpy(m, groups):
    rng = np.random.default_rng(groups)
    g = rng.standard_normal((m, 5))
    means = np.stack([chunk.mean(axis=0) for chunk in np.array_split(g, groups)])
    torch.testing.assert_close(median_of_means(torch.from_numpy(g), groups),
                               torch.from_numpy(np.median(means, axis=0)))


def test_median_of_three_is_sum_minus_min_minus_max_and_resists_an_outlier():
    g = torch.tensor([[1.0, 2.0], [3.0, -1.0], [-100.0, 50.0]])
    torch.testing.assert_close(running_median(list(g)), g.sum(0) - g.min(0).values
                               - g.max(0).values)
    torch.testing.assert_close(median_of_means(g, 3), torch.tensor([1.0, 2.0]))


def test_estimators_reject_bad_arguments():
    with pytest.raises(ValueError, match="clip_fraction"):
        winsorized_mean(torch.zeros(3, 2), 0.6)
    with pytest.raises(ValueError, match="groups"):
        median_of_means(torch.zeros(3, 2), 4)
    with pytest.raises(ValueError, match="unknown estimator"):
        RobustMeanGradients(estimator="trimmed")


# ----------------------------------------------------------------------------- in the Trainer


def _softmax_regression_grads(w, b, x, y):
    """Per-example gradients of CE(W x + b, y) for a linear model, by the closed form
    (softmax − one-hot) xᵀ; rows: examples, columns: W then b, flattened."""
    z = x @ w.T + b
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    return np.concatenate([(p[:, :, None] * x[:, None, :]).reshape(len(y), -1), p], axis=1)


def _hand_loop(w, b, x, y, lr, steps, estimator):
    history = []
    for _ in range(steps):
        g = _softmax_regression_grads(w, b, x, y)
        if estimator == "winsorized":
            low, high = np.percentile(g, [20, 80], axis=0, method="nearest")
            robust = np.clip(g, low, high).mean(axis=0)
        elif estimator == "median_of_means":
            robust = np.median(np.stack([c.mean(0) for c in np.array_split(g, 3)]), axis=0)
        else:  # RM3 (official rm3.py): no update until 3 batch gradients, then their median
            history.append(g.mean(axis=0))
            if len(history) < 3:
                continue
            robust = np.median(np.stack(history[-3:]), axis=0)
        w = w - lr * robust[: w.size].reshape(w.shape)
        b = b - lr * robust[w.size :]
    return w, b


@pytest.mark.parametrize("estimator", ["winsorized", "median_of_means", "running_median"])
def test_technique_in_trainer_equals_hand_loop_on_linear_model(estimator):
    torch.manual_seed(0)
    x = torch.randn(24, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (24,))
    x[0] *= 30  # an outlier example that the robust means damp
    model = nn.Linear(5, 3).double()
    w0, b0 = model.weight.detach().numpy().copy(), model.bias.detach().numpy().copy()
    lr, steps = 0.3, 4
    technique = RobustMeanGradients(estimator=estimator, clip_fraction=0.2)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=lr), (x, y),
                      max_steps=steps, techniques=[technique], measures=[], eval_every=100,
                      loss_fn=lambda logits, targets: F.cross_entropy(logits, targets))
    trainer.fit()
    w, b = _hand_loop(w0, b0, x.numpy(), y.numpy(), lr, steps, estimator)
    np.testing.assert_allclose(model.weight.detach().numpy(), w, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(model.bias.detach().numpy(), b, rtol=1e-10, atol=1e-12)
    plain = nn.Linear(5, 3).double()
    plain.load_state_dict({"weight": torch.from_numpy(w0), "bias": torch.from_numpy(b0)})
    Trainer(plain, torch.optim.SGD(plain.parameters(), lr=lr), (x, y), max_steps=steps,
            measures=[], eval_every=100).fit()
    assert not torch.allclose(plain.weight, model.weight)  # the technique did something


def test_running_median_state_round_trips_and_resumes():
    torch.manual_seed(1)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    model = nn.Linear(4, 2)

    def trainer(m, t, steps):
        return Trainer(m, torch.optim.SGD(m.parameters(), lr=0.5), (x, y), max_steps=steps,
                       batch_size=4, techniques=[t], measures=[], eval_every=100)

    straight_model = copy.deepcopy(model)
    trainer(straight_model, RobustMeanGradients(estimator="running_median"), 6).fit()
    first = trainer(model, RobustMeanGradients(estimator="running_median"), 3)
    first.fit()
    saved = copy.deepcopy(first.state_dict())
    assert len(saved["techniques"]["robust_mean_gradients"]["history"]) == 2
    resumed_model = nn.Linear(4, 2)
    second = trainer(resumed_model, RobustMeanGradients(estimator="running_median"), 6)
    second.load_state_dict(saved)
    second.fit()
    for a, b in zip(resumed_model.parameters(), straight_model.parameters(), strict=True):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- heldout runs


def test_registered_defaults():
    entry = TECHNIQUES.get("robust_mean_gradients")
    assert entry.papers == (10,)
    assert entry.cls.touches == frozenset({"gradients"})
    assert entry.defaults() == {"estimator": "winsorized", "clip_fraction": 0.1, "groups": 3,
                                "window": 3, "pad_window": False, "loss": "cross_entropy",
                                "chunk_size": 64}


@pytest.mark.parametrize("estimator", ["winsorized", "running_median"])
def test_technique_runs_in_heldout_and_resumes_exactly(estimator, tmp_path, monkeypatch):
    cfg = tiny_config("model.batch_norm=true", "batch_size=16",
                      "techniques=robust_mean_gradients")
    cfg = parse_overrides(cfg, [f"techniques.robust_mean_gradients.estimator={estimator}"])
    history = assert_resume_is_exact(cfg, tmp_path, monkeypatch)
    assert all(math.isfinite(v) for _, _, v in history)


def test_composes_with_sam_on_a_batchnorm_model(tmp_path):
    """SAM's second pass switches BatchNorm tracking off; the per-example gradients still read
    the running statistics (eval mode) and the run finishes."""
    cfg = tiny_config("model.batch_norm=true", "batch_size=16", "steps=4",
                      "techniques=sam,robust_mean_gradients")
    result = execute(cfg, Store(tmp_path / "s"))
    assert result.status == "done" and all(math.isfinite(v) for v in result.metrics.values())
