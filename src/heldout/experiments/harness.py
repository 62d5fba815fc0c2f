"""An evaluation harness for any predictor across shift suites, with the tables of sweeps.

:func:`evaluate_predictor` scores a predictor on every held-out domain (``test@<domain>``
split) of every multi-domain task it is given, over seeds, and returns the same
:class:`~heldout.experiments.aggregate.Table` a sweep's model selection gives (mean ± 95%
Student-t interval over seeds, one row per domain plus an ``average`` row; export with
:func:`~heldout.experiments.aggregate.to_csv` / :func:`~heldout.experiments.aggregate.to_markdown`).
A predictor is any of

* a **run id** (a finished heldout run in ``store``): its evaluation model, through
  :func:`heldout.run.assembly.finished_trainer`. Without ``suites`` the harness reads the
  run's own evaluation data (its task at its seed), so no training example leaks into the
  test; with ``suites`` it scores the model on those, at ``seeds`` (a suite's split depends
  on its seed: at a seed other than the run's, or another suite built from the same source
  data, the test parts may hold the run's training examples; fix ``data_seed`` or keep
  ``suites=None``);
* an **adapter** bound to a model (:class:`~heldout.core.adapter.Adapter`): online adapters
  see each domain in batches (an ``episodic`` one is reset at each domain); transductive ones
  see the whole domain at once; the few-shot ones (``needs_support``, e.g. the k-NN
  in-context learner :class:`~heldout.adapt.in_context.KNNInContext`) get a context of
  ``shots`` labelled examples per class drawn by a generator seeded by the seed
  (:func:`~heldout.adapt.in_context.sample_context`) from the suite's training split
  (``context="train"``: source-domain examples) or from the scored domain's own ``val@``
  split (``context="target"``: labelled examples of the target domain, disjoint from its
  test part, as GPT-4V's in-context examples were);
* an ``nn.Module`` (evaluated in eval mode) or any callable ``x -> logits``.

The measures are the registered ones (:data:`~heldout.registry.MEASURES`: ``accuracy``,
``ece``, ``group_accuracy``, ...), computed by :func:`heldout.core.measure.evaluate` from the
predictor's logits, so every number means what it means in a run. The rows' selection rule
is ``harness``: nothing is selected, the predictor is scored as given.

This is the protocol of Han et al.'s study of GPT-4V under distribution shift: a fixed
predictor scored zero-shot across many shifted domains, and again with in-context
examples of the target domain, against local models.

References:
    Han et al. How Well Does GPT-4V(ision) Adapt to Distribution Shifts? A Preliminary
    Investigation. arXiv:2312.07424 (catalog #14).
    Gulrajani, Lopez-Paz. In Search of Lost Domain Generalization. arXiv:2007.01434.

Example:
    >>> import torch
    >>> table = evaluate_predictor(lambda x: torch.zeros(len(x), 10), ["digits_shift"],
    ...                            seeds=(0, 1))
    >>> [row["held_out"] for row in table], table.columns[-1]
    (['rot0', 'average'], 'accuracy')
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from heldout.adapt.in_context import sample_context
from heldout.config import config_from_dict
from heldout.core.adapter import Adapter
from heldout.core.measure import Measure, evaluate
from heldout.experiments.aggregate import Table, aggregate
from heldout.experiments.model_selection import Selection
from heldout.registry import MEASURES, TASKS
from heldout.run.assembly import finished_trainer
from heldout.store.sqlite import Store
from heldout.tasks.base import Split, Task

__all__ = ["HARNESS_RULE", "evaluate_predictor", "harness_selections"]

HARNESS_RULE = "harness"
"""The ``rule`` column of the harness's rows: no selection, the predictor as given."""

Predictor = str | Adapter | nn.Module | Callable[[Tensor], Tensor]
SuiteSpec = str | Task | Mapping[str, Any]
_PREFIX = "test@"


@dataclass
class _Resolved:
    """A predictor made uniform: ``predict(x, context_split, seed) -> logits``."""

    name: str
    predict: Callable[[Tensor, Split, int], Tensor]
    run_id: str | None = None


