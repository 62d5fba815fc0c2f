"""Claim from model soups (Wortsman et al., ICML 2022, arXiv:2203.05482), as used by "Sparse
Model Soups" (Zimmer et al., ICLR 2024; catalog #60): averaging the weights of models
fine-tuned from one initialization with different hyper-parameters, greedily by held-out
accuracy, is at least as accurate as the best single model."""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from heldout.claims.base import Claim, Verdict, named, record, seed_vote
from heldout.config import Component, OptimizerConfig, RunConfig
from heldout.measures import Accuracy, evaluate
from heldout.methods.soups import greedy_soup, uniform_soup
from heldout.registry import CLAIMS
from heldout.run.assembly import build
from heldout.store.sqlite import Store

__all__ = ["GreedySoupBeatsBestIngredient", "soup_configs"]


def soup_configs(seed: int, pretrain_steps: int, finetune_steps: int
                 ) -> tuple[RunConfig, list[RunConfig]]:
    """A pre-training run, and six fine-tuning runs that start from its weights and differ in
    learning rate, label smoothing and batch order (the same data split for all)."""
    pretrain = RunConfig(
        task=Component("mnist1d", {"data_seed": seed}),
        model=Component("mlp", {"hidden": (256, 256)}),
        optimizer=OptimizerConfig(name="sgd", lr=0.05, momentum=0.9),
        measures=named("accuracy", "loss"),
        batch_size=128, steps=pretrain_steps, eval_every=pretrain_steps,
        checkpoint_every=pretrain_steps, seed=seed,
    )
    ingredients = [
        dataclasses.replace(
            pretrain, seed=seed * 100 + order, init_from=pretrain.identity,
            optimizer=dataclasses.replace(pretrain.optimizer, lr=lr),
            techniques=(Component("label_smoothing", {"smoothing": smoothing}),)
            if smoothing else (),
            steps=finetune_steps, eval_every=finetune_steps, checkpoint_every=finetune_steps,
        )
        for (lr, smoothing), order in itertools.product(
            ((0.01, 0.0), (0.03, 0.0), (0.01, 0.1)), (1, 2))
    ]
    return pretrain, ingredients


@CLAIMS.register(
    "greedy-soup",
    summary="A greedy soup of fine-tuned models is at least as accurate on held-out data as "
    "the best single model.",
    papers=(60,),
    references=("Model soups: averaging weights of multiple fine-tuned models improves "
                "accuracy without increasing inference time (arXiv:2203.05482)",),
)
@dataclass
class GreedySoupBeatsBestIngredient(Claim):
    """PASS per seed when the greedy soup (ingredients added in order of validation accuracy,
    kept if validation accuracy does not drop) has test accuracy >= that of the single
    ingredient with the best validation accuracy. The uniform soup is reported too."""

    statement = ("Averaging the weights of models fine-tuned from the same initialization, "
                 "greedily by held-out accuracy, improves on the best single model at no "
                 "inference cost.")
    pretrain_steps: int = 600  # pre-training steps (~20 epochs of MNIST-1D at batch 128)
    finetune_steps: int = 300  # steps of each of the six fine-tuning runs

    default_seeds = 3

    def run(self, seeds: Sequence[int], store: Store, *, scale: str = "full",
            progress: bool = False) -> Verdict:
        passed, numbers, run_ids = [], {}, []
        for seed in seeds:
            pretrain, ingredients = soup_configs(seed, self.pretrain_steps, self.finetune_steps)
            self.execute(pretrain, store, progress)
            run_ids.append(pretrain.identity)
            models = []
            for cfg in ingredients:
                self.execute(cfg, store, progress)
                trainer = build(cfg, store=store,
                                checkpoint_path=store.checkpoint_path(cfg.identity))
                trainer.resume()
                models.append(trainer.model)
                run_ids.append(cfg.identity)
            val, test = trainer.eval_data["val"], trainer.eval_data["test"]
            probe = copy.deepcopy(models[0])

            def accuracy(state_dict, split, probe=probe) -> float:
                probe.load_state_dict(state_dict)
                return evaluate(probe, {"s": split}, [Accuracy()])["s/accuracy"]

            val_scores = [accuracy(m.state_dict(), val) for m in models]
            best = max(range(len(models)), key=lambda i: val_scores[i])
            soup = greedy_soup(models, functools.partial(accuracy, split=val), scores=val_scores)
            result: dict[str, Any] = {
                "best_single_test": accuracy(models[best].state_dict(), test),
                "greedy_soup_test": accuracy(soup.state_dict, test),
                "uniform_soup_test": accuracy(uniform_soup(models), test),
                "greedy_soup_size": len(soup.chosen),
                "ingredient_val": val_scores,
            }
            ok = result["greedy_soup_test"] >= result["best_single_test"]
            passed.append(ok)
            numbers[f"seed{seed}"] = {**result, "pass": ok}
        rows = [n for n in numbers.values()]
        summary = ("greedy soup − best single test accuracy: "
                   + ", ".join(f"{(n['greedy_soup_test'] - n['best_single_test']) * 100:+.1f}"
                               for n in rows)
                   + " pp (uniform soup − best: "
                   + ", ".join(f"{(n['uniform_soup_test'] - n['best_single_test']) * 100:+.1f}"
                               for n in rows)
                   + f"); {sum(passed)}/{len(seeds)} seeds pass")
        return record(store, self.verdict(seed_vote(passed), summary, numbers, seeds, run_ids,
                                          scale))
