"""Claim from "Train longer, generalize better: closing the generalization gap in large batch
training of neural networks" (Hoffer, Hubara, Soudry; NeurIPS 2017; arXiv:1705.08741;
catalog #3; ledger C6).

The ledger's calibrated MNIST-1D stand-in for the paper's MNIST "F1" experiment: an MLP
40-256-256-256-10 with BatchNorm and ReLU, SGD momentum 0.9, weight decay 1e-4, lr 0.1
divided by 10 at 50% and 75% of training, 40 epochs; small batch 64, large batch 1024.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from heldout.claims.base import STEP_DECAY, Claim, Verdict, named, record, seed_vote
from heldout.config import Component, OptimizerConfig, RunConfig
from heldout.methods.schedules import regime_steps
from heldout.registry import CLAIMS, TASKS
from heldout.store.sqlite import Store

__all__ = ["LargeBatchGapCloses", "large_batch_configs"]

SMALL, LARGE, EPOCHS = 64, 1024, 40
SQRT_LR = Component("lr_batch_scaling", {"base_batch_size": SMALL})
GHOST_BN = Component("ghost_bn", {"ghost_batch_size": SMALL})


def large_batch_configs(seed: int, epochs: int = EPOCHS) -> dict[str, RunConfig]:
    """The five runs of the C6 table, by label."""
    n = len(TASKS.build("mnist1d").splits(seed).train)

    def config(batch: int, techniques: tuple[Component, ...], adapt: bool) -> RunConfig:
        steps = regime_steps(epochs, n, batch, SMALL, adapt)
        return RunConfig(
            task=Component("mnist1d"),
            model=Component("mlp", {"hidden": (256, 256, 256), "batch_norm": True}),
            optimizer=OptimizerConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=0.0001),
            techniques=(*techniques, STEP_DECAY),
            measures=named("accuracy", "loss"),
            batch_size=batch, steps=steps, eval_every=steps, checkpoint_every=steps, seed=seed,
        )

    return {
        "small batch": config(SMALL, (), False),
        "large batch": config(LARGE, (), False),
        "large + sqrt lr": config(LARGE, (SQRT_LR,), False),
        "large + sqrt lr + ghost BN": config(LARGE, (GHOST_BN, SQRT_LR), False),
        "large + sqrt lr + ghost BN + regime adaptation": config(
            LARGE, (GHOST_BN, SQRT_LR), True),
    }


@CLAIMS.register(
    "large-batch-gap",
    summary="Large batches lose to small ones; sqrt-lr scaling, Ghost BN and regime "
    "adaptation close most of the gap.",
    papers=(3,),
)
@dataclass
class LargeBatchGapCloses(Claim):
    """C6. PASS per seed when (1) small batch beats plain large batch by >= 5 pp of test
    accuracy; (2) sqrt-lr scaling improves the large batch; (3) the full recipe (sqrt lr +
    Ghost BN + regime adaptation) is within 2.5 pp of the small batch; (4) it closes >= 60%
    of the gap. Ghost BN's own effect is reported, not tested (the ledger found it small and
    inconsistent at this scale)."""

    statement = ("The large-batch generalization gap comes from too few updates: scaling the "
                 "learning rate by sqrt(batch ratio), Ghost BatchNorm and adapting the regime "
                 "to the same number of updates close it.")
    epochs: int = EPOCHS  # epochs of the small-batch run
    ci_epochs: int = 6  # at scale="ci": a smoke test of the protocol, not evidence

    default_seeds = 3

    def run(self, seeds: Sequence[int], store: Store, *, scale: str = "full",
            progress: bool = False) -> Verdict:
        passed, numbers, run_ids = [], {}, []
        for seed in seeds:
            acc = {}
            epochs = self.ci_epochs if scale == "ci" else self.epochs
            for label, cfg in large_batch_configs(seed, epochs).items():
                acc[label] = self.execute(cfg, store, progress)[cfg.steps]["test/accuracy"]
                run_ids.append(cfg.identity)
            small, plain = acc["small batch"], acc["large batch"]
            full = acc["large + sqrt lr + ghost BN + regime adaptation"]
            gap = small - plain
            closed = (full - plain) / gap if gap > 0 else float("nan")
            checks = {
                "gap_at_least_5pp": gap >= 0.05,
                "sqrt_lr_helps": acc["large + sqrt lr"] > plain,
                "recipe_within_2.5pp": full >= small - 0.025,
                "recipe_closes_60pct": closed >= 0.6,
            }
            passed.append(all(checks.values()))
            numbers[f"seed{seed}"] = {"test_accuracy": acc, "gap": gap,
                                      "fraction_closed": closed, "checks": checks}
        first = numbers[f"seed{seeds[0]}"]
        summary = (f"gap {first['gap'] * 100:.1f} pp, recipe closes "
                   f"{first['fraction_closed'] * 100:.0f}% of it (seed {seeds[0]}); "
                   f"{sum(passed)}/{len(seeds)} seeds pass")
        return record(store, self.verdict(seed_vote(passed), summary, numbers, seeds, run_ids,
                                          scale))
