"""Claim of "Even your Teacher Needs Guidance: Ground-Truth Targets Dampen Regularization Imposed
by Self-Distillation" (Borup & Andersen, 2021; arXiv:2102.13088; catalog #73): in iterated
self-distillation of kernel ridge regression, the closed-form optimal weighting of ground truth
and teacher gives a lower excess risk than using the ground truth alone (ξ = 1, plain KRR) or
the teacher alone (ξ = 0); the closed-form risk is checked against simulation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from heldout.claims.base import Claim, Verdict, record, seed_vote
from heldout.measures.excess_risk import spectral_excess_risk
from heldout.methods.kernel_distill import (
    kernel_eigen,
    optimal_weights,
    rbf_kernel,
    self_distillation_filters,
    self_distillation_fits,
)
from heldout.registry import CLAIMS
from heldout.store.sqlite import Store

__all__ = ["KernelSelfDistillationWeighting", "sine_design"]


def sine_design(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed design for the claim: ``n`` inputs drawn uniformly on [0, 1] (sorted) by
    ``seed``, and the smooth target ``f*(x) = sin(2πx)`` at them."""
    x = np.sort(np.random.default_rng(seed).uniform(0.0, 1.0, n))
    return x, np.sin(2.0 * np.pi * x)


POLICIES = ("optimal", "ground_truth", "teacher")  # ξ*, ξ = 1, ξ = 0 at every round


