"""Oracle tests of the Occam / PAC-Bayes bounds and the tightness report
(heldout.measures.bounds): numbers worked out by hand and the kl-inverse against a brute-force
grid."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from heldout.measures import evaluate
from heldout.measures.bounds import (
    OccamBound,
    binary_kl,
    kl_inverse,
    log_prior_from_bits,
    mcallester_bound,
    occam_bound,
    occam_kl_bound,
    pac_bayes_kl_bound,
    sequence_log_prior,
    tightness_report,
    uniform_sequence_log_prior,
)


def test_binary_kl_by_hand():
    # kl(0.1 ‖ 0.2) = 0.1 ln 0.5 + 0.9 ln(0.9/0.8)
    assert binary_kl(0.1, 0.2) == pytest.approx(0.036690014034750584)
    assert binary_kl(0.3, 0.3) == 0.0
    assert binary_kl(0.0, 0.5) == pytest.approx(math.log(2))
    assert binary_kl(0.5, 1.0) == math.inf
    assert binary_kl(1.0, 1.0) == 0.0


@pytest.mark.parametrize("q", [0.0, 0.05, 0.3, 0.9])
@pytest.mark.parametrize("budget", [0.001, 0.1, 1.0, 5.0])
def test_kl_inverse_against_a_brute_force_grid(q, budget):
    grid = np.linspace(q, 1.0, 200_001)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(q > 0, q * np.log(q / grid), 0.0) + np.where(
            q < 1, (1 - q) * np.log((1 - q) / (1 - grid)), 0.0)
    kl = np.nan_to_num(kl, nan=np.inf)
    brute = grid[kl <= budget].max()
    assert kl_inverse(q, budget) == pytest.approx(brute, abs=1e-5)
    assert binary_kl(q, kl_inverse(q, budget)) <= budget + 1e-12


def test_occam_bound_by_hand():
    # êrr = 0.05, m = 1000, a 20-bit code, δ = 0.05: 0.05 + √((20 ln 2 + ln 20)/2000)
    log_prior = log_prior_from_bits(20)
    assert log_prior == pytest.approx(-20 * math.log(2))
    assert occam_bound(0.05, 1000, log_prior, 0.05) == pytest.approx(0.14181142599032243)
    # McAllester: 0.05 + √((20 ln 2 + ln 20 + ln 1000 + 2)/1999)
    assert mcallester_bound(0.05, 1000, -log_prior, 0.05) == pytest.approx(0.16353264029376555)


def test_kl_forms_are_tighter_and_solve_their_equations():
    log_prior = log_prior_from_bits(20)
    hoeffding = occam_bound(0.05, 1000, log_prior, 0.05)
    kl_form = occam_kl_bound(0.05, 1000, log_prior, 0.05)
    assert 0.05 < kl_form < hoeffding  # Pinsker: never looser; much tighter at small error
    budget = (20 * math.log(2) + math.log(20)) / 1000
    assert binary_kl(0.05, kl_form) == pytest.approx(budget, rel=1e-6)
    pb = pac_bayes_kl_bound(0.05, 1000, 20 * math.log(2), 0.05)
    assert binary_kl(0.05, pb) == pytest.approx(
        (20 * math.log(2) + math.log(2 * math.sqrt(1000) / 0.05)) / 1000, rel=1e-6)
    assert occam_kl_bound(0.0, 10, -1000.0) == pytest.approx(1.0)  # vacuous: at most 1


def test_priors_of_sequences():
    assert uniform_sequence_log_prior(77, 49408) == pytest.approx(-77 * math.log(49408))
    assert sequence_log_prior([-1.5, -0.25, -2.0]) == pytest.approx(-3.75)
    with pytest.raises(ValueError):
        sequence_log_prior([0.5])


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="empirical_error"):
        occam_bound(1.5, 10, -1.0)
    with pytest.raises(ValueError, match="delta"):
        occam_bound(0.1, 10, -1.0, delta=0.0)
    with pytest.raises(ValueError, match="log_prior"):
        occam_bound(0.1, 10, 0.5)


def test_tightness_report_by_hand():
    report = tightness_report([0.3, 0.5, 0.2], [0.1, 0.2, 0.25])
    assert report["gaps"] == pytest.approx([0.2, 0.3, -0.05])
    assert report["mean_gap"] == pytest.approx(0.15)
    assert report["max_gap"] == pytest.approx(0.3)
    assert report["violations"] == 1
    assert report["mean_ratio"] == pytest.approx((3 + 2.5 + 0.8) / 3)
    # pairs: (0,1) concordant, (0,2) and (1,2) discordant -> τ = −1/3
    assert report["kendall_tau"] == pytest.approx(-1 / 3)
    assert report["n_runs"] == 3


class _Fixed(nn.Module):
    """Logits = the input (so the error is set by the data)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def test_occam_bound_measure_through_evaluate():
    # 8 training examples, 2 misclassified: êrr = 0.25; 10-bit code; δ = 0.1
    x = torch.eye(3)[[0, 1, 2, 0, 1, 2, 0, 1]]
    y = torch.tensor([0, 1, 2, 0, 1, 2, 1, 0])
    measure = OccamBound(description_length_bits=10, delta=0.1)
    metrics = evaluate(_Fixed(), {"train": (x, y), "test": (x, y)}, [measure])
    assert metrics["train/occam_bound"] == pytest.approx(1.0096897762653474)
    assert metrics["train/description_length"] == pytest.approx(10.0)
    assert 0.25 < metrics["train/occam_kl_bound"] < 1.0
    assert "test/occam_bound" not in metrics
    # the default code: 32 bits per parameter (3 parameters)
    default = evaluate(_Fixed(), {"train": (x, y)}, [OccamBound()])
    assert default["train/description_length"] == pytest.approx(96.0)
    prior = evaluate(_Fixed(), {"train": (x, y)}, [OccamBound(log_prior=-10 * math.log(2),
                                                              delta=0.1)])
    assert prior["train/occam_bound"] == pytest.approx(metrics["train/occam_bound"])


def test_occam_bound_validation_names_the_field():
    with pytest.raises(ValueError, match="not both"):
        OccamBound(description_length_bits=3.0, log_prior=-1.0)
    with pytest.raises(ValueError, match="log_prior"):
        OccamBound(log_prior=1.0)
    with pytest.raises(ValueError, match="delta"):
        OccamBound(delta=1.0)
