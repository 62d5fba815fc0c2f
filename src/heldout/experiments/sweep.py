"""Sweep specs: tasks × techniques × hyper-parameter draws × seeds × held-out domains.

A spec (YAML or Python) expands into run configs. Each run's id is the hash of its canonical
config, so running a sweep again runs only what is not done. Hyper-parameter draw 0 is the
defaults; draw k > 0 samples every searched hyper-parameter from a generator seeded by
(sweep seed, k, the hyper-parameter's name), so adding one hyper-parameter to the search
leaves the other draws unchanged (as DomainBed's ``hparams_registry`` does). A ``grid`` maps
hyper-parameters to lists of values: every combination is crossed with the draws (a grid value
overrides a drawn one), and configuration ``g * hparams + k`` is grid point g with draw k, so
with a grid, configuration 0 is the first grid point with the defaults.

Example spec::

    name: rotation-digits
    base: {model: {name: mlp, hidden: [64]}, optimizer: {name: adam, lr: 0.001},
           steps: 300, eval_every: 100, measures: [accuracy, loss, ece, group_accuracy]}
    tasks: [{name: digits_shift, shift: rotation}]
    techniques: [erm, sam, ema]       # erm: no technique; "sam+ema" combines
    hparams: 4                        # draws per technique (draw 0 = defaults)
    seeds: 3
    held_out: each                    # multi-domain tasks: hold out each domain in turn
    search: {optimizer.lr: [log_uniform, 0.0001, 0.01]}
    grid: {techniques.sam.rho: [0.02, 0.05, 0.1]}   # optional: every combination, per draw
    adapt: [source, bn_adapt, {name: alpha_bn, alpha: 0.1}]   # optional: test-time adapters
    adapt_batch_size: 64

With ``adapt``, every finished run with held-out domains is adapted by each listed adapter on
its held-out test domains (streamed in order; :mod:`heldout.run.adaptation`), and the report
gets a before/after table per adapter with intervals over seeds.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import types
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from heldout.config import ConfigError, RunConfig, config_from_dict, read_yaml
from heldout.registry import TASKS, TECHNIQUES

__all__ = [
    "PlannedRun",
    "SweepSpec",
    "adapt_sweep",
    "adaptation_configs",
    "draw_value",
    "expand",
    "load_sweep",
    "plan_size",
    "run_sweep",
    "sweep_from_dict",
    "sweep_status",
]

BASELINE = "erm"  # the technique name that means "no technique"
MAX_RUNS = 10_000  # a plan larger than this is refused unless the caller raises the limit


@dataclass(frozen=True)
class SweepSpec:
    """What a sweep runs; see the module docstring for the YAML form."""

    name: str
    tasks: tuple[Mapping[str, Any], ...]
    techniques: tuple[str, ...] = (BASELINE,)
    base: Mapping[str, Any] = field(default_factory=dict)
    hparams: int = 1
    seeds: tuple[int, ...] = (0,)
    held_out: str | tuple[tuple[int, ...], ...] = "each"
    search: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    grid: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    selection: tuple[str, ...] = ("train_domain_val", "oracle", "last")
    sweep_seed: int = 0
    adapt: tuple[Any, ...] = ()  # adapters (names or {name: ..., **params}) for every run
    adapt_batch_size: int = 64

    def __post_init__(self) -> None:
        if self.hparams < 1:
            raise ConfigError(f"hparams: must be >= 1, got {self.hparams}")
        from heldout.experiments.model_selection import SELECTION_RULES

        unknown = [r for r in self.selection if r not in SELECTION_RULES]
        if unknown:
            raise ConfigError(f"selection: unknown rule(s) {unknown}; valid rules: "
                              f"{', '.join(SELECTION_RULES)}")
        for technique in self.techniques:
            for part in _parts(technique):
                if part not in TECHNIQUES:
                    raise ConfigError(f"techniques: unknown technique {part!r}; valid: "
                                      f"{BASELINE}, {', '.join(TECHNIQUES.names())}")
        for key, space in self.search.items():
            _check_space(f"search.{key}", space)
        _check_adapters(self.adapt, self.adapt_batch_size)
        for key, values in self.grid.items():
            if not isinstance(values, list | tuple) or not values:
                raise ConfigError(f"grid.{key}: a grid is a non-empty list of values, got "
                                  f"{values!r}")
            if key.startswith("techniques."):
                name = key.split(".")[1]
                if not any(name in _parts(t) for t in self.techniques):
                    raise ConfigError(f"grid.{key}: technique {name!r} is not in the sweep's "
                                      f"techniques {list(self.techniques)}")

    @property
    def identity(self) -> str:
        data = {k: v for k, v in _plain(self.__dict__).items() if k != "name"}
        if not self.adapt:  # sweeps without adaptation keep the ids they had before it
            del data["adapt"], data["adapt_batch_size"]
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep and where it sits in the protocol."""

    config: RunConfig
    task: str  # the task's label in tables
    technique: str
    hparams: int  # draw index; 0 = defaults
    seed: int
    held_out: tuple[str, ...]  # held-out domain names (empty for single-domain tasks)
    domains: tuple[str, ...]  # every domain name of the task (empty if single-domain)
    values: Mapping[str, Any]  # the drawn hyper-parameters (empty for draw 0)

    @property
    def meta(self) -> dict[str, Any]:
        return {"task": self.task, "technique": self.technique, "hparams": self.hparams,
                "seed": self.seed, "held_out": list(self.held_out),
                "domains": list(self.domains), "values": dict(self.values)}


