"""Claim of "Test-time Batch Statistics Calibration for Covariate Shift" (You, Li, Zhao,
arXiv:2110.04065; catalog #43): mixing source and test-batch BatchNorm statistics (α-BN)
beats both under corruption shift with small test batches, holds its own with large ones, and
the Core loss adds to it."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import mean
from typing import Any

from torch import Tensor, nn

from heldout.claims.base import STEP_DECAY, Claim, Verdict, named, record, seed_vote
from heldout.config import Component, OptimizerConfig, RunConfig
from heldout.core.adapter import Adapter
from heldout.registry import ADAPTERS, CLAIMS, TASKS
from heldout.run.assembly import evaluation_model
from heldout.store.sqlite import Store
from heldout.tasks.base import Splits

__all__ = ["AlphaBNSmallBatch", "domain_accuracies", "stream_accuracy"]



def stream_accuracy(adapter: Adapter, x: Tensor, y: Tensor, batch_size: int) -> float:
    """Accuracy of an online adapter fed ``x`` in order, ``batch_size`` rows at a time, after
    a reset (episodic: each domain starts from the source model)."""
    adapter.reset()
    correct = 0
    for start in range(0, len(x), batch_size):
        logits = adapter(x[start:start + batch_size])
        correct += int((logits.argmax(dim=-1) == y[start:start + batch_size]).sum())
    return correct / len(x)


def domain_accuracies(model: nn.Module, splits: Splits, domains: Sequence[str], adapter: str,
                      split: str, batch: int | None, alpha: float | None = None
                      ) -> dict[str, float]:
    """Per domain, the accuracy of the registered ``adapter`` (at ``alpha`` if given) bound
    to ``model``, streamed over the domain's ``split`` part ("test" or "val", from
    ``splits.extra``) in batches of ``batch`` (None: the whole part at once)."""
    bound = ADAPTERS.build(adapter, **({} if alpha is None else {"alpha": alpha})).bind(model)
    out = {}
    for domain in domains:
        part = splits.extra[f"{split}@{domain}"]
        out[domain] = stream_accuracy(bound, part.x, part.y, batch or len(part))
    return out


ALPHA_GRID = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)  # the candidates of the selected variant


def select_alpha(evaluate: Callable[..., dict[str, float]], batch: int | None) -> float:
    """The α of ``ALPHA_GRID`` with the best mean α-BN accuracy on the domains' val parts
    (``evaluate`` is :func:`domain_accuracies` with its model, splits and domains bound)."""
    scores = {a: mean(evaluate("alpha_bn", "val", batch, a).values()) for a in ALPHA_GRID}
    return max(ALPHA_GRID, key=scores.__getitem__)


@CLAIMS.register(
    "alpha-bn-small-batch",
    summary="Under corruption shift (severity >= 3), α-BN with test batch 16 beats source and "
    "test-batch statistics, matches BN adaptation with large batches; Core adds to α-BN.",
    papers=(43,),
    references=("Test-time Batch Statistics Calibration for Covariate Shift "
                "(arXiv:2110.04065)",),
)
@dataclass
class AlphaBNSmallBatch(Claim):
    """A cnn2d (channels 16, 32, BatchNorm2d) trains on the clean digits of
    ``digits_corruption`` (SGD, lr 0.05, momentum 0.9, batch 64, lr / 10 at 50% and 75% of
    the steps); each corrupted domain of severity
    >= 3 (four corruptions x severities 3, 4, 5) is then streamed through the adapters
    ``source``, ``bn_adapt``, ``alpha_bn`` and ``core`` (Adam lr 1e-3, one step per batch,
    temperature 1; same α as α-BN), each reset at the start of every domain, in test batches
    of 16 and in one batch of the whole domain's test part (~431 images). ``acc(m, b)`` is
    method m's accuracy at batch b, averaged over the domains.

    α: the verdict uses the paper's default α = 0.1, fixed (no labels used). As a reference,
    the numbers also carry a *selected* variant: α picked per batch size from
    ``ALPHA_GRID`` (0.05 … 0.9) by α-BN's mean accuracy on the corrupted domains' val parts
    (labeled, disjoint from their test parts: test-domain validation, an optimistic
    protocol), with the same three checks and their own seed vote.

    Rule (written before the first full run). A seed PASSES when all three hold:
      (1) small batches: ``acc(alpha_bn, 16) > acc(source, 16)`` and
          ``acc(alpha_bn, 16) > acc(bn_adapt, 16)``;
      (2) large batches: ``acc(alpha_bn, all) >= acc(bn_adapt, all) − 0.01`` (1 point of
          tolerance);
      (3) Core adds: ``acc(core, 16) > acc(alpha_bn, 16)``.
    The verdict is :func:`seed_vote` over the seeds; the numbers also carry each part's own
    seed vote, so a failure says which part failed. (Core's predictions precede its update of
    the batch, so with one batch per domain it equals α-BN: it is compared at batch 16 only.)

    Change after the first full run (the rule untouched): that run trained at a constant lr
    and recorded DOES NOT HOLD (parts 1 and 2 fail on 3/3 seeds, part 3 holds), but seed 1's
    source model had stale BatchNorm running statistics (55% clean test accuracy in eval
    mode, 94% with test-batch statistics), which handicaps every method that reads the source
    statistics. The recipe now decays the lr (``STEP_DECAY``) so the running statistics
    settle on the final weights; the verdict reported is that of the rerun.
    """

    statement = ("Mixing source and test-batch BatchNorm statistics (α-BN) beats both under "
                 "covariate shift with small test batches and is at least as good as test "
                 "statistics with large ones; the Core loss improves on α-BN.")
    steps: int = 400  # training steps on the clean digits (~40 epochs of 646 images)
    ci_steps: int = 120  # at scale="ci": a smoke test of the protocol, not evidence
    alpha: float = 0.1  # α-BN's (and Core's) weight on the test-batch statistics
    small_batch: int = 16  # the small test batch
    tolerance: float = 0.01  # rule (2): α-BN may trail BN adaptation by this with big batches

    def config(self, seed: int, scale: str) -> RunConfig:
        """The source run: cnn2d with BatchNorm on the clean domain of the suite."""
        ci = scale == "ci"
        steps = self.ci_steps if ci else self.steps
        return RunConfig(
            task=Component("digits_corruption", {
                "data_seed": seed,
                "corruptions": ("gaussian_noise", "contrast") if ci else
                ("gaussian_noise", "blur", "contrast", "brightness"),
                "severities": (5,) if ci else (3, 4, 5)}),
            model=Component("cnn2d", {"channels": (16, 32), "batch_norm": True}),
            optimizer=OptimizerConfig(name="sgd", lr=0.05, momentum=0.9),
            techniques=(STEP_DECAY,),
            measures=named("accuracy"),
            batch_size=64, steps=steps, eval_every=steps, checkpoint_every=steps, seed=seed,
        )

    def run(self, seeds: Sequence[int], store: Store, *, scale: str = "full",
            progress: bool = False) -> Verdict:
        votes: dict[str, dict[str, list[bool]]] = {"fixed": {}, "selected": {}}
        numbers: dict[str, Any] = {}
        run_ids = []
        for seed in seeds:
            cfg = self.config(seed, scale)
            history = self.execute(cfg, store, progress)
            run_ids.append(cfg.identity)
            task = TASKS.build(cfg.task.name, **cfg.task.params)
            evaluate = functools.partial(domain_accuracies,
                                         evaluation_model(cfg.identity, store),
                                         task.splits(cfg.seed), task.domain_names()[1:])
            chosen = {"16": self.alpha, "all": self.alpha}
            result: dict[str, Any] = {"clean_test_accuracy":
                                      history[max(history)].get("test@clean/accuracy")}
            for variant in ("fixed", "selected"):
                if variant == "selected":
                    chosen = {label: select_alpha(evaluate, batch)
                              for label, batch in (("16", self.small_batch), ("all", None))}
                per_domain = {
                    "source@16": evaluate("source", "test", self.small_batch),
                    "bn_adapt@16": evaluate("bn_adapt", "test", self.small_batch),
                    "bn_adapt@all": evaluate("bn_adapt", "test", None),
                    "alpha_bn@16": evaluate("alpha_bn", "test", self.small_batch,
                                            chosen["16"]),
                    "alpha_bn@all": evaluate("alpha_bn", "test", None, chosen["all"]),
                    "core@16": evaluate("core", "test", self.small_batch, chosen["16"]),
                }
                acc = {key: mean(values.values()) for key, values in per_domain.items()}
                checks = {
                    "small_batch": acc["alpha_bn@16"] > max(acc["source@16"],
                                                            acc["bn_adapt@16"]),
                    "large_batch": acc["alpha_bn@all"] >= acc["bn_adapt@all"] - self.tolerance,
                    "core_adds": acc["core@16"] > acc["alpha_bn@16"],
                }
                for key, ok in checks.items():
                    votes[variant].setdefault(key, []).append(ok)
                result[variant] = {"alpha": chosen, "mean_accuracy": acc,
                                   "per_domain": per_domain, **checks,
                                   "pass": all(checks.values())}
            numbers[f"seed{seed}"] = result
        passed = {variant: [all(p) for p in zip(*parts.values(), strict=True)]
                  for variant, parts in votes.items()}
        for variant, parts in votes.items():
            numbers[f"{variant}_part_votes"] = {k: seed_vote(v) for k, v in parts.items()}
        numbers["selected_verdict"] = seed_vote(passed["selected"])
        rows = [numbers[f"seed{s}"]["fixed"]["mean_accuracy"] for s in seeds]

        def column(key: str) -> str:
            return "/".join(f"{100 * r[key]:.1f}" for r in rows)

        summary = (f"α = {self.alpha}, mean accuracy over the corrupted domains per seed — "
                   f"batch {self.small_batch}: source {column('source@16')}, bn_adapt "
                   f"{column('bn_adapt@16')}, alpha_bn {column('alpha_bn@16')}, core "
                   f"{column('core@16')}; whole domain: bn_adapt {column('bn_adapt@all')}, "
                   f"alpha_bn {column('alpha_bn@all')}; parts {numbers['fixed_part_votes']}; "
                   f"{sum(passed['fixed'])}/{len(seeds)} seeds pass (α selected on val: "
                   f"{numbers['selected_verdict']}, parts {numbers['selected_part_votes']})")
        return record(store, self.verdict(seed_vote(passed["fixed"]), summary, numbers, seeds,
                                          run_ids, scale))
