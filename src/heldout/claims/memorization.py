"""Claim from "To Grok or not to Grok: Disentangling Generalization and Memorization on
Corrupted Algorithmic Datasets" (Doshi, Das, He, Gromov; ICLR 2024; arXiv:2310.13061;
catalog #68; ledger C4).

Setting of the official notebook (via the ledger): (a + b) mod 97, train fraction 0.5, 35% of
the training labels replaced by uniform random labels, a bias-free MLP with one hidden layer
of 500 units and activation z², both layers N(0, 0.05²) (= √0.25 / (2N)^(1/3)), MSE against
one-hot targets, full-batch AdamW lr 0.01, betas (0.9, 0.98), no weight decay.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from heldout.claims.base import Claim, Verdict, named, record, seed_vote
from heldout.config import Component, OptimizerConfig, RunConfig
from heldout.measures import Accuracy, evaluate, prune_by_ipr
from heldout.registry import CLAIMS
from heldout.run.assembly import build
from heldout.store.sqlite import Store

__all__ = ["IPRPruningRemovesMemorization", "corrupted_modular_config"]

# The notebook draws corrupted labels uniformly from all p classes, so 1/p of them are right by
# chance; heldout's corruption always picks a different class, hence the rescaled rate.
NOISE = 0.35


def corrupted_modular_config(seed: int, steps: int, p: int = 97, width: int = 500,
                             weight_decay: float = 0.0) -> RunConfig:
    """The C4 run (coexistence phase with weight decay 0)."""
    init_std = 0.25**0.5 / (2 * width) ** (1 / 3)
    return RunConfig(
        task=Component("modular", {"p": p, "train_fraction": 0.5,
                                   "label_corruption": NOISE * (p - 1) / p}),
        model=Component("mlp", {"hidden": (width,), "bias": False, "activation": "square",
                                "init_std": init_std}),
        loss="mse",
        optimizer=OptimizerConfig(name="adamw", lr=0.01, betas=(0.9, 0.98),
                                  weight_decay=weight_decay),
        measures=named("accuracy", "loss"),
        batch_size=None, steps=steps, eval_every=50, checkpoint_every=steps, seed=seed,
    )


def _accuracies(model, splits) -> dict[str, float]:
    m = evaluate(model, splits, [Accuracy()])
    return {"test": m["test/accuracy"], "clean_train": m["train/clean_accuracy"],
            "corrupted_fit": m["train/memorized"]}


@CLAIMS.register(
    "ipr-pruning-memorization",
    summary="Pruning low-IPR neurons removes memorized corrupted labels and keeps test "
    "accuracy; pruning high-IPR ones destroys it.",
    papers=(68,),
)
@dataclass
class IPRPruningRemovesMemorization(Claim):
    """C4-a. PASS per seed when: (1) after ``steps`` the network generalizes (test accuracy
    >= 0.95) while fitting the corrupted labels (>= 0.90 of them); (2) pruning the 70%
    lowest-IPR neurons leaves <= 0.05 of the corrupted labels fitted, clean-train accuracy
    >= 0.99 and test accuracy >= 0.97; (3) pruning the 30% (150 of 500) highest-IPR neurons
    drops test accuracy to <= 0.1 while the corrupted labels stay fitted (>= 0.9). The
    setting is small enough for CI as it is (``scale`` changes nothing); a smaller one
    (p = 59, 300 units, 600 steps) did not even generalize, so none is offered."""

    statement = ("Networks trained on modular addition with corrupted labels keep both "
                 "periodic (generalizing, high-IPR) and memorizing (low-IPR) neurons; pruning "
                 "the low-IPR neurons removes the memorization and keeps generalization, "
                 "pruning the high-IPR ones does the opposite.")
    steps: int = 600  # full-batch steps (the ledger's calibrated C4-a length)
    prune_low: float = 0.7  # fraction of neurons pruned, lowest IPR first
    prune_high: float = 0.3  # fraction pruned, highest IPR first (the control)

    default_seeds = 1

    def run(self, seeds: Sequence[int], store: Store, *, scale: str = "full",
            progress: bool = False) -> Verdict:
        p, width = 97, 500
        numbers: dict[str, Any]
        passed, numbers, run_ids = [], {}, []
        for seed in seeds:
            cfg = corrupted_modular_config(seed, self.steps, p, width)
            history = self.execute(cfg, store, progress)
            trainer = build(cfg, checkpoint_path=store.checkpoint_path(cfg.identity))
            trainer.resume()
            splits = {"train": trainer.eval_data["train"], "test": trainer.eval_data["test"]}

            full = _accuracies(trainer.model, splits)
            low = _accuracies(prune_by_ipr(trainer.model, self.prune_low, "low"), splits)
            high = _accuracies(prune_by_ipr(trainer.model, self.prune_high, "high"), splits)
            checks = {
                "coexistence": full["test"] >= 0.95 and full["corrupted_fit"] >= 0.90,
                "low_ipr_pruning_removes_memorization": low["corrupted_fit"] <= 0.05
                and low["clean_train"] >= 0.99 and low["test"] >= 0.97,
                "high_ipr_pruning_destroys_generalization": high["test"] <= 0.1
                and high["corrupted_fit"] >= 0.9,
            }
            passed.append(all(checks.values()))
            numbers[f"seed{seed}"] = {"p": p, "width": width, "trained": full,
                                      f"pruned_{self.prune_low:g}_low": low,
                                      f"pruned_{self.prune_high:g}_high": high,
                                      "final_step": max(history), "checks": checks}
            run_ids.append(cfg.identity)
        first = numbers[f"seed{seeds[0]}"]
        low = first[f"pruned_{self.prune_low:g}_low"]
        high = first[f"pruned_{self.prune_high:g}_high"]
        summary = (
            f"p={p}: trained test {first['trained']['test']:.3f}, corrupted fit "
            f"{first['trained']['corrupted_fit']:.3f}; low-IPR pruning → corrupted fit "
            f"{low['corrupted_fit']:.3f}, test {low['test']:.3f}; high-IPR pruning → test "
            f"{high['test']:.3f}, corrupted fit {high['corrupted_fit']:.3f}; "
            f"{sum(passed)}/{len(seeds)} seeds pass"
        )
        return record(store, self.verdict(seed_vote(passed), summary, numbers, seeds, run_ids,
                                          scale))