def _check_adapters(adapters: Sequence[Any], batch_size: int) -> None:
    from heldout.config import check_component
    from heldout.registry import ADAPTERS

    for index, entry in enumerate(adapters):
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, Mapping):
            raise ConfigError(f"adapt[{index}]: an adapter name or mapping, got {entry!r}")
        check_component(ADAPTERS, dict(entry), f"adapt[{index}]")
        if getattr(ADAPTERS.get(entry["name"]).cls, "needs_support", False):
            raise ConfigError(f"adapt[{index}]: {entry['name']!r} adapts few-shot episodes, "
                              "not a run's held-out domains")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"adapt_batch_size: a whole number >= 1, got {batch_size!r}")


def _parts(technique: str) -> list[str]:
    return [] if technique == BASELINE else [p for p in technique.split("+") if p]


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _check_space(key: str, space: Any) -> None:
    if not isinstance(space, list | tuple) or not space:
        raise ConfigError(f"{key}: a search space is [uniform, lo, hi], [log_uniform, lo, hi], "
                          f"[int_uniform, lo, hi] or [choice, [values]]; got {space!r}")
    kind = space[0]
    if kind in ("uniform", "log_uniform", "int_uniform"):
        if len(space) != 3 or not all(isinstance(v, int | float) for v in space[1:]):
            raise ConfigError(f"{key}: {kind} needs two numbers, got {list(space[1:])!r}")
        if kind == "log_uniform" and min(space[1:]) <= 0:
            raise ConfigError(f"{key}: log_uniform needs positive bounds")
    elif kind == "choice":
        if len(space) != 2 or not isinstance(space[1], list | tuple) or not space[1]:
            raise ConfigError(f"{key}: choice needs a non-empty list, got {space[1:]!r}")
    else:
        raise ConfigError(f"{key}: unknown search kind {kind!r}; valid kinds: uniform, "
                          "log_uniform, int_uniform, choice")


def draw_value(space: Sequence[Any], sweep_seed: int, draw: int, name: str) -> Any:
    """The value of hyper-parameter ``name`` in ``draw``: a pure function of the three, so
    adding another hyper-parameter never changes this one's draws."""
    key = zlib.crc32(name.encode())
    rng = np.random.default_rng(np.random.SeedSequence([sweep_seed, draw, key]))
    kind = space[0]
    if kind == "uniform":
        return float(rng.uniform(space[1], space[2]))
    if kind == "log_uniform":
        return float(math.exp(rng.uniform(math.log(space[1]), math.log(space[2]))))
    if kind == "int_uniform":
        return int(rng.integers(space[1], space[2] + 1))
    values = list(space[1])
    return values[int(rng.integers(len(values)))]


def _grid_points(grid: Mapping[str, Sequence[Any]], parts: list[str]) -> list[dict[str, Any]]:
    """Every combination of the grid's values (keys in sorted order, the last varying
    fastest), over the keys that apply to a technique made of ``parts``: a key
    ``techniques.NAME.param`` applies only where NAME is one of them. ``[{}]`` if none."""
    keys = sorted(k for k in grid
                  if not k.startswith("techniques.") or k.split(".")[1] in parts)
    return [dict(zip(keys, combo, strict=True))
            for combo in itertools.product(*(list(grid[k]) for k in keys))]


