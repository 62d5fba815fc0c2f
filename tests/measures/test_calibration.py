"""Calibration suite and group metrics against hand-computed values."""

import math

import pytest
import torch

from heldout.measures import (
    Calibration,
    GroupAccuracy,
    brier_score,
    evaluate,
    group_metrics,
    maximum_calibration_error,
    reliability_diagram,
    risk_coverage,
)
from heldout.tasks.base import Split


def _probs(confidences, predictions, classes=2):
    """Rows whose arg-max is ``predictions`` with that confidence; the rest spread evenly."""
    rows = []
    for c, p in zip(confidences, predictions, strict=True):
        row = [(1 - c) / (classes - 1)] * classes
        row[p] = c
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64)


def test_mce_and_reliability_diagram_by_hand():
    # bin (0.5, 0.6]: two at 0.55, one right -> acc 0.5, gap 0.05
    # bin (0.8, 0.9]: two at 0.9, both wrong -> acc 0.0, gap 0.9
    probs = _probs([0.55, 0.55, 0.9, 0.9], [0, 0, 0, 0])
    targets = torch.tensor([0, 1, 1, 1])
    assert maximum_calibration_error(probs, targets) == pytest.approx(0.9)
    diagram = reliability_diagram(probs, targets)
    assert diagram["count"][5] == 2 and diagram["count"][8] == 2 and sum(diagram["count"]) == 4
    assert diagram["accuracy"][5] == 0.5 and diagram["confidence"][8] == pytest.approx(0.9)
    assert math.isnan(diagram["accuracy"][0])
    assert diagram["lower"][5] == 0.5 and diagram["upper"][5] == 0.6


def test_brier_score_by_hand():
    probs = torch.tensor([[0.7, 0.3], [0.2, 0.8]], dtype=torch.float64)
    # (0.3² + 0.3²) for the right row, (0.2² + 0.2²)... second row has target 0: (0.8² + 0.8²)
    assert brier_score(probs, torch.tensor([0, 0])) == pytest.approx((0.18 + 1.28) / 2)


def test_risk_coverage_by_hand():
    probs = _probs([0.9, 0.8, 0.7, 0.6], [0, 0, 0, 0])
    targets = torch.tensor([0, 1, 0, 1])  # errors at ranks 2 and 4
    out = risk_coverage(probs, targets)
    assert out["aurc"] == pytest.approx((0 + 1 / 2 + 1 / 3 + 2 / 4) / 4)
    assert out["eaurc"] == pytest.approx((0 + 1 / 2 + 1 / 3 + 2 / 4) / 4 - (1 / 3 + 2 / 4) / 4)
    perfect = risk_coverage(probs, torch.tensor([0, 0, 1, 1]))  # errors already last
    assert perfect["eaurc"] == pytest.approx(0.0)


def test_calibration_measure_on_a_split():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])

    class Fixed(torch.nn.Module):
        def forward(self, x):
            return logits[x.long().squeeze(-1)]

    metrics = evaluate(Fixed(), {"test": (torch.arange(3.0).unsqueeze(-1),
                                          torch.tensor([0, 0, 0]))}, [Calibration()])
    probs = torch.softmax(logits.double(), -1)
    nll = -torch.log(probs[torch.arange(3), 0]).mean()
    assert metrics["test/nll"] == pytest.approx(float(nll))
    assert metrics["test/brier"] == pytest.approx(brier_score(probs, torch.tensor([0, 0, 0])))
    assert set(metrics) == {f"test/{k}" for k in ("ece", "mce", "brier", "nll", "aurc",
                                                  "eaurc")}


def test_group_metrics_by_hand():
    logits = torch.tensor([[1.0, 0], [1, 0], [1, 0], [0, 1], [0, 1], [1, 0]])
    targets = torch.tensor([0, 0, 1, 1, 1, 1])
    groups = torch.tensor([0, 0, 0, 2, 2, 2])  # group 0: 2/3 right; group 2: 2/3 right
    m = group_metrics(logits, targets, groups)
    assert m["group0_accuracy"] == pytest.approx(2 / 3) and m["group2_accuracy"] == pytest.approx(
        2 / 3)
    groups = torch.tensor([0, 0, 1, 1, 1, 1])  # group 0: 2/2; group 1: 2/4
    m = group_metrics(logits, targets, groups)
    assert m["worst_group_accuracy"] == 0.5 and m["group_disparity"] == 0.5
    assert m["mean_group_accuracy"] == 0.75


def test_group_measure_uses_split_groups_and_skips_splits_without():
    model = torch.nn.Linear(2, 2)
    x, y = torch.randn(8, 2), torch.randint(0, 2, (8,))
    with_groups = Split(x, y, groups=torch.tensor([0, 1] * 4))
    metrics = evaluate(model, {"test": with_groups, "train": Split(x, y)}, [GroupAccuracy()])
    assert "test/worst_group_accuracy" in metrics
    assert not any(k.startswith("train/") for k in metrics)
    with pytest.raises(ValueError, match="groups has 3 rows"):
        Split(x, y, groups=torch.tensor([0, 1, 0]))
