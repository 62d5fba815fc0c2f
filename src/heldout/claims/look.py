"""Claim from "Rethinking Supervised Pre-training for Better Downstream Transferring" (Feng et
al., ICLR 2022, arXiv:2110.06014; catalog #26), in heldout's label-noise form: asking each
example to agree only with most of its k nearest neighbours (LOOK) tolerates mislabeled
examples better than cross-entropy, which fits every label."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from heldout.claims.base import Claim, Verdict, named, record, seed_vote
from heldout.config import Component, OptimizerConfig, RunConfig
from heldout.methods.look import REFERENCE
from heldout.registry import CLAIMS
from heldout.store.sqlite import Store

__all__ = ["LOOKBeatsCrossEntropyUnderLabelNoise"]

NOISE_RATES = (0.2, 0.4)


@CLAIMS.register(
    "look-label-noise",
    summary="Under 20% and 40% symmetric label noise on digits, LOOK's test accuracy beats "
    "cross-entropy's (MLP, equal steps).",
    papers=(26,),
    references=(REFERENCE,),
)
@dataclass
class LOOKBeatsCrossEntropyUnderLabelNoise(Claim):
    """``noisy_labels`` over scikit-learn's digits (symmetric noise: each training label
    flipped with probability η to a uniformly random other class; val and test clean), η in
    {0.2, 0.4}. An MLP (256-128, ReLU) is trained from the same initialization and batch
    order (same seed) for the same number of steps (Adam, lr 1e-3, batch 128), once with
    cross-entropy and once with the ``look`` technique at its defaults (k = 10 neighbours
    within the batch, τ = 0.1, normalized penultimate features). Each predicts with its own
    rule: cross-entropy with its linear head, LOOK with the k-NN vote over the (noisy-labeled)
    training features. The final test accuracy is compared (no early stopping: equal steps).

    Rule, fixed before the first full run: a seed PASSES when LOOK's final test accuracy is
    strictly higher than cross-entropy's at BOTH noise rates. Verdict by :func:`seed_vote`
    over the seeds (3 at full scale). The ``ci`` scale trains 150 steps instead of 2000.

    First full run (2026-12-03, seeds 0-2): DOES NOT HOLD, 1/3 seeds. Test accuracy LOOK vs
    CE at η=0.2: 81.8 vs 85.1, 82.0 vs 80.7, 84.4 vs 84.2 %; at η=0.4: 66.7 vs 69.3,
    60.9 vs 66.7, 65.3 vs 64.2 %. Rerun the same day after ``look_loss`` was made cheaper (same
    loss, different floating-point path: the neighbours' similarities gathered from the Gram
    matrix): DOES NOT HOLD, 0/3 seeds; LOOK vs CE at η=0.2: 84.7 vs 85.1, 82.7 vs 80.7,
    78.9 vs 84.2 %; at η=0.4: 65.1 vs 69.3, 64.4 vs 66.7, 67.8 vs 64.2 % (the cross-entropy
    runs are unchanged). LOOK's final accuracy moves by up to 5 pp with rounding alone; in
    neither run is it ahead of cross-entropy at both noise rates: in this setting the
    within-batch k-NN loss is not more robust to symmetric label noise than cross-entropy.
    """

    statement = ("LOOK only requires each image to share its class label with most of its k "
                 "nearest neighbours, so a class may keep several modes; heldout checks that "
                 "this also makes it more robust than cross-entropy to noisy labels.")
    steps: int = 2000  # training steps at batch 128 (~240 epochs of the 1,078 digits)
    default_seeds = 3

    def config(self, seed: int, noise: float, scale: str, look: bool) -> RunConfig:
        steps = 150 if scale == "ci" else self.steps
        return RunConfig(
            task=Component("noisy_labels", {"base": "digits", "noise": noise,
                                            "kind": "symmetric"}),
            model=Component("mlp", {"hidden": (256, 128)}),
            optimizer=OptimizerConfig(name="adam", lr=1e-3),
            techniques=(Component("look"),) if look else (),
            measures=named("accuracy"),
            batch_size=128, steps=steps, eval_every=steps, checkpoint_every=steps, seed=seed,
        )

    def run(self, seeds: Sequence[int], store: Store, *, scale: str = "full",
            progress: bool = False) -> Verdict:
        passed, numbers, run_ids = [], {}, []
        for seed in seeds:
            row: dict[str, float | bool] = {}
            for noise in NOISE_RATES:
                for look in (False, True):
                    cfg = self.config(seed, noise, scale, look)
                    history = self.execute(cfg, store, progress)
                    run_ids.append(cfg.identity)
                    final = history[max(history)]
                    row[f"{'look' if look else 'ce'}@{noise}"] = final.get("test/accuracy",
                                                                          float("nan"))
            ok = all(row[f"look@{n}"] > row[f"ce@{n}"] for n in NOISE_RATES)
            passed.append(ok)
            numbers[f"seed{seed}"] = {**row, "pass": ok}
        rows = list(numbers.values())
        summary = "; ".join(
            f"η={n}: LOOK − CE test accuracy "
            + ", ".join(f"{(r[f'look@{n}'] - r[f'ce@{n}']) * 100:+.1f}" for r in rows) + " pp"
            for n in NOISE_RATES
        ) + f"; {sum(passed)}/{len(seeds)} seeds pass"
        return record(store, self.verdict(seed_vote(passed), summary, numbers, seeds, run_ids,
                                          scale))