@CLAIMS.register(
    "kernel-self-distillation-weighting",
    summary="In KRR self-distillation the closed-form optimal ground-truth weight beats both "
    "the ground-truth-only and the teacher-only extremes; the closed-form risk matches "
    "simulation.",
    papers=(73,),
)
@dataclass
class KernelSelfDistillationWeighting(Claim):
    """Protocol: per seed, a fixed design of ``n`` points uniform on [0, 1] with
    ``f*(x) = sin(2πx)`` (:func:`sine_design`), labels ``y = f* + ε``, ``ε ~ N(0, σ²)`` with
    ``σ = noise_std``, and an RBF kernel of bandwidth ``bandwidth``. The ridge of every round is
    λ = ``regularization_factor`` × λ_tuned, where λ_tuned minimizes plain KRR's closed-form
    excess risk on the design (a log grid from 1e-4 to 1e2, 61 points): a deliberately
    under-regularized first fit, the regime self-distillation is for. Three weightings run for
    ``rounds`` rounds (:mod:`heldout.methods.kernel_distill`): ``optimal`` (ξ_t* of each round
    in closed form, given the rounds before), ``ground_truth`` (ξ = 1: plain KRR at every
    round) and ``teacher`` (ξ = 0: pure self-distillation, which over-regularizes as the rounds
    go on). Each round's excess risk ``E (1/n)‖ŷ_t − f*‖²`` is computed in closed form
    (:func:`~heldout.measures.excess_risk.spectral_excess_risk`) and estimated by simulation:
    ``draws`` noise draws (seeded by the seed), each round fitted by direct linear solves; the
    standard error is the draws' standard deviation / √draws.

    Rule: a seed PASSES when both
    (a) at the last round the closed-form risk of ``optimal`` is below the smaller of the
    other two by at least ``margin`` (relative: ``R_opt <= (1 − margin) · min(R_gt,
    R_teacher)``), and
    (b) for every weighting, the simulated risk at the last round is within ``tolerance_se``
    standard errors of the closed form (three checks; every round is reported).
    :func:`~heldout.claims.base.seed_vote` over the seeds (3 at full scale). ``scale="ci"``
    uses ``ci_n`` points and ``ci_draws`` draws: a protocol check, not evidence.

    Changes made before any full run, after ci-scale checks (seed 0, n = 30) of earlier
    settings, recorded here: (1) a fixed λ = 0.05 with 4 rounds and (a) required at every
    round gave ξ* = 0 at every round (that λ is 20× below λ_tuned, so more regularization
    helped at every round and the optimum was the teacher-only extreme); (2) λ = λ_tuned gave
    ξ* = 1 at every round (the optimum was plain KRR). The greedy optimum is interior only
    when the teacher-only path over-regularizes within the rounds, so the protocol now starts
    under-regularized (λ_tuned / 10) and runs 30 rounds, and (a) is judged at the last round.

    Measured (2026-12-03, full scale, seeds 0-2, n = 60, 4,000 draws): round-30 closed-form
    risk optimal / ground truth / teacher = 0.0271 / 0.0386 / 0.0466, 0.0263 / 0.0370 /
    0.0457, 0.0258 / 0.0370 / 0.0444 (simulated within 1.4 standard errors everywhere): HOLDS,
    3/3 seeds. ξ* is 0 for the first ~8 rounds and then settles near 0.08 (the limit λ/ξ is
    about λ_tuned); the optimal schedule lands within 1% of KRR at λ_tuned (0.0269, 0.0261,
    0.0256), which the claim does not test.
    """

    statement = ("With the closed-form optimal weighting of ground-truth targets and teacher "
                 "outputs, iterated self-distillation in kernel ridge regression reaches a lower "
                 "excess risk than either extreme; the closed form matches simulation.")
    n: int = 60  # design points
    ci_n: int = 30  # at scale="ci"
    noise_std: float = 0.5  # σ of the label noise
    bandwidth: float = 0.1  # RBF bandwidth
    regularization_factor: float = 0.1  # λ of every round, as a multiple of λ_tuned
    rounds: int = 30  # rounds of (self-)distillation, the first plain KRR
    draws: int = 4000  # noise draws of the simulation
    ci_draws: int = 500  # at scale="ci"
    margin: float = 0.01  # relative improvement needed over both extremes
    tolerance_se: float = 3.0  # simulation vs closed form, in standard errors

    def seed_result(self, seed: int, n: int, draws: int) -> dict[str, Any]:
        """The closed-form and simulated risks of every weighting and round on one design."""
        x, truth = sine_design(seed, n)
        kernel = rbf_kernel(x[:, None], bandwidth=self.bandwidth)
        eigen = kernel_eigen(kernel)
        variance = self.noise_std**2
        coefficients = eigen.coefficients(truth)
        tuned = float(min(np.logspace(-4, 2, 61), key=lambda lam: spectral_excess_risk(
            eigen.shrinkage(lam), coefficients, variance)))
        ridge = self.regularization_factor * tuned
        schedules = {
            "optimal": optimal_weights(eigen, ridge, truth, variance, self.rounds),
            "ground_truth": [1.0] * (self.rounds - 1),
            "teacher": [0.0] * (self.rounds - 1),
        }
        noise = np.random.default_rng([seed, 73]).normal(0.0, self.noise_std, (n, draws))
        labels = truth[:, None] + noise
        result: dict[str, Any] = {"weights": schedules["optimal"], "lambda_tuned": tuned,
                                  "regularization": ridge}
        for name, weights in schedules.items():
            filters = self_distillation_filters(eigen, ridge, weights)
            closed = [spectral_excess_risk(p, coefficients, variance) for p in filters]
            fits = self_distillation_fits(kernel, labels, ridge, weights)
            per_draw = [np.mean((fit - truth[:, None]) ** 2, axis=0) for fit in fits]
            result[name] = {
                "closed_form": closed,
                "simulated": [float(r.mean()) for r in per_draw],
                "standard_error": [float(r.std(ddof=1) / np.sqrt(draws)) for r in per_draw],
            }
        return result

    def passes(self, result: dict[str, Any]) -> tuple[bool, bool]:
        """(a) optimal beats both extremes by the margin at the last round; (b) simulation agrees
        with the closed form there."""
        last = {name: result[name]["closed_form"][-1] for name in POLICIES}
        beats = last["optimal"] <= (1.0 - self.margin) * min(last["ground_truth"],
                                                              last["teacher"])
        agrees = all(
            abs(result[name]["simulated"][-1] - last[name])
            <= self.tolerance_se * result[name]["standard_error"][-1] for name in POLICIES)
        return beats, agrees

    def run(self, seeds: Sequence[int], store: Store, *, scale: str = "full",
            progress: bool = False) -> Verdict:
        ci = scale == "ci"
        passed, numbers = [], {}
        for seed in seeds:
            result = self.seed_result(seed, self.ci_n if ci else self.n,
                                      self.ci_draws if ci else self.draws)
            beats, agrees = self.passes(result)
            passed.append(beats and agrees)
            numbers[f"seed{seed}"] = {**result, "beats_extremes": beats,
                                      "matches_simulation": agrees, "pass": beats and agrees}
        last = self.rounds - 1
        rows = list(numbers.values())
        summary = (f"round-{self.rounds} excess risk optimal/ground-truth/teacher = " + "; ".join(
            "/".join(f"{r[p]['closed_form'][last]:.4f}" for p in POLICIES) for r in rows)
            + f"; {sum(passed)}/{len(seeds)} seeds pass")
        if ci:
            summary += " (ci scale: a protocol check, not evidence)"
        return record(store, self.verdict(seed_vote(passed), summary, numbers, seeds, (), scale))
