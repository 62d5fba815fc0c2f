"""Claim from AdaNPC (Zhang et al., ICML 2023, arXiv:2304.12566; catalog #33): when the test
data arrive as a sequence of shifted domains, a k-NN memory that absorbs the test features
beats the source model's linear head and Tent on the later domains, while the memory's share
of test features grows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from heldout.adapt.memory import AdaNPC
from heldout.adapt.normalization import SourceModel, Tent
from heldout.claims.base import Claim, Verdict, named, record, seed_vote
from heldout.config import Component, OptimizerConfig, RunConfig
from heldout.core.adapter import Adapter, Source
from heldout.core.sampling import stream_generator
from heldout.registry import CLAIMS
from heldout.run.assembly import evaluation_model
from heldout.store.sqlite import Store
from heldout.tasks.domains import DigitsShift

__all__ = ["AdaNPCOnDomainSequence", "stream_domains"]

SEQUENCE = (1, 2, 3)  # rot30 → rot60 → rot90, streamed in this order
REFERENCE = "AdaNPC: Exploring Non-Parametric Classifier for Test-Time Adaptation " \
            "(arXiv:2304.12566)"


def stream_domains(adapter: Adapter, domains: Sequence[tuple[torch.Tensor, torch.Tensor]],
                   batch_size: int) -> list[float]:
    """Stream the domains through the online ``adapter`` in order, batch by batch, its state
    carried across batches and domains; the accuracy of its predictions on each domain."""
    accuracies = []
    for x, y in domains:
        correct = sum(int((adapter(xb).argmax(1) == yb).sum())
                      for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True))
        accuracies.append(correct / len(y))
    return accuracies


def rotation_config(seed: int, steps: int, held_out: tuple[int, ...]) -> RunConfig:
    """The run the adaptation claims on rotated digits train: a BatchNorm MLP (256-128,
    Adam 1e-3, batch 64) on ``digits_shift`` rotation with ``held_out`` domains."""
    return RunConfig(
        task=Component("digits_shift", {"shift": "rotation", "held_out": held_out}),
        model=Component("mlp", {"hidden": (256, 128), "batch_norm": True}),
        optimizer=OptimizerConfig(name="adam", lr=1e-3),
        measures=named("accuracy"),
        batch_size=64, steps=steps, eval_every=steps, checkpoint_every=steps, seed=seed,
    )


@CLAIMS.register(
    "adanpc-domain-sequence",
    summary="On rotated digits streamed as rot30 → rot60 → rot90, AdaNPC beats the source "
    "model and Tent on the later domains while its memory fills with test features.",
    papers=(33,),
    references=(REFERENCE,),
)
@dataclass
class AdaNPCOnDomainSequence(Claim):
    """An MLP (256-128, BatchNorm) is trained on digits at rotation 0 only (``digits_shift``,
    ``held_out=(1, 2, 3)``). Each held-out domain, all of its examples (none was trained on),
    shuffled with a seeded stream, is then fed in batches of ``batch_size`` in the order
    rot30 → rot60 → rot90 to three online adapters whose state is carried across the
    domains: ``source`` (the linear head, no adaptation), ``tent`` (defaults: Adam lr 1e-3,
    one step per batch) and ``adanpc`` (memory: the features of the rot0 training split;
    k = 10 since that memory holds only ~270 entries, τ = 0.1, β = 0.1 as in the paper).

    Rule, fixed before the first full run: a seed PASSES when on **each** later domain of
    the sequence (rot60 and rot90) AdaNPC's accuracy is strictly higher than the source
    model's and strictly higher than Tent's, **and** the memory's share of test entries
    strictly grows: after rot30 < after rot60 < after rot90. Verdict by :func:`seed_vote`
    over the seeds (3 at full scale). The ``ci`` scale trains 150 steps instead of 600.

    First full run (2026-12-03, seeds 0-2): HOLDS, 2/3 seeds; seed 1 fails on rot90, where
    Tent beats AdaNPC (0.212 vs 0.143).
    """

    statement = ("When adaptation targets a series of domains, AdaNPC's memory, which absorbs "
                 "test features, outperforms the source model and TTA baselines such as Tent, "
                 "without forgetting.")
    steps: int = 600  # training steps on rot0 (batch 64)
    batch_size: int = 64  # test batch size of the stream
    k: int = 10  # AdaNPC neighbours
    default_seeds = 3

    def config(self, seed: int, scale: str) -> RunConfig:
        return rotation_config(seed, 150 if scale == "ci" else self.steps, SEQUENCE)

    def run(self, seeds: Sequence[int], store: Store, *, scale: str = "full",
            progress: bool = False) -> Verdict:
        passed, numbers, run_ids = [], {}, []
        for seed in seeds:
            cfg = self.config(seed, scale)
            self.execute(cfg, store, progress)
            run_ids.append(cfg.identity)
            result = self.evaluate(cfg, store, seed)
            later = [1, 2]  # rot60, rot90 in the sequence
            shares = result["adanpc_test_share"]
            ok = (all(result["adanpc"][i] > result["source"][i] for i in later)
                  and all(result["adanpc"][i] > result["tent"][i] for i in later)
                  and shares[0] < shares[1] < shares[2])
            passed.append(ok)
            numbers[f"seed{seed}"] = {**result, "pass": ok}
        rows = list(numbers.values())

        def gaps(other: str) -> str:
            return ", ".join("/".join(f"{(r['adanpc'][i] - r[other][i]) * 100:+.1f}"
                                      for i in (1, 2)) for r in rows)

        summary = (f"AdaNPC − source on rot60/rot90: {gaps('source')} pp; AdaNPC − Tent: "
                   f"{gaps('tent')} pp; memory test share after each domain: "
                   + "; ".join("/".join(f"{s:.2f}" for s in r["adanpc_test_share"])
                               for r in rows)
                   + f"; {sum(passed)}/{len(seeds)} seeds pass")
        return record(store, self.verdict(seed_vote(passed), summary, numbers, seeds, run_ids,
                                          scale))

    def evaluate(self, cfg: RunConfig, store: Store, seed: int) -> dict[str, Any]:
        """Each adapter's accuracy per domain of the stream, and AdaNPC's memory share."""
        task = DigitsShift(shift="rotation", held_out=SEQUENCE)
        train = task.splits(seed).train
        everything = task.domains(seed)
        domains = []
        for index in SEQUENCE:
            x, y = everything[index].x, everything[index].y
            order = torch.randperm(len(y), generator=stream_generator(seed, f"stream@{index}"))
            domains.append((x[order], y[order]))
        model = evaluation_model(cfg.identity, store)
        source = Source(train.x, train.y, train.groups)
        result: dict[str, Any] = {}
        for name, adapter in (("source", SourceModel()), ("tent", Tent()),
                              ("adanpc", AdaNPC(k=self.k, tau=0.1, beta=0.1))):
            adapter.bind(model, source if adapter.needs_source else None)
            accuracies, shares = [], []
            for domain in domains:  # one stream: the state carries over to the next domain
                accuracies += stream_domains(adapter, [domain], self.batch_size)
                if isinstance(adapter, AdaNPC):
                    shares.append(adapter.test_share())
            result[name] = accuracies
            if shares:
                result["adanpc_test_share"] = shares
        result["domains"] = [task.domain_names()[i] for i in SEQUENCE]
        return result
