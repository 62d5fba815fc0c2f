"""Claim from "On the Generalization Mystery in Deep Learning" (Chatterjee & Zielinski, 2022;
arXiv:2203.10036; catalog #10): per-example gradients are more coherent on real labels than
on random labels, which is why the same network generalizes on one and memorizes the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from heldout.claims.base import Claim, Verdict, named, record, seed_vote
from heldout.config import Component, OptimizerConfig, RunConfig
from heldout.registry import CLAIMS
from heldout.store.sqlite import Store

__all__ = ["CoherenceRealVsRandom", "coherence_config"]


def coherence_config(seed: int, steps: int, random_labels: bool) -> RunConfig:
    """An MLP 64-256-10 on scikit-learn's digits, with real labels or uniformly random ones
    (each label replaced by another class with probability 0.9: uniform over 10 classes)."""
    return RunConfig(
        task=Component("digits", {"label_noise": 0.9 if random_labels else 0.0}),
        model=Component("mlp", {"hidden": (256,)}),
        optimizer=OptimizerConfig(name="sgd", lr=0.05),
        measures=named("accuracy", "loss", "gradient_coherence"),
        batch_size=64, steps=steps, eval_every=steps // 8, checkpoint_every=steps, seed=seed,
    )


@CLAIMS.register(
    "coherence-real-vs-random",
    summary="Per-example gradients are more coherent on real labels than on random labels.",
    papers=(10,),
)
@dataclass
class CoherenceRealVsRandom(Claim):
    """PASS per seed when the gradient coherence α on the training set, averaged over the
    evaluations after step 0, is at least ``ratio`` times higher with real labels than with
    random labels (α = ‖E g‖² / E‖g‖² over a sample of per-example gradients: 1 when all
    agree, 1/m when they are orthogonal)."""

    statement = ("Gradients of different examples reinforce each other on real data and not on "
                 "random labels: coherence is higher with real labels, which is why the network "
                 "generalizes on the one and memorizes the other.")
    steps: int = 800  # SGD steps per run
    ratio: float = 2.0  # how much higher the real-label coherence must be

    default_seeds = 3

    def run(self, seeds: Sequence[int], store: Store, *, scale: str = "full",
            progress: bool = False) -> Verdict:
        passed, numbers, run_ids = [], {}, []
        for seed in seeds:
            means = {}
            for random_labels in (False, True):
                cfg = coherence_config(seed, self.steps, random_labels)
                history = self.execute(cfg, store, progress)
                values = [m["train/gradient_coherence"] for s, m in sorted(history.items())
                          if s > 0]
                means["random" if random_labels else "real"] = sum(values) / len(values)
                run_ids.append(cfg.identity)
            ok = means["real"] >= self.ratio * means["random"]
            passed.append(ok)
            numbers[f"seed{seed}"] = {"coherence_real": means["real"],
                                      "coherence_random": means["random"],
                                      "ratio": means["real"] / means["random"], "pass": ok}
        ratios = [n["ratio"] for n in numbers.values()]
        summary = (f"mean coherence real/random = {min(ratios):.1f}-{max(ratios):.1f}x "
                   f"(needed >= {self.ratio}x); {sum(passed)}/{len(seeds)} seeds pass")
        return record(store, self.verdict(seed_vote(passed), summary, numbers, seeds, run_ids,
                                          scale))