def _domain_names(task: Mapping[str, Any]) -> tuple[str, ...]:
    entry = TASKS.get(task["name"])
    try:
        instance = entry.build(**{k: v for k, v in task.items() if k not in ("name", "label")})
    except (TypeError, ValueError) as err:
        raise ConfigError(f"tasks: {task['name']}: {err}") from None
    names = getattr(instance, "domain_names", None)
    return tuple(names() if callable(names) else names or ())


def _held_out_sets(spec: SweepSpec, domains: tuple[str, ...]) -> list[tuple[int, ...]]:
    if not domains:
        return [()]
    base: list[tuple[int, ...]]
    if spec.held_out == "each":
        base = [(i,) for i in range(len(domains))]
    elif isinstance(spec.held_out, str):
        raise ConfigError(f"held_out: 'each' or a list of domain-index lists, got "
                          f"{spec.held_out!r}")
    else:
        base = [tuple(h) for h in spec.held_out]
    sets = list(base)
    if "lodo" in spec.selection:  # leave-one-domain-out needs each training domain held out too
        for held in base:
            sets += [tuple(sorted((*held, d))) for d in range(len(domains)) if d not in held]
    return list(dict.fromkeys(sets))


def _space(spec: SweepSpec, parts: list[str]) -> dict[str, Sequence[Any]]:
    """The searched hyper-parameters of a technique made of ``parts``: the spec's ``search``
    plus each technique's registered search space."""
    space = dict(spec.search)
    for part in parts:
        for param, sub in TECHNIQUES.get(part).search_space.items():
            space.setdefault(f"techniques.{part}.{param}", sub)
    return space


def plan_size(spec: SweepSpec) -> int:
    """How many runs :func:`expand` plans at most, counted from the sizes of the spec's axes
    without expanding anything (runs whose configs coincide are planned once, so the plan
    can be smaller)."""
    per_task = 0
    for technique in spec.techniques:
        parts = _parts(technique)
        keys = [k for k in spec.grid
                if not k.startswith("techniques.") or k.split(".")[1] in parts]
        draws = spec.hparams if _space(spec, parts) else 1
        per_task += math.prod(len(spec.grid[k]) for k in keys) * draws
    total = 0
    for task in spec.tasks:
        total += len(_held_out_sets(spec, _domain_names(task))) * per_task * len(spec.seeds)
    return total


def check_plan_size(spec: SweepSpec, max_runs: int = MAX_RUNS) -> int:
    """:func:`plan_size`, refused with a one-line :class:`ConfigError` above ``max_runs``."""
    size = plan_size(spec)
    if size > max_runs:
        raise ConfigError(f"sweep {spec.name}: the plan has {size:,} runs, more than the limit "
                          f"of {max_runs:,} (raise it with --max-runs)")
    return size


def expand(spec: SweepSpec, max_runs: int = MAX_RUNS) -> list[PlannedRun]:
    """Every run of ``spec``, in a fixed order, each run once (a draw that repeats another
    run's config is not planned twice). A plan of more than ``max_runs`` runs is refused
    before anything is expanded."""
    check_plan_size(spec, max_runs)
    runs = []
    for task in spec.tasks:
        domains = _domain_names(task)
        label = task.get("label") or task["name"]
        task_params = {k: v for k, v in task.items() if k != "label"}
        for held in _held_out_sets(spec, domains):
            for technique in spec.techniques:
                parts = _parts(technique)
                space = _space(spec, parts)
                # with nothing to search, every draw would repeat the defaults: plan draw 0 only
                draws = range(spec.hparams if space else 1)
                for g, point in enumerate(_grid_points(spec.grid, parts)):
                    for draw in draws:
                        values = {} if draw == 0 else {
                            name: draw_value(sub, spec.sweep_seed, draw, name)
                            for name, sub in sorted(space.items())}
                        values.update(point)  # a grid value wins over a random draw
                        for seed in spec.seeds:
                            runs.append(_planned(spec, task_params, label, domains, held,
                                                 technique, parts, g * len(draws) + draw,
                                                 seed, values))
    unique: dict[str, PlannedRun] = {}
    for run in runs:
        unique.setdefault(run.config.identity, run)
    return list(unique.values())


