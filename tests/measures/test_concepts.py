"""Oracle tests of the concept-frequency fit (#16) and the long-tail split."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from heldout.measures import evaluate
from heldout.measures.concepts import (
    ConceptFrequency,
    LogLinearFit,
    concept_accuracy,
    log_linear_fit,
    long_tail_concepts,
    long_tail_split,
)
from heldout.tasks.base import Split


def test_fit_recovers_a_planted_slope_exactly():
    freq = [0, 1, 5, 20, 100, 1000, 25000]  # 0 is clipped to 1: ln 1 = 0
    acc = [0.1 + 0.05 * math.log(max(f, 1)) for f in freq]
    fit = log_linear_fit(freq, acc)
    assert fit.slope == pytest.approx(0.05, abs=1e-12)
    assert fit.intercept == pytest.approx(0.1, abs=1e-12)
    assert fit.r_squared == pytest.approx(1.0, abs=1e-12)
    assert fit.slope_stderr == pytest.approx(0.0, abs=1e-9)
    assert fit.pearson == pytest.approx(1.0)
    assert fit.spearman == pytest.approx(1.0)
    assert fit.n == 7


def test_fit_matches_numpy_least_squares_on_noisy_data():
    rng = np.random.default_rng(0)
    freq = rng.integers(1, 10**5, size=40)
    acc = 0.2 + 0.04 * np.log(freq) + rng.normal(0, 0.05, size=40)
    fit = log_linear_fit(torch.tensor(freq), torch.tensor(acc))
    x = np.log(freq)
    design = np.stack([np.ones_like(x), x], axis=1)
    coef, sse, *_ = np.linalg.lstsq(design, acc, rcond=None)
    cov = sse[0] / (40 - 2) * np.linalg.inv(design.T @ design)
    assert (fit.intercept, fit.slope) == pytest.approx(tuple(coef), rel=1e-10)
    assert fit.slope_stderr == pytest.approx(math.sqrt(cov[1, 1]), rel=1e-10)
    assert fit.r_squared == pytest.approx(np.corrcoef(x, acc)[0, 1] ** 2, rel=1e-10)
    stats = pytest.importorskip("scipy.stats")
    assert fit.spearman == pytest.approx(stats.spearmanr(x, acc).statistic, rel=1e-10)


def test_fit_skips_missing_concepts_and_rejects_degenerate_input():
    fit = log_linear_fit([1, 10, 100, 1000], [0.0, float("nan"), 1.0, 1.5])
    assert fit.n == 3
    assert isinstance(fit, LogLinearFit)
    with pytest.raises(ValueError, match="equal"):
        log_linear_fit([0, 1, 1], [0.1, 0.2, 0.3])  # all clip to 1
    with pytest.raises(ValueError, match="at least 3"):
        log_linear_fit([1, 10], [0.1, 0.2])
    with pytest.raises(ValueError, match="accuracies"):
        log_linear_fit([1, 10, 100], [0.1, 0.2])
    flat = log_linear_fit([1, 10, 100], [0.5, 0.5, 0.5])
    assert (flat.slope, flat.r_squared, flat.pearson) == (0.0, 1.0, 0.0)


def test_concept_accuracy_by_hand():
    logits = torch.eye(3)[[0, 1, 1, 2, 0]]  # predictions 0 1 1 2 0
    targets = torch.tensor([0, 1, 2, 2, 0])
    acc = concept_accuracy(logits, targets, 4)
    assert acc[:3].tolist() == [1.0, 1.0, 0.5] and math.isnan(acc[3])


def test_long_tail_split_keeps_the_rarest_concepts():
    freq = torch.tensor([500.0, 3, 40, 3, 9000, 1])
    assert long_tail_concepts(freq, 0.5).tolist() == [5, 1, 3]  # ties in index order
    assert long_tail_concepts(freq, 0.1).tolist() == [5]
    y = torch.tensor([0, 1, 2, 3, 4, 5, 1, 0])
    clean = y.flip(0)
    split = Split(torch.arange(8.0)[:, None], y, clean, torch.arange(8) % 2)
    tail = long_tail_split(split, freq, 0.5)
    assert tail.y.tolist() == [1, 3, 5, 1]
    assert tail.x[:, 0].tolist() == [1.0, 3.0, 5.0, 6.0]
    assert tail.clean_y.tolist() == clean[[1, 3, 5, 6]].tolist()
    assert tail.groups.tolist() == [1, 1, 1, 0]
    # concepts other than the labels
    by_concept = long_tail_split(split, [1.0, 50.0], 0.5, concepts=torch.arange(8) % 2)
    assert by_concept.x[:, 0].tolist() == [0.0, 2.0, 4.0, 6.0]
    with pytest.raises(ValueError, match="fraction"):
        long_tail_concepts(freq, 0.0)


def test_measure_fits_test_accuracy_on_train_class_counts():
    # model = identity on one-hot "logits"; train counts per class: 1, 4, 16, 64 (class 4: 0)
    train_y = torch.cat([torch.full((c,), k) for k, c in enumerate([1, 4, 16, 64])])
    train = (torch.eye(5)[train_y], train_y)
    # test: per-class accuracy 0, 1/2, 1/2, 1 for classes 0..3, class 4 right once
    test_y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4])
    predictions = torch.tensor([1, 1, 1, 0, 2, 0, 3, 3, 4])
    test = (torch.eye(5)[predictions], test_y)
    out = evaluate(nn.Identity(), {"train": train, "val": train, "test": test},
                   [ConceptFrequency()])
    x = np.log([1, 4, 16, 64, 1])  # class 4 has count 0, clipped to 1
    y = np.array([0.0, 0.5, 0.5, 1.0, 1.0])
    slope, _ = np.polyfit(x, y, 1)
    assert set(out) == {"test/concept_slope", "test/concept_slope_stderr", "test/concept_r2",
                        "test/concept_spearman"}
    assert out["test/concept_slope"] == pytest.approx(slope, rel=1e-10)
    assert out["test/concept_r2"] == pytest.approx(np.corrcoef(x, y)[0, 1] ** 2, rel=1e-10)
    with pytest.raises(RuntimeError, match="'train' split first"):
        evaluate(nn.Identity(), {"test": test}, [ConceptFrequency()])
    # all training counts equal: the fit is undefined and nothing is reported
    balanced = torch.arange(5).repeat(3)
    assert evaluate(nn.Identity(), {"train": (torch.eye(5)[balanced], balanced), "test": test},
                    [ConceptFrequency()]) == {}
