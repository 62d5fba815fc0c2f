"""Claim from "Feature Learning in Infinite-Width Neural Networks" (Yang & Hu; arXiv:2011.14522;
catalog #54) as tested by µTransfer (Tensor Programs V, arXiv:2203.03466): under the maximal
update parametrization the best learning rate found at a small width stays best at larger
widths; under the standard parametrization it drifts."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import mean

from heldout.claims.base import Claim, Verdict, VerdictName, named, record
from heldout.config import Component, OptimizerConfig, RunConfig
from heldout.registry import CLAIMS
from heldout.store.sqlite import Store

__all__ = ["MuPTransfer", "mup_config"]

LEARNING_RATES = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
SCALES = {"full": (64, 256, 1024), "ci": (32, 64, 128)}


def mup_config(seed: int, width: int, lr: float, parametrization: str, base_width: int,
               steps: int) -> RunConfig:
    """An MLP with two hidden layers of ``width`` on MNIST-1D, Adam at ``lr``; "mup" applies
    µP relative to ``base_width``, "sp" is the standard (PyTorch-default) parametrization."""
    return RunConfig(
        task=Component("mnist1d", {"data_seed": 0}),
        model=Component("mlp", {"hidden": (width, width)}),
        optimizer=OptimizerConfig(name="adam", lr=lr),
        techniques=(Component("mup", {"base_width": base_width}),)
        if parametrization == "mup" else (),
        measures=named("loss", "accuracy"),
        batch_size=128, steps=steps, eval_every=steps, checkpoint_every=steps, seed=seed,
    )


@CLAIMS.register(
    "mup-transfer",
    summary="Under µP the best learning rate at a small width stays best at 4x and 16x the "
    "width; under standard parametrization it drifts.",
    papers=(54,),
)
@dataclass
class MuPTransfer(Claim):
    """For each parametrization, the learning rate (on a ×3 grid) with the lowest final
    training loss, averaged over seeds, at the base width and at 4× and 16× it. The shift of a
    width is how many grid steps its best learning rate lies from the base width's. Holds when
    µP shifts by at most one grid step at every width while standard parametrization shifts by
    two or more somewhere; does not hold when µP shifts by two or more; inconclusive
    otherwise. ``scale="ci"`` uses widths 32/64/128 and fewer steps (a protocol check)."""

    statement = ("With the maximal update parametrization, hyper-parameters tuned on a narrow "
                 "network transfer to wide ones: the optimal learning rate does not move with "
                 "width, while under the standard parametrization it does.")
    steps: int = 600  # Adam steps per run
    ci_steps: int = 60  # at scale="ci"

    default_seeds = 3

    def run(self, seeds: Sequence[int], store: Store, *, scale: str = "full",
            progress: bool = False) -> Verdict:
        widths = SCALES["ci" if scale == "ci" else "full"]
        steps = self.ci_steps if scale == "ci" else self.steps
        losses: dict[str, dict[int, list[float]]] = {"mup": {}, "sp": {}}
        run_ids = []
        for parametrization, width in itertools.product(("mup", "sp"), widths):
            per_lr = []
            for lr in LEARNING_RATES:
                values = []
                for seed in seeds:
                    cfg = mup_config(seed, width, lr, parametrization, widths[0], steps)
                    history = self.execute(cfg, store, progress)
                    final = history.get(steps, {}).get("train/loss", float("inf"))
                    values.append(final if final == final else float("inf"))  # NaN: diverged
                    run_ids.append(cfg.identity)
                per_lr.append(mean(values))
            losses[parametrization][width] = per_lr
        numbers: dict = {"learning_rates": list(LEARNING_RATES), "widths": list(widths)}
        shift = {}
        for parametrization, table in losses.items():
            best = {w: min(range(len(LEARNING_RATES)), key=table[w].__getitem__)
                    for w in widths}
            shift[parametrization] = max(abs(best[w] - best[widths[0]]) for w in widths)
            numbers[parametrization] = {
                "best_lr": {str(w): LEARNING_RATES[best[w]] for w in widths},
                "train_loss": {str(w): table[w] for w in widths},
                "max_shift_in_grid_steps": shift[parametrization],
            }
        if shift["mup"] <= 1 and shift["sp"] >= 2:
            verdict: VerdictName = "holds"
        elif shift["mup"] >= 2:
            verdict = "does not hold"
        else:
            verdict = "inconclusive"
        summary = (f"best lr by width {list(widths)}: µP "
                   f"{list(numbers['mup']['best_lr'].values())}, SP "
                   f"{list(numbers['sp']['best_lr'].values())}; shift µP {shift['mup']}, "
                   f"SP {shift['sp']} grid steps")
        return record(store, self.verdict(verdict, summary, numbers, seeds, run_ids, scale))
