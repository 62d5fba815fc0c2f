"""Claim #77 (Random Field Augmentations, Mansfield et al., arXiv:2311.03629): augmentations
whose affine and colour parameters vary from pixel to pixel as Gaussian random fields improve
accuracy on held-out domains over the same transforms applied globally, at equal budget."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from heldout.claims.base import STEP_DECAY, Claim, Verdict, named, record, seed_vote
from heldout.config import Component, OptimizerConfig, RunConfig
from heldout.methods.augment.random_fields import REFERENCE
from heldout.registry import CLAIMS, TASKS
from heldout.run.assembly import evaluation_model
from heldout.store.sqlite import Store

__all__ = ["RandomFieldsBeatGlobalAffine", "held_out_accuracy"]

# The rule's suites: digits_shift with the strongest domain held out (rot90, noise0p4)
SUITES = {"rotation": Component("digits_shift", {"shift": "rotation", "held_out": (3,)}),
          "noise": Component("digits_shift", {"shift": "noise", "held_out": (3,)})}
# Reported outside the rule: trained on clean digits, tested on every corrupted domain
CORRUPTION = Component("digits_corruption", {})
# The shared amplitude budget (the techniques' defaults, fixed before any run)
AMPLITUDES = {"translation": 0.5, "rotation": 10.0, "scale": 0.1, "brightness": 0.05,
              "contrast": 0.1}
LENGTH_SCALE = 2.0  # pixels, on the 8x8 digits
# Reported outside the rule: the amplitudes times the multiplier of this grid with the best
# final accuracy on the training domains' val parts, per method, suite and seed
MULTIPLIERS = (0.25, 0.5, 1.0)


def held_out_accuracy(run: str, store: Store, cfg: RunConfig) -> float:
    """Accuracy of a finished run's evaluation model on *every* example of its task's
    held-out domains (train, val and test parts alike: none of them was trained on), which
    quadruples the test set of a digits_shift domain (449 images instead of 90)."""
    task = TASKS.build(cfg.task.name, **cfg.task.params)
    domains = task.domains(cfg.seed)
    x = torch.cat([domains[i].x for i in task.held_out])
    y = torch.cat([domains[i].y for i in task.held_out])
    model = evaluation_model(run, store).eval()
    with torch.no_grad():
        return float((model(x).argmax(dim=-1) == y).double().mean())


@CLAIMS.register(
    "random-fields-beat-global-affine",
    summary="On the digits rotation and noise suites (strongest domain held out), random-field "
    "augmentation beats global affine/colour augmentation of the same amplitudes.",
    papers=(77,),
    references=(REFERENCE,),
)
@dataclass
class RandomFieldsBeatGlobalAffine(Claim):
    """A cnn2d (channels 16, 32, BatchNorm2d; SGD lr 0.05, momentum 0.9, batch 64, lr / 10 at
    50% and 75% of the steps) trains on the three weaker domains of ``digits_shift`` and is
    tested on the strongest one, for two suites: ``rotation`` (train rot0/30/60, test rot90)
    and ``noise`` (train noise 0/0.1/0.2, test noise 0.4). Three runs per suite and seed,
    the same initialization and batch order: plain (ERM), ``global_affine`` and
    ``random_fields`` with the same amplitudes, fixed in advance (the techniques' defaults:
    translation 0.5 px, rotation 10°, log-scale 0.1, brightness 0.05, log-contrast 0.1,
    every image transformed) and, for the random fields, length scale ℓ = 2 px.
    ``acc(m, suite)`` is method m's final accuracy on all 449 images of the held-out domain
    (:func:`held_out_accuracy`).

    Rule, fixed before the first full run: a seed PASSES when
    ``acc(random_fields, s) > acc(global_affine, s)`` on both suites s (strictly; a tie
    fails). Verdict by :func:`seed_vote` over the seeds (3 at full scale). Reported outside
    the rule: ERM's accuracies, and the three methods on ``digits_corruption`` (trained on the
    clean digits, ``test/accuracy`` over the test parts of all 20 corrupted domains). The
    ``ci`` scale trains 60 steps instead of 400 and leaves the corruption suite out: a smoke
    test of the protocol, not evidence.

    First full run (2026-12-03, seeds 0-2, ``heldout claims run
    random-fields-beat-global-affine``): DOES NOT HOLD, 1/3 seeds (fields then synthesized
    by FFT; the synthesis was rewritten for speed right after, same distribution, other
    draws). Rerun with the current synthesis: DOES NOT HOLD, 0/3 seeds. Held-out accuracy,
    random_fields vs global_affine (ERM): rot90 14.7/15.4/18.5 vs 9.8/6.9/15.8
    (23.6/25.8/31.8): random fields win 3/3; noise 0.4 35.6/34.1/39.0 vs 35.9/34.7/41.2
    (52.3/45.0/45.0): they lose 3/3; corruption 79.2/78.0/77.4 vs 81.8/85.8/81.5
    (67.6/64.7/71.6). Both augmentations fall below ERM on the two rule suites: the fixed
    budget is strong for 8x8 images (ERM's own val accuracy drops from 93% to 55-58% on
    augmented val images; the augmented runs end at 79-86% training accuracy against 97%).

    Added after that run, outside the rule (the verdict stays the fixed-budget one): the
    same comparison with the amplitudes selected per method, suite and seed from
    ``MULTIPLIERS`` × the budget by the final accuracy on the training domains' val parts
    (``numbers["seed<i>"]["selected"]``, with its own seed vote
    ``numbers["selected_verdict"]``). Its run (same day): 1/3 seeds, does not hold; the val
    parts chose the smallest multiplier, 0.25, in 11 of 12 cases; held-out accuracy
    random_fields vs global_affine: rot90 21.8/22.5/28.7 vs 20.9/23.8/33.6, noise 0.4
    51.9/42.3/42.5 vs 49.2/44.3/46.3 (ERM above both in 4 of 6 cases).
    """

    statement = ("Random-field augmentations, which let affine and colour transformation "
                 "parameters vary from pixel to pixel, generalize the global transforms and "
                 "improve out-of-distribution downstream accuracy.")
    steps: int = 400  # training steps (batch 64; ~25 epochs of the ~800 training images)
    ci_steps: int = 60

    def config(self, task: Component, seed: int, scale: str) -> RunConfig:
        """The ERM run of one suite; the augmented runs add one technique to it."""
        steps = self.ci_steps if scale == "ci" else self.steps
        return RunConfig(
            task=task,
            model=Component("cnn2d", {"channels": (16, 32), "batch_norm": True}),
            optimizer=OptimizerConfig(name="sgd", lr=0.05, momentum=0.9),
            techniques=(STEP_DECAY,),
            measures=named("accuracy"),
            batch_size=64, steps=steps, eval_every=steps, checkpoint_every=steps, seed=seed,
        )

    @staticmethod
    def variants(cfg: RunConfig, multiplier: float = 1.0) -> dict[str, RunConfig]:
        """ERM and the two augmentations at ``multiplier`` times the shared amplitudes."""
        amplitudes = {k: multiplier * v for k, v in AMPLITUDES.items()}
        augmented = {"global_affine": Component("global_affine", amplitudes),
                     "random_fields": Component("random_fields",
                                                {**amplitudes, "length_scale": LENGTH_SCALE})}
        return {"erm": cfg, **{name: dataclasses.replace(
            cfg, techniques=(*cfg.techniques, technique))
            for name, technique in augmented.items()}}

    def selected(self, task: Component, seed: int, scale: str, store: Store,
                 run_ids: list[str]) -> dict[str, dict[str, float]]:
        """Per augmentation, the multiplier of :data:`MULTIPLIERS` with the best final
        training-domain val accuracy and that run's held-out accuracy."""
        out: dict[str, dict[str, float]] = {}
        for method in ("global_affine", "random_fields"):
            scores = {}
            for multiplier in MULTIPLIERS:
                cfg = self.variants(self.config(task, seed, scale), multiplier)[method]
                history = self.execute(cfg, store)
                run_ids.append(cfg.identity)
                scores[multiplier] = (history[max(history)]["val/accuracy"], cfg)
            best = max(MULTIPLIERS, key=lambda m: scores[m][0])
            cfg = scores[best][1]
            out[method] = {"multiplier": best, "val_accuracy": scores[best][0],
                           "accuracy": held_out_accuracy(cfg.identity, store, cfg)}
        return out

    def run(self, seeds: Sequence[int], store: Store, *, scale: str = "full",
            progress: bool = False) -> Verdict:
        suites = dict(SUITES) if scale == "ci" else {**SUITES, "corruption": CORRUPTION}
        passed: list[bool] = []
        selected_passed: list[bool] = []
        numbers: dict[str, Any] = {}
        run_ids: list[str] = []
        for seed in seeds:
            accuracy: dict[str, dict[str, float]] = {}
            for suite, task in suites.items():
                for method, cfg in self.variants(self.config(task, seed, scale)).items():
                    history = self.execute(cfg, store, progress)
                    run_ids.append(cfg.identity)
                    accuracy.setdefault(suite, {})[method] = (
                        float(history[max(history)]["test/accuracy"]) if suite == "corruption"
                        else held_out_accuracy(cfg.identity, store, cfg))
            wins = {s: accuracy[s]["random_fields"] > accuracy[s]["global_affine"]
                    for s in SUITES}
            passed.append(all(wins.values()))
            chosen = {suite: self.selected(task, seed, scale, store, run_ids)
                      for suite, task in SUITES.items()}
            chosen_wins = {s: chosen[s]["random_fields"]["accuracy"]
                           > chosen[s]["global_affine"]["accuracy"] for s in SUITES}
            selected_passed.append(all(chosen_wins.values()))
            numbers[f"seed{seed}"] = {"accuracy": accuracy, "wins": wins, "pass": passed[-1],
                                      "selected": {**chosen, "wins": chosen_wins,
                                                   "pass": selected_passed[-1]}}
        numbers["selected_verdict"] = seed_vote(selected_passed)
        rows = [numbers[f"seed{s}"]["accuracy"] for s in seeds]

        def column(suite: str, method: str) -> str:
            return "/".join(f"{100 * r[suite][method]:.1f}" for r in rows)

        summary = "; ".join(
            f"{suite}: random_fields {column(suite, 'random_fields')} vs global_affine "
            f"{column(suite, 'global_affine')} (erm {column(suite, 'erm')})"
            for suite in suites)
        summary += (f"; {sum(passed)}/{len(seeds)} seeds pass (amplitudes selected on val: "
                    f"{sum(selected_passed)}/{len(seeds)}, {numbers['selected_verdict']})")
        return record(store, self.verdict(seed_vote(passed), summary, numbers, seeds,
                                          tuple(dict.fromkeys(run_ids)), scale))
