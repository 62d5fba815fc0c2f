"""Adapting a finished run at test time: an adapter streamed over held-out domains, with
checkpoints and a record in the store.

An :class:`AdaptConfig` names the source run, the adapter (a registered name and its
hyper-parameters) and the evaluation splits of the run's task to adapt on, in order
(``test@rot90``, or several: a continual stream, the adapter's state carried from one domain
to the next unless it is ``episodic``). :func:`adapt` binds the adapter to the run's
evaluation model (and, when it needs them, the run's labeled training data), streams each
domain's inputs in batches (online adapters) or hands it over whole (transductive adapters),
and computes the run's measures on the adapted predictions and, for comparison, on the
source model's, per domain. The adapter's state and the predictions so far are checkpointed
every ``checkpoint_every`` batches, so a killed adaptation resumes exactly where it stopped
(same predictions, bit for bit). The record (``adaptations`` table) keys the adaptation by
the hash of its config; a done adaptation is read back, never run again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from heldout.config import Component, ConfigError, check_component
from heldout.core.adapter import Adapter, Source
from heldout.core.measure import evaluate
from heldout.engine.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from heldout.registry import ADAPTERS, MEASURES
from heldout.run.assembly import finished_trainer
from heldout.store.records import error_message
from heldout.store.sqlite import Store

__all__ = ["AdaptConfig", "AdaptResult", "adapt", "adapt_stream", "adaptation_id"]

DEFAULT_MEASURES = ("accuracy", "ece")


@dataclass(frozen=True)
class AdaptConfig:
    """One adaptation: source run × adapter × the domains streamed, in order."""

    run: str  # the finished source run (id, unique prefix or name)
    adapter: Any  # a registered adapter: a name, {name: ..., **params} or a Component
    domains: tuple[str, ...]  # evaluation splits of the run's task, streamed in this order
    batch_size: int = 64  # test batch size (online adapters)
    shuffle: bool = True  # stream each domain in a seeded random order (else as stored)
    seed: int = 0  # the stream order's seed
    measures: tuple[str, ...] = DEFAULT_MEASURES  # registered measures, on each domain
    checkpoint_every: int = 20  # batches between checkpoints of the adapter's state
    _source: Any = field(default=None, repr=False, compare=False)  # resolved run id

    def __post_init__(self) -> None:
        adapter = self.adapter
        if isinstance(adapter, str | Mapping):
            adapter = Component(adapter) if isinstance(adapter, str) else Component(
                adapter["name"], {k: v for k, v in adapter.items() if k != "name"})
        object.__setattr__(self, "adapter", check_component(ADAPTERS, adapter, "adapter"))
        if isinstance(self.domains, str):
            object.__setattr__(self, "domains", (self.domains,))
        object.__setattr__(self, "domains", tuple(self.domains))
        object.__setattr__(self, "measures", tuple(self.measures))
        if not self.domains:
            raise ConfigError("domains: name at least one split to adapt on, e.g. test@rot90")
        if len(set(self.domains)) != len(self.domains):
            raise ConfigError(f"domains: listed twice in {list(self.domains)}")
        for key in ("batch_size", "checkpoint_every"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{key}: must be a whole number >= 1, got {value!r}")
        for name in self.measures:
            if name not in MEASURES:
                raise ConfigError(f"measures: unknown measure {name!r}; valid measures: "
                                  f"{', '.join(MEASURES.names())}")
        if getattr(ADAPTERS.get(self.adapter.name).cls, "needs_support", False):
            raise ConfigError(f"adapter {self.adapter.name!r} needs labeled supports with each "
                              "query set (few-shot episodes): use it on episodes "
                              "(heldout.tasks.few_shot) rather than on a run's domains")

    def to_dict(self, run_id: str) -> dict[str, Any]:
        return {"run": run_id, "adapter": {"name": self.adapter.name,
                                           **dict(self.adapter.params)},
                "domains": list(self.domains), "batch_size": self.batch_size,
                "shuffle": self.shuffle, "seed": self.seed, "measures": list(self.measures),
                "checkpoint_every": self.checkpoint_every}


def adaptation_id(config: Mapping[str, Any]) -> str:
    """The id of an adaptation: a hash of its config (the source run's full id included)."""
    text = json.dumps(config, sort_keys=True, default=str)
    return "a" + hashlib.sha256(text.encode()).hexdigest()[:11]


@dataclass(frozen=True)
class AdaptResult:
    """An adaptation's record: its id, the source run and the metrics, per domain, of the
    source model (``before``) and of the adapted predictions (``after``)."""

    id: str
    run: str
    adapter: str
    before: dict[str, float]
    after: dict[str, float]
    seconds: float


def _order(n: int, shuffle: bool, seed: int, domain: str) -> Tensor:
    if not shuffle:
        return torch.arange(n)
    generator = torch.Generator().manual_seed(
        seed * 1_000_003 + int(hashlib.sha256(domain.encode()).hexdigest()[:8], 16))
    return torch.randperm(n, generator=generator)


def adapt_stream(
    adapter: Adapter,
    domains: Sequence[Tensor],
    *,
    batch_size: int = 64,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 20,
) -> list[Tensor]:
    """Predict each domain's inputs (in order) with a bound ``adapter``; returns the logits
    per domain. Online adapters see batches of ``batch_size`` and carry their state across
    domains (reset at each domain when ``episodic``); transductive ones see each domain whole.
    With ``checkpoint``, the state and the logits so far are saved every
    ``checkpoint_every`` batches and at each domain's end, and a stream started again with
    the same arguments resumes from them exactly."""
    done: list[Tensor] = []
    partial: list[Tensor] = []
    start_domain, start_batch, batches_since = 0, 0, 0
    if checkpoint is not None and has_checkpoint(checkpoint):
        saved = load_checkpoint(checkpoint)
        adapter.load_state_dict(saved["adapter"])
        done, partial = list(saved["done"]), list(saved["partial"])
        start_domain, start_batch = int(saved["domain"]), int(saved["batch"])

    def save(domain: int, batch: int) -> None:
        if checkpoint is not None:
            save_checkpoint({"adapter": adapter.state_dict(), "done": done,
                             "partial": partial, "domain": domain, "batch": batch},
                            checkpoint, keep_previous=True)

    for index in range(start_domain, len(domains)):
        x = domains[index]
        if adapter.mode == "transductive":
            done.append(adapter(x).detach())
            save(index + 1, 0)
            continue
        first = start_batch if index == start_domain else 0
        if first == 0 and adapter.episodic:
            adapter.reset()
        starts = range(first * batch_size, len(x), batch_size)
        for number, begin in enumerate(starts, start=first):
            partial.append(adapter(x[begin: begin + batch_size]).detach())
            batches_since += 1
            if batches_since >= checkpoint_every and begin + batch_size < len(x):
                save(index, number + 1)
                batches_since = 0
        done.append(torch.cat(partial) if partial else x.new_zeros((0, 0)))
        partial = []
        save(index + 1, 0)
    return done


def adapt(cfg: AdaptConfig, store: Store) -> AdaptResult:
    """Run (or read back) the adaptation ``cfg`` of a finished run of ``store``."""
    record = store.get_run(cfg.run)
    if record.status != "done":
        raise ValueError(f"run {record.id} is {record.status}; only a finished run is adapted")
    config = cfg.to_dict(record.id)
    ident = adaptation_id(config)
    for existing in store.adaptations(record.id):
        if existing["id"] == ident and existing["status"] == "done":
            return _result(existing)
    trainer, model = finished_trainer(record.id, store)
    splits = trainer.eval_data
    missing = [d for d in cfg.domains if d not in splits]
    if missing:
        raise KeyError(f"run {record.id} has no split {missing[0]!r}; its splits: "
                       f"{', '.join(splits)}")
    adapter: Adapter = cfg.adapter.take(ADAPTERS)
    train = splits["train"]
    source = Source(train.x, train.y, getattr(train, "groups", None))
    adapter.bind(model, source if adapter.needs_source else None)

    lease = store.acquire_lease(ident)
    store.start_adaptation(ident, record.id, cfg.adapter.name, config)
    started = time.time()
    try:
        orders = [_order(len(splits[d].y), cfg.shuffle, cfg.seed, d) for d in cfg.domains]
        inputs = [splits[d].x[order] for d, order in zip(cfg.domains, orders, strict=True)]
        path = store.run_dir(record.id) / "adaptations" / f"{ident}.pt"
        logits = adapt_stream(adapter, inputs, batch_size=cfg.batch_size, checkpoint=path,
                              checkpoint_every=cfg.checkpoint_every)
        measures = [MEASURES.build(name) for name in cfg.measures]
        data = {}
        for domain, order in zip(cfg.domains, orders, strict=True):
            split = splits[domain]
            data[domain] = dataclasses.replace(split, **{
                k: getattr(split, k)[order] for k in ("x", "y", "groups", "clean_y")
                if getattr(split, k, None) is not None})
        outputs = {d: (z, data[d].y) for d, z in zip(cfg.domains, logits, strict=True)}
        after = evaluate(model, data, measures, outputs=outputs)
        before = evaluate(model, data, measures)
    except BaseException as err:
        store.finish_adaptation(ident, status="failed", seconds=time.time() - started,
                                error=error_message(err))
        store.release_lease(lease)
        raise
    metrics = {"before": before, "after": after}
    store.finish_adaptation(ident, status="done", seconds=time.time() - started,
                            metrics=metrics)
    store.release_lease(lease)
    return _result(store.get_adaptation(ident))


def _result(row: Mapping[str, Any]) -> AdaptResult:
    metrics = row["metrics"]
    return AdaptResult(row["id"], row["source_run"], row["adapter"], metrics.get("before", {}),
                       metrics.get("after", {}), row.get("seconds") or 0.0)