def _planned(spec: SweepSpec, task: Mapping[str, Any], label: str, domains: tuple[str, ...],
             held: tuple[int, ...], technique: str, parts: list[str], draw: int, seed: int,
             values: Mapping[str, Any]) -> PlannedRun:
    data = json.loads(json.dumps(_plain(spec.base)))
    data["task"] = {**task, **({"held_out": list(held)} if domains else {})}
    data["techniques"] = [{"name": p} for p in parts]
    data["seed"] = seed
    for key, value in values.items():
        _assign(data, key, value)
    data.setdefault("name", None)
    try:
        cfg = config_from_dict(data)
    except ConfigError as err:
        raise ConfigError(f"sweep {spec.name}: {err}") from None
    return PlannedRun(cfg, label, technique, draw, seed,
                      tuple(domains[i] for i in held), domains, values)


def _assign(data: dict[str, Any], dotted: str, value: Any) -> None:
    head, *rest = dotted.split(".")
    if head == "techniques":
        name, param = rest
        next(t for t in data["techniques"] if t["name"] == name)[param] = value
        return
    node = data.setdefault(head, {})
    if not rest:
        data[head] = value
        return
    if isinstance(node, str):
        node = data[head] = {"name": node}
    for part in rest[:-1]:
        node = node.setdefault(part, {})
    node[rest[-1]] = value


def load_sweep(path: str | Path) -> SweepSpec:
    """Read a sweep spec from YAML; unknown keys or names give one clear line."""
    data = read_yaml(path, "sweep spec") or {}
    return sweep_from_dict(data, default_name=Path(path).stem)


def _listed(data: Mapping[str, Any], key: str, default: Any,
            item: type | types.UnionType | tuple[type, ...], what: str) -> list[Any]:
    """``data[key]`` as a list whose entries are ``item``s; a single entry counts as a list
    of one (``techniques: sam`` is ``[sam]``, not the letters s, a, m)."""
    value = data.get(key, default)
    if isinstance(value, item) and not isinstance(value, list):
        value = [value]
    if not isinstance(value, list | tuple) or not all(
            isinstance(v, item) and not isinstance(v, bool) for v in value):
        raise ConfigError(f"{key}: expected {what} or a list of them, got {value!r}")
    return list(value)


def _integer(data: Mapping[str, Any], key: str, default: int) -> int:
    value = data.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    return value