def _batched(fn: Callable[[Tensor], Tensor], x: Tensor, batch_size: int) -> Tensor:
    with torch.no_grad():
        return torch.cat([fn(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def _resolve(predictor: Predictor, store: Store | None, shots: int,
             batch_size: int) -> tuple[_Resolved, Any]:
    """The uniform predictor and, for a run id, its Trainer (else None)."""
    if isinstance(predictor, str):
        trainer, model = finished_trainer(predictor, store if store is not None else Store())
        return _Resolved(predictor, lambda x, _t, _s: _batched(model, x, batch_size),
                         predictor), trainer
    if isinstance(predictor, Adapter):
        return _Resolved(predictor.name, _adapter_predict(predictor, shots, batch_size)), None
    if isinstance(predictor, nn.Module):
        module = predictor.eval()
        return _Resolved(type(module).__name__,
                         lambda x, _t, _s: _batched(module, x, batch_size)), None
    if callable(predictor):
        fn = predictor
        return _Resolved(getattr(fn, "__name__", type(fn).__name__),
                         lambda x, _t, _s: _batched(fn, x, batch_size)), None
    raise TypeError(f"predictor must be a run id, a bound Adapter, an nn.Module or a callable "
                    f"x -> logits, got {type(predictor).__name__}")


def _adapter_predict(adapter: Adapter, shots: int,
                     batch_size: int) -> Callable[[Tensor, Split, int], Tensor]:
    if adapter.net is None:
        raise ValueError(f"predictor: adapter {adapter.name} is not bound to a model; bind it "
                         "first (adapter.bind(model) or build it as Adapter(model, ...))")

    def predict(x: Tensor, context: Split, seed: int) -> Tensor:
        if adapter.mode == "online":
            if adapter.episodic:
                adapter.reset()
            return _batched(adapter, x, batch_size)
        with torch.no_grad():
            if not adapter.needs_support:
                return adapter(x)
            rows = sample_context(context.y, shots, torch.Generator().manual_seed(seed))
            return adapter(x, support_x=context.x[rows], support_y=context.y[rows])

    return predict


def _task(suite: SuiteSpec) -> Task:
    if isinstance(suite, Task):
        return suite
    if isinstance(suite, str):
        return TASKS.build(suite)
    if isinstance(suite, Mapping) and isinstance(suite.get("name"), str):
        return TASKS.build(suite["name"], **{k: v for k, v in suite.items() if k != "name"})
    raise TypeError(f"suites: each suite must be a task name, a Task or a mapping with a "
                    f"'name', got {suite!r}")


def _domains(task: Task | None, extra: Sequence[str],
             which: Literal["held_out", "all"]) -> list[str]:
    """The ``test@`` domains to score, in the suite's order."""
    available = [name[len(_PREFIX):] for name in extra if name.startswith(_PREFIX)]
    if which == "all" or task is None:
        return available
    names = getattr(task, "domain_names", None)
    held_out = getattr(task, "held_out", None)
    if names is None or held_out is None:
        return available
    return [names()[i] for i in held_out if names()[i] in available]


def _measures(measures: Sequence[str | Measure]) -> list[Measure]:
    if isinstance(measures, str) or not measures:
        raise ValueError(f"measures must be a non-empty sequence of measure names or Measure "
                         f"objects, got {measures!r}")
    return [MEASURES.build(m) if isinstance(m, str) else m for m in measures]


def _call(predict: Callable[[Tensor, Split, int], Tensor], x: Tensor, *, context: Split,
          seed: int) -> Tensor:
    return predict(x, context, seed)


class _AsModule(nn.Module):
    """A predictor seen as a module, for measures that run the model themselves."""

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)


def harness_selections(
    predictor: Predictor,
    suites: Sequence[SuiteSpec] | None = None,
    measures: Sequence[str | Measure] = ("accuracy",),
    seeds: Sequence[int] = (0,),
    *,
    store: Store | None = None,
    name: str | None = None,
    domains: Literal["held_out", "all"] = "held_out",
    shots: int = 8,
    context: Literal["train", "target"] = "train",
    batch_size: int = 1024,
) -> list[Selection]:
    """One :class:`~heldout.experiments.model_selection.Selection` (rule ``harness``) per
    suite × seed × domain, its ``test`` holding the measures' ``test/<metric>`` values on that
    domain's ``test@<domain>`` split. See :func:`evaluate_predictor` for the arguments."""
    if context not in ("train", "target"):
        raise ValueError(f"context must be 'train' or 'target', got {context!r}")
    if domains not in ("held_out", "all"):
        raise ValueError(f"domains must be 'held_out' or 'all', got {domains!r}")
    if int(shots) != shots or shots < 1 or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"shots and batch_size must be ints >= 1, got {shots!r}, "
                         f"{batch_size!r}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be a non-empty sequence of distinct ints, got {seeds!r}")
    built = _measures(measures)
    resolved, trainer = _resolve(predictor, store, shots, batch_size)
    label = name or resolved.name
    # (suite label, task or None, seed, eval splits) for each evaluation
    plans: list[tuple[str, Task | None, int, Mapping[str, Split]]] = []
    if suites is None:
        if trainer is None:
            raise ValueError("suites: give the shift suites to score on (task names, Task "
                             "objects or {'name': ..., params} mappings); only a run id "
                             "brings its own")
        record = (store if store is not None else Store()).get_run(str(predictor))
        cfg = config_from_dict(record.config)
        task = cfg.task.take(TASKS)
        plans.append((task.registry_name, task, cfg.seed, trainer.eval_data))
    else:
        if isinstance(suites, str | Task):
            suites = [suites]
        for suite in suites:
            task = _task(suite)
            for seed in seeds:
                splits = task.splits(int(seed))
                plans.append((task.registry_name, task, int(seed), dict(splits.items())))
    selections = []
    for suite_label, task, seed, data in plans:
        chosen = _domains(task, list(data), domains)
        if not chosen:
            raise ValueError(f"suites: task {suite_label} has no {_PREFIX}<domain> splits; the "
                             "harness scores multi-domain tasks (shift suites)")
        for domain in chosen:
            split = data[_PREFIX + domain]
            support = data["train"] if context == "train" else data.get(f"val@{domain}")
            if support is None or not len(support):
                raise ValueError(f"context='target': {suite_label} has no labelled val@{domain}"
                                 " split to draw the context from")
            logits = resolved.predict(split.x, support, seed)
            if logits.shape[0] != len(split):
                raise ValueError(f"predictor {label} gave {logits.shape[0]} rows of scores for "
                                 f"{len(split)} inputs of {suite_label}:{domain}")
            module = _AsModule(functools.partial(_call, resolved.predict, context=support,
                                                 seed=seed))
            metrics = evaluate(module, {"test": split}, built,
                               outputs={"test": (logits.detach().cpu(), split.y)})
            selections.append(Selection(
                rule=HARNESS_RULE, task=suite_label, technique=label, held_out=(domain,),
                seed=seed, run_id=resolved.run_id or label, hparams=None, score=math.nan,
                step=None, checkpoint=None, test=metrics))
    return selections


def evaluate_predictor(
    predictor: Predictor,
    suites: Sequence[SuiteSpec] | None = None,
    measures: Sequence[str | Measure] = ("accuracy",),
    seeds: Sequence[int] = (0,),
    *,
    store: Store | None = None,
    name: str | None = None,
    domains: Literal["held_out", "all"] = "held_out",
    shots: int = 8,
    context: Literal["train", "target"] = "train",
    batch_size: int = 1024,
    confidence: float = 0.95,
) -> Table:
    """Score ``predictor`` on every held-out domain of every suite, over ``seeds``.

    Args:
        predictor: a finished run's id (in ``store``), a bound adapter, an ``nn.Module`` or a
            callable ``x -> logits``.
        suites: multi-domain tasks: registered names (default parameters), Task objects, or
            ``{"name": ..., **params}`` mappings. ``None`` only for a run id: its own data.
        measures: registered measure names (or Measure objects); every ``test/<metric>`` they
            produce becomes a column.
        seeds: the suites' seeds (their data and, for in-context learners, the context).
        name: the ``technique`` column (default: the run id, adapter or class name).
        domains: ``held_out`` (the suite's test domains) or ``all`` (every ``test@`` split).
        shots: context examples per class for adapters that need supports.
        context: where the context comes from: ``train`` (the training split) or ``target``
            (the scored domain's ``val@<domain>`` split).
        batch_size: inputs per call of batched predictors.
        confidence: of the intervals over seeds.

    Returns:
        The sweep table: columns ``rule`` (``harness``), ``task``, ``technique``,
        ``held_out`` (one domain or ``average``), ``seeds``, ``missing``, then the metrics.
    """
    selections = harness_selections(predictor, suites, measures, seeds, store=store,
                                    name=name, domains=domains, shots=shots, context=context,
                                    batch_size=batch_size)
    keys = dict.fromkeys(k for s in selections for k in s.test if k.startswith("test/"))
    return aggregate(selections, {k.split("/", 1)[1]: k for k in keys}, confidence)
