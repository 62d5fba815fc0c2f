"""Claim from "Domain-Specific Risk Minimization for Out-of-Distribution Generalization"
(Zhang et al., KDD 2023, arXiv:2208.08661; catalog #13): per-domain heads with per-sample,
entropy-guided selection and online steering beat ERM with one head on an unseen domain."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from heldout.adapt.drm import DRMAdapter
from heldout.claims.adanpc import rotation_config, stream_domains
from heldout.claims.base import Claim, Verdict, record, seed_vote
from heldout.config import Component, RunConfig
from heldout.core.sampling import stream_generator
from heldout.registry import CLAIMS
from heldout.run.assembly import finished_trainer
from heldout.store.sqlite import Store
from heldout.tasks.domains import DigitsShift

__all__ = ["DRMBeatsERM"]

HELD_OUT = 3  # rot90; trained on rot0, rot30, rot60
REFERENCE = ("Domain-Specific Risk Minimization for Out-of-Distribution Generalization "
             "(arXiv:2208.08661)")


@CLAIMS.register(
    "drm-beats-erm",
    summary="On rotated digits with rot90 held out, DRM (a head per training domain, "
    "entropy-based selection, online steering) beats ERM with one head.",
    papers=(13,),
    references=(REFERENCE,),
)
@dataclass
class DRMBeatsERM(Claim):
    """``digits_shift`` (rotation 0/30/60/90) with rot90 held out: an MLP (256-128,
    BatchNorm, Adam 1e-3, batch 64) is trained on rot0, rot30 and rot60 twice from the same
    initialization and batch order, once plain (ERM, one head) and once with the ``drm``
    technique (three heads, each on its domain; the groups are the training split's domain
    indices). All examples of rot90 (none was trained on), shuffled by a seeded stream, are
    then streamed in batches of 64: ERM predicts with its head (the ``source`` adapter), DRM
    through the ``drm`` adapter with its defaults (lowest-entropy head per sample, one Adam
    step at lr 1e-4 on the heads with pseudo-labels of confidence ≥ 0.9). DRM's selection
    without the online steps is reported too, outside the rule.

    Rule, fixed before the first full run: a seed PASSES when DRM's accuracy on rot90 is
    strictly higher than ERM's. Verdict by :func:`seed_vote` over the seeds (3 at full
    scale). The ``ci`` scale trains 150 steps instead of 600. Both runs are stored (the
    Trainer hands DRM the training split's domain indices). (Until 2026-12-03 the runs were
    trained by hand outside the store, with the groups given by hand; same settings.)

    First full run (2026-12-03, seeds 0-2): DOES NOT HOLD, 1/3 seeds (DRM − ERM: +1.8,
    −1.1, −5.8 pp); the online steering changed almost nothing at these defaults.
    """

    statement = ("Modelling the source domains separately and steering the source hypotheses "
                 "per arriving target sample significantly outperforms competitive baselines "
                 "on unseen domains.")
    steps: int = 600  # training steps (batch 64)
    batch_size: int = 64  # test batch size of the stream
    default_seeds = 3

    def config(self, seed: int, scale: str) -> RunConfig:
        return rotation_config(seed, 150 if scale == "ci" else self.steps, (HELD_OUT,))

    def run(self, seeds: Sequence[int], store: Store, *, scale: str = "full",
            progress: bool = False) -> Verdict:
        passed, numbers, run_ids = [], {}, []
        for seed in seeds:
            cfg = self.config(seed, scale)
            result = self.evaluate(cfg, seed, store)
            run_ids += [cfg.identity, dataclasses.replace(cfg, techniques=(
                Component("drm", {"num_domains": 3}),)).identity]
            ok = result["drm"] > result["erm"]
            passed.append(ok)
            numbers[f"seed{seed}"] = {**result, "pass": ok}
        rows = list(numbers.values())
        summary = ("rot90 accuracy DRM − ERM: "
                   + ", ".join(f"{(r['drm'] - r['erm']) * 100:+.1f}" for r in rows)
                   + " pp (DRM selection without steering − ERM: "
                   + ", ".join(f"{(r['drm_select_only'] - r['erm']) * 100:+.1f}" for r in rows)
                   + f" pp); {sum(passed)}/{len(seeds)} seeds pass")
        return record(store, self.verdict(seed_vote(passed), summary, numbers, seeds, run_ids,
                                          scale))

    def evaluate(self, cfg: RunConfig, seed: int, store: Store) -> dict[str, Any]:
        task = DigitsShift(shift="rotation", held_out=(HELD_OUT,))
        domain = task.domains(seed)[HELD_OUT]
        order = torch.randperm(len(domain.y), generator=stream_generator(seed, "stream"))
        stream = [(domain.x[order], domain.y[order])]
        drm_cfg = dataclasses.replace(cfg, techniques=(Component("drm", {"num_domains": 3}),))
        erm, drm = (self.train(c, store) for c in (cfg, drm_cfg))
        with torch.no_grad():
            erm_accuracy = sum(int((erm(x).argmax(1) == y).sum()) for x, y in stream) / len(order)
        return {
            "erm": erm_accuracy,
            "drm": stream_domains(DRMAdapter(drm), stream, self.batch_size)[0],
            "drm_select_only": stream_domains(DRMAdapter(drm, steps=0), stream,
                                              self.batch_size)[0],
        }

    def train(self, cfg: RunConfig, store: Store) -> nn.Module:
        """Train ``cfg`` (or reuse its finished run) and return its final model, eval mode."""
        self.execute(cfg, store)
        return finished_trainer(cfg.identity, store)[0].model.eval()
