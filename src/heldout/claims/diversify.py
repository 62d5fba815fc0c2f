"""Claim from "Unraveling the Key Components of OOD Generalization via Diversification"
(arXiv:2312.16313, catalog #45) on DivDis (Lee, Yao, Finn, arXiv:2202.03418): on a
spurious-cue task one of the diversified heads reaches a far higher worst-group accuracy
than ERM, and how good the best head is depends on the unlabelled target distribution the
heads disagree on."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from heldout.claims.base import Claim, Verdict, named, record, seed_vote
from heldout.config import Component, OptimizerConfig, RunConfig
from heldout.measures.groups import group_metrics
from heldout.methods.diversify import head_model, select_head_by_entropy, select_head_by_labels
from heldout.registry import CLAIMS
from heldout.run.assembly import finished_trainer
from heldout.store.sqlite import Store

__all__ = ["DiversifyHeadBeatsERM"]

REFERENCE = "Diversify and Disambiguate: Learning From Underspecified Data (arXiv:2202.03418)"
AGREEMENT = (0.9, 0.8, 0.5)  # P(cue = label): two training domains, the test domain
TARGETS = {"independent": 0.5, "correlated": 0.95}  # the target sets' P(cue = label)
MARGIN_OVER_ERM = 0.20  # 20 pp
MARGIN_OVER_CORRELATED = 0.10  # 10 pp
LABELLED = 16  # labelled target examples for head selection (reported, outside the rule)


@CLAIMS.register(
    "diversify-head-beats-erm",
    summary="On the spurious-cue suite a DivDis head has a far higher worst-group accuracy "
    "than ERM when the unlabelled target breaks the cue, and not when it keeps it.",
    papers=(45,),
    references=(REFERENCE,),
)
@dataclass
class DiversifyHeadBeatsERM(Claim):
    """``spurious`` on 8x8 digits (label noise 0.25; cue agreement 0.9 and 0.8 in the two
    training domains, 0.5 in the test domain, so the test split's four groups label × cue
    are about equal in size). A linear classifier (``mlp`` with no hidden layer; Adam 1e-2,
    batch 64) is trained three times from the same initialization and batch order: plain
    (ERM), and with ``diversify`` (2 heads, defaults λ_MI = 10, λ_prior = 1) on two
    unlabelled target sets made of the test domain's images with the cue redrawn at
    agreement 0.5 ("independent": cue and shape independent) or 0.95 ("correlated": the cue
    agrees with the label as in training). The target sets are the ``test`` split of
    ``spurious`` with that third agreement (its labels are never read).

    Rule, fixed before the first full run: per seed, WGA(h) is a classifier's worst-group
    accuracy on the test split (``group_accuracy`` measure's rule, groups label × cue), and
    best(target) the larger WGA of the two heads trained with that target. A seed PASSES
    when both
      (a) best(independent) ≥ WGA(ERM) + 20 pp, and
      (b) best(independent) ≥ best(correlated) + 10 pp
    (the winning head depends on the unlabelled distribution: only the target where the
    cue is uninformative yields a head off the cue). Verdict by :func:`seed_vote` over the
    seeds (3 at full scale). Reported outside the rule: the head chosen by accuracy on 16
    labelled examples of the test domain's validation split (``val@agree50``), the
    label-free choice (lowest entropy on the target), and each head's agreement with the
    cue on the test split. The ``ci`` scale trains 150 steps instead of 1000.

    Before the rule was written, a pilot outside the store (seeds 0 and 1, the same settings)
    checked that the method runs and chose the linear model: with a 128-unit hidden layer the
    heads drove the MI to ~0 on the unseen target images while both relied on the cue (the
    catalog paper's point that the model class matters).

    First full run (2026-12-03, seeds 0-2, ``heldout claims run diversify-head-beats-erm``):
    HOLDS, 3/3 seeds. Best head WGA with the independent / correlated target vs ERM: 0.35 /
    0.15 vs 0.00, 0.33 / 0.11 vs 0.00, 0.21 / 0.10 vs 0.00 (seed 2 passes (b) by a hair).
    The winning head is head 0, 1, 1; its cue agreement 0.58, 0.65, 0.73 (ERM: 0.98-1.0),
    so it leans on the cue less but not nil: a linear shape-only model reaches ~0.6 WGA here.
    16 labels chose the winning head in 2/3 seeds, the entropy rule in 1/3.
    """

    statement = ("Diversification methods are highly sensitive to the distribution of the "
                 "unlabeled data used for diversification.")
    steps: int = 1000  # training steps (batch 64)
    default_seeds = 3

    def config(self, seed: int, scale: str) -> RunConfig:
        steps = 150 if scale == "ci" else self.steps
        return RunConfig(
            task=Component("spurious", {"cue_agreement": AGREEMENT}),
            model=Component("mlp", {"hidden": ()}),
            optimizer=OptimizerConfig(name="adam", lr=1e-2),
            measures=named("accuracy", "group_accuracy"),
            batch_size=64, steps=steps, eval_every=steps, checkpoint_every=steps, seed=seed,
        )

    def diversified(self, cfg: RunConfig, agreement: float) -> RunConfig:
        target = f"{{cue_agreement: [0.9, 0.8, {agreement}]}}"
        return dataclasses.replace(cfg, techniques=(Component("diversify", {
            "num_heads": 2, "target_task": "spurious", "target_params": target}),))

    def run(self, seeds: Sequence[int], store: Store, *, scale: str = "full",
            progress: bool = False) -> Verdict:
        passed, numbers, run_ids = [], {}, []
        for seed in seeds:
            cfg = self.config(seed, scale)
            variants = {name: self.diversified(cfg, p) for name, p in TARGETS.items()}
            run_ids += [cfg.identity, *(c.identity for c in variants.values())]
            result = self.evaluate(cfg, variants, store)
            best = {name: max(result[name]["wga"]) for name in TARGETS}
            ok = (best["independent"] >= result["erm"]["wga"] + MARGIN_OVER_ERM
                  and best["independent"] >= best["correlated"] + MARGIN_OVER_CORRELATED)
            passed.append(ok)
            numbers[f"seed{seed}"] = {**result, "best": best, "pass": ok}
        rows = list(numbers.values())
        summary = ("worst-group accuracy, best head (independent target / correlated target) "
                   "vs ERM: " + "; ".join(
                       f"{r['best']['independent']:.2f} / {r['best']['correlated']:.2f} vs "
                       f"{r['erm']['wga']:.2f}" for r in rows)
                   + f"; {sum(passed)}/{len(seeds)} seeds pass")
        return record(store, self.verdict(seed_vote(passed), summary, numbers, seeds, run_ids,
                                          scale))

    def evaluate(self, cfg: RunConfig, variants: dict[str, RunConfig],
                 store: Store) -> dict[str, Any]:
        erm, data = self.train(cfg, store)
        out: dict[str, Any] = {"erm": _scores(erm, data["test"])}
        labelled = data["val@agree50"]
        for name, variant in variants.items():
            net, _ = self.train(variant, store)
            heads = [head_model(net, k) for k in range(len(net.heads))]  # type: ignore[arg-type]
            scores = [_scores(h, data["test"]) for h in heads]
            with torch.no_grad():
                few = net.head_logits(labelled.x[:LABELLED])  # type: ignore[operator]
                unlabelled = net.head_logits(data["test"].x)  # type: ignore[operator]
            out[name] = {
                "wga": [s["wga"] for s in scores],
                "accuracy": [s["accuracy"] for s in scores],
                "cue_agreement": [s["cue_agreement"] for s in scores],
                "chosen_by_labels": select_head_by_labels(few, labelled.y[:LABELLED]),
                "chosen_by_entropy": select_head_by_entropy(unlabelled),
            }
        return out

    def train(self, cfg: RunConfig, store: Store) -> tuple[nn.Module, dict[str, Any]]:
        """Train ``cfg`` (or reuse its finished run): its final model (eval mode) and data."""
        self.execute(cfg, store)
        trainer = finished_trainer(cfg.identity, store)[0]
        return trainer.model.eval(), trainer.eval_data


def _scores(model: nn.Module, split: Any) -> dict[str, float]:
    with torch.no_grad():
        logits: Tensor = model(split.x)
    cue = (split.x[:, -1] > 0).long()
    predicted = logits.argmax(-1)
    return {
        "wga": group_metrics(logits, split.y, split.groups)["worst_group_accuracy"],
        "accuracy": float((predicted == split.y).double().mean()),
        "cue_agreement": float((predicted == cue).double().mean()),
    }
