"""Claim from "Deep Networks Always Grok and Here is Why" (Humayun, Balestriero, Baraniuk; ICML
2024; arXiv:2402.15555; catalog #30; ledger C5), on the ledger's MNIST-1D stand-in: an MLP
40-200-200-200-10 (ReLU) on the first 1,000 training examples, AdamW lr 1e-3, weight decay
0.01, batch 200, MSE on one-hot targets; local complexity (LC) with 20 orthonormal directions
(40 vertices) of radius 0.5 around 300 train, test and random points.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from heldout.claims.base import Claim, Verdict, record, seed_vote
from heldout.config import Component, OptimizerConfig, RunConfig
from heldout.registry import CLAIMS
from heldout.store.sqlite import Store

__all__ = ["LocalComplexityDoubleDescent", "local_complexity_config"]


def local_complexity_config(seed: int, steps: int, eval_every: int) -> RunConfig:
    """The C5 run: LC and accuracy every ``eval_every`` steps."""
    return RunConfig(
        task=Component("mnist1d", {"max_train": 1000}),
        model=Component("mlp", {"hidden": (200, 200, 200)}),
        loss="mse",
        optimizer=OptimizerConfig(name="adamw", lr=0.001, weight_decay=0.01),
        measures=(Component("accuracy"), Component("local_complexity", {
            "n_vertices": 40, "max_points": 300, "radius": 0.5})),
        batch_size=200, steps=steps, eval_every=eval_every, checkpoint_every=steps, seed=seed,
    )


@CLAIMS.register(
    "local-complexity-descent",
    summary="Local complexity around training points rises to a peak after the data is fit, "
    "then falls well below it while test accuracy creeps up.",
    papers=(30,),
)
@dataclass
class LocalComplexityDoubleDescent(Claim):
    """C5. PASS per seed when (1) the LC at training points peaks after training accuracy
    first reaches 1.0; (2) the last LC is <= 0.6x that peak; (3) the last test accuracy is
    >= the test accuracy at the first 100%-train evaluation + 3 pp (delayed generalization).
    The paper's delayed-robustness part (PGD accuracy) is not checked: heldout has no
    adversarial-attack measure yet. ``scale="ci"`` runs 3,000 steps (a protocol check)."""

    statement = ("Long after interpolation, linear regions migrate away from the training "
                 "points: local complexity around the data falls (after a rise) while test "
                 "accuracy and robustness improve, so deep networks grok.")
    steps: int = 60_000  # AdamW steps (the ledger's calibrated CPU length)
    eval_every: int = 1000  # steps between LC evaluations
    ci_steps: int = 3000  # at scale="ci"

    default_seeds = 1

    def run(self, seeds: Sequence[int], store: Store, *, scale: str = "full",
            progress: bool = False) -> Verdict:
        steps = self.ci_steps if scale == "ci" else self.steps
        every = max(steps // 12, 1) if scale == "ci" else self.eval_every
        passed, numbers, run_ids = [], {}, []
        for seed in seeds:
            cfg = local_complexity_config(seed, steps, every)
            history = sorted(self.execute(cfg, store, progress).items())
            lc = [(s, m["train/local_complexity"]) for s, m in history]
            fit = next((s for s, m in history if m["train/accuracy"] == 1.0), None)
            peak_step, peak = max(lc, key=lambda item: item[1])
            last_step, last = lc[-1]
            test_at = {s: m["test/accuracy"] for s, m in history}
            checks = {
                "peak_after_fit": fit is not None and peak_step > fit,
                "late_descent": last <= 0.6 * peak,
                "delayed_generalization": fit is not None
                and test_at[last_step] >= test_at[fit] + 0.03,
            }
            passed.append(all(checks.values()))
            numbers[f"seed{seed}"] = {
                "first_step_train_accuracy_1": fit, "lc_peak_step": peak_step,
                "lc_peak": peak, "lc_last": last,
                "test_accuracy_at_fit": None if fit is None else test_at[fit],
                "test_accuracy_last": test_at[last_step], "lc_train_curve": lc,
                "checks": checks, "steps": steps,
            }
            run_ids.append(cfg.identity)
        first = numbers[f"seed{seeds[0]}"]
        summary = (f"train acc 1.0 at step {first['first_step_train_accuracy_1']}, LC peak "
                   f"{first['lc_peak']:.1f} at step {first['lc_peak_step']}, last "
                   f"{first['lc_last']:.1f} ({first['lc_last'] / first['lc_peak']:.2f}x peak); "
                   f"test acc {first['test_accuracy_at_fit']} → "
                   f"{first['test_accuracy_last']:.3f}; {sum(passed)}/{len(seeds)} seeds pass")
        return record(store, self.verdict(seed_vote(passed), summary, numbers, seeds, run_ids,
                                          scale))