def _mapping(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key) or {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a mapping, got {value!r}")
    return dict(value)


def _seeds(data: Mapping[str, Any]) -> tuple[int, ...]:
    """``seeds: N`` (seeds 0 .. N-1, N >= 1) or an explicit list of seeds >= 0."""
    seeds = data.get("seeds", 1)
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ConfigError(f"seeds: must be >= 1 (or a list of seeds), got {seeds}")
        return tuple(range(seeds))
    listed = _listed(data, "seeds", 1, int, "a number of seeds, a seed")
    if not listed or min(listed) < 0:
        raise ConfigError(f"seeds: a list of seeds needs at least one, each >= 0; got {seeds!r}")
    return tuple(listed)


def sweep_from_dict(data: Mapping[str, Any], default_name: str = "sweep") -> SweepSpec:
    """A checked :class:`SweepSpec` from plain data (parsed YAML, say); every mistake in the
    spec's shape is a one-line :class:`ConfigError` naming the key."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"a sweep spec must be a mapping of keys (name, tasks, techniques, "
                          f"...), got a {type(data).__name__}")
    fields = set(SweepSpec.__dataclass_fields__)
    unknown = sorted(set(data) - fields, key=str)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown sweep key; valid keys: "
                          f"{', '.join(sorted(fields))}")
    tasks = tuple({"name": t} if isinstance(t, str) else dict(t)
                  for t in _listed(data, "tasks", [], str | Mapping, "a task name or mapping"))
    if not tasks:
        raise ConfigError("tasks: a sweep needs at least one task")
    for task in tasks:
        if not isinstance(task.get("name"), str):
            raise ConfigError(f"tasks: every task needs a name, got {task!r}")
    held = data.get("held_out", "each")
    if not isinstance(held, str):
        entries = _listed(data, "held_out", "each", int | list, "a domain index or list")
        held = tuple(tuple([h] if isinstance(h, int) else h) for h in entries)
    base = _mapping(data, "base")
    for key in ("task", "techniques", "seed"):
        if key in base:
            raise ConfigError(f"base.{key}: set by the sweep (use tasks / techniques / seeds)")
    return SweepSpec(
        name=str(data.get("name", default_name)), tasks=tasks,
        techniques=tuple(_listed(data, "techniques", [BASELINE], str, "a technique name")),
        base=base, hparams=_integer(data, "hparams", 1), seeds=_seeds(data), held_out=held,
        search=_mapping(data, "search"), grid=_mapping(data, "grid"),
        selection=tuple(_listed(data, "selection", ["train_domain_val", "oracle", "last"],
                                str, "a selection rule")),
        sweep_seed=_integer(data, "sweep_seed", 0),
        adapt=tuple(_listed(data, "adapt", [], str | Mapping, "an adapter name or mapping")),
        adapt_batch_size=_integer(data, "adapt_batch_size", 64),
    )


def run_sweep(spec: SweepSpec, store: Any, *, executor: str = "local", workers: int = 2,
              address: str | None = None, progress: Any = None,
              vectorize: int = 8, max_runs: int = MAX_RUNS) -> list[Any]:
    """Record the sweep's plan in ``store`` and run what is not done; return the outcomes.

    Runs that differ only in seed (or learning rate / weight decay) train together, up to
    ``vectorize`` copies per process, where the technique and model allow it
    (:mod:`heldout.vectorize.trainer`); ``vectorize=1`` runs every config separately.
    Every planned config is checked (``init_from`` included) before anything is recorded,
    and a plan of more than ``max_runs`` runs is refused before it is expanded."""
    from heldout.config import config_to_dict
    from heldout.experiments.executors import make_executor, run_jobs
    from heldout.run.assembly import check_init_from

    planned = expand(spec, max_runs)
    for run in planned:
        check_init_from(run.config, store)
    store.record_sweep(spec.identity, spec.name, _plain(spec.__dict__), [
        (p.config.identity, config_to_dict(p.config), p.meta, p.seed) for p in planned])
    runner = make_executor(executor, store.home, workers=workers, address=address)
    outcomes = run_jobs([p.config for p in planned], store, runner, progress,
                        vectorize=vectorize)
    if spec.adapt:
        adapt_sweep(spec, store)
    return outcomes


def adaptation_configs(spec: SweepSpec, run_id: str, held_out: Sequence[str]) -> list[Any]:
    """The adaptations a sweep asks of one run: each adapter of ``spec.adapt`` on the run's
    held-out test domains, streamed in order."""
    from heldout.run.adaptation import AdaptConfig

    domains = tuple(f"test@{d}" for d in held_out)
    return [AdaptConfig(run_id, {"name": a} if isinstance(a, str) else dict(a), domains,
                        batch_size=spec.adapt_batch_size) for a in spec.adapt]


def adapt_sweep(spec: SweepSpec, store: Any) -> list[dict[str, Any]]:
    """Adapt every finished run of the sweep that has held-out domains with every adapter of
    ``spec.adapt`` (done adaptations are read back, not run again); returns the failures
    (run, adapter, error), each also given as a warning."""
    import warnings

    from heldout.run.adaptation import adapt
    from heldout.store.records import error_message

    failures = []
    for record, meta in store.sweep_runs(spec.identity):
        if record.status != "done" or not meta["held_out"]:
            continue
        for cfg in adaptation_configs(spec, record.id, meta["held_out"]):
            try:
                adapt(cfg, store)
            except (ValueError, KeyError, RuntimeError) as err:
                failures.append({"run_id": record.id, "adapter": cfg.adapter.name,
                                 "error": error_message(err)})
                warnings.warn(f"adapting run {record.id} with {cfg.adapter.name} failed: "
                              f"{error_message(err)}", stacklevel=2)
    return failures


def sweep_status(store: Any, sweep: str) -> dict[str, Any]:
    """Counts per state and the failures with their errors."""
    members = store.sweep_runs(sweep)
    counts: dict[str, int] = {}
    failures = []
    for record, meta in members:
        counts[record.status] = counts.get(record.status, 0) + 1
        if record.status == "failed":
            failures.append({"run_id": record.id, "technique": meta["technique"],
                             "seed": meta["seed"], "error": record.error})
    return {"runs": len(members), "counts": counts, "failures": failures}
