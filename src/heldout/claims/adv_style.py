"""Claim of "Adversarial Style Augmentation for Domain Generalization" (Zhang et al.,
arXiv:2301.12643; catalog #63): adversarial style statistics (AdvStyle) generalize to an
unseen domain better than random style mixing (MixStyle)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import mean
from typing import Any

from heldout.claims.base import STEP_DECAY, Claim, Verdict, named, record, seed_vote
from heldout.config import Component, OptimizerConfig, RunConfig
from heldout.methods.augment.style import ADVSTYLE_PAPER, MIXSTYLE_PAPER
from heldout.registry import CLAIMS
from heldout.store.sqlite import Store

__all__ = ["AdvStyleBeatsMixStyle"]

METHODS = ("erm", "mixstyle", "adv_style")  # erm: reference only, outside the rule


@CLAIMS.register(
    "adv-style-beats-mixstyle",
    summary="On digits under intensity shift (3 training domains, the strongest held out), "
    "AdvStyle after the first conv stage beats MixStyle's held-out accuracy.",
    papers=(63,),
    references=(ADVSTYLE_PAPER, MIXSTYLE_PAPER),
)
@dataclass
class AdvStyleBeatsMixStyle(Claim):
    """``digits_shift`` with ``shift="scale"`` (intensity × 1, 0.75, 0.5, 0.25 in four
    domains). Multi-source: the model trains on the three domains 1, 0.75, 0.5 and is tested
    on the strongest shift, 0.25 (``held_out=(3,)``), which lies outside the range of the
    training styles. A ``cnn2d`` (channels 16, 32, BatchNorm2d) trains with SGD (lr 0.05,
    momentum 0.9, batch 64, lr / 10 at 50% and 75% of the steps) three times from the same
    initialization and batch order: plain (ERM, a reference outside the rule), with
    ``mixstyle`` (defaults p = 0.5, α = 0.1) and with ``adv_style`` (defaults: adv_weight 10,
    intensities bounded at 3× their initial value, identity / DSU / adversarial with
    probability 1/3 each), both style modules after ``act1`` (the first conv stage, where
    the papers put style modules).

    Rule, written before the first full run: per seed, acc(m) is method m's accuracy on the
    ``test`` split (the held-out domain's test part) at the last step. A seed PASSES when
    ``acc(adv_style) > acc(mixstyle)`` (strictly). The verdict is :func:`seed_vote` over the
    seeds (3 by default).

    First full run (seeds 0, 1, 2; rule untouched): DOES NOT HOLD. Held-out accuracy
    AdvStyle / MixStyle / ERM: seed 0 0.670 / 0.692 / 0.780, seed 1 0.767 / 0.578 / 0.556,
    seed 2 0.596 / 0.618 / 0.618; means 0.678 / 0.629 / 0.651. AdvStyle wins on average
    (one large win) but on one seed of three. The held-out test part has ~90 images (one
    image ≈ 1.1 points), so seed-to-seed spread dominates the differences.
    """

    statement = ("Adversarial style augmentation (AdvStyle) generalizes to unseen domains "
                 "better than random style mixing (MixStyle).")
    steps: int = 600  # training steps (~47 epochs of the ~810 training images)
    ci_steps: int = 40  # at scale="ci": a smoke test of the protocol, not evidence
    layers: tuple[str, ...] = ("act1",)  # where both style modules go

    def config(self, seed: int, scale: str, method: str) -> RunConfig:
        """The run of ``method`` ("erm", "mixstyle" or "adv_style") for ``seed``."""
        steps = self.ci_steps if scale == "ci" else self.steps
        techniques: tuple[Component, ...] = (STEP_DECAY,)
        if method != "erm":
            techniques = (Component(method, {"layers": self.layers}), STEP_DECAY)
        return RunConfig(
            task=Component("digits_shift", {"shift": "scale", "held_out": (3,),
                                            "data_seed": seed}),
            model=Component("cnn2d", {"channels": (16, 32), "batch_norm": True}),
            optimizer=OptimizerConfig(name="sgd", lr=0.05, momentum=0.9),
            techniques=techniques,
            measures=named("accuracy"),
            batch_size=64, steps=steps, eval_every=steps, checkpoint_every=steps, seed=seed,
        )

    def run(self, seeds: Sequence[int], store: Store, *, scale: str = "full",
            progress: bool = False) -> Verdict:
        passed, run_ids = [], []
        numbers: dict[str, Any] = {}
        for seed in seeds:
            accuracy = {}
            for method in METHODS:
                cfg = self.config(seed, scale, method)
                history = self.execute(cfg, store, progress)
                run_ids.append(cfg.identity)
                accuracy[method] = history[max(history)].get("test/accuracy", 0.0)
            ok = accuracy["adv_style"] > accuracy["mixstyle"]
            passed.append(ok)
            numbers[f"seed{seed}"] = {"test_accuracy": accuracy, "pass": ok}
        numbers["mean_test_accuracy"] = {
            m: mean(numbers[f"seed{s}"]["test_accuracy"][m] for s in seeds) for m in METHODS}
        verdict = seed_vote(passed)
        means = numbers["mean_test_accuracy"]
        summary = (f"held-out (intensity 0.25) accuracy, mean over {len(seeds)} seeds: "
                   f"AdvStyle {means['adv_style']:.3f}, MixStyle {means['mixstyle']:.3f}, "
                   f"ERM {means['erm']:.3f}; AdvStyle > MixStyle on {sum(passed)}/"
                   f"{len(seeds)} seeds")
        return record(store, self.verdict(verdict, summary, numbers, seeds, run_ids, scale))
