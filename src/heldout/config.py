"""Typed run configs: frozen dataclasses, YAML files, dotted ``key=value`` overrides.

A run is fully described by a :class:`RunConfig`. Components (task, model, techniques,
measures) are referred to by registered name plus parameters; the parameters are checked
against the fields of the registered dataclass, so an unknown key, a wrong type or an unknown
name is a :class:`ConfigError` whose one-line message names the key and the valid choices.

The canonical JSON of a config (sorted keys, every default written out) is hashed into the
run's identity, so the same experiment always gets the same id.

Example:
    >>> cfg = parse_overrides(RunConfig(), ["task.p=97", "techniques=perp_grad", "steps=300"])
    >>> cfg.task.params["p"], cfg.steps
    (97, 300)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import yaml

from heldout.core.bounds import Annotated, Ge, Interval, check_bounds
from heldout.core.technique import check_combination
from heldout.registry import (
    CALLBACKS,
    MEASURES,
    MODELS,
    TASKS,
    TECHNIQUES,
    Registry,
    UnknownNameError,
)

__all__ = [
    "Component",
    "ConfigError",
    "OptimizerConfig",
    "RunConfig",
    "canonical_json",
    "check_component",
    "check_components",
    "apply_overrides",
    "config_data",
    "config_from_dict",
    "config_to_dict",
    "default_data",
    "load_config",
    "parse_overrides",
    "read_yaml",
    "run_identity",
]


class ConfigError(ValueError):
    """A config problem, described in one line that names the offending key."""


_FINITE = Interval(0, math.inf, closed="left")  # a finite number >= 0


def _check_bounds(prefix: str, cfg: Any) -> None:
    """:func:`~heldout.core.bounds.check_bounds` as a ConfigError naming the key: ``steps: must
    be >= 1, got 0``."""
    try:
        check_bounds(cfg)
    except (TypeError, ValueError) as err:
        key, _, rest = str(err).partition(" ")
        raise ConfigError(f"{prefix}{key}: {rest}") from None

SCHEMA_VERSION = 3
"""The version of :class:`RunConfig`'s fields. A field added later says since when
(``metadata={"since": n}``); while it holds its default it stays out of the canonical JSON, so
the runs recorded before it keep their ids. 1: the first release; 2: ``precision``;
3: ``callbacks``."""


@dataclass(frozen=True)
class Component:
    """A registered component by name, with its parameters (defaults filled in once checked).

    Checking a component builds it (its own ``__post_init__`` validates the parameters); the
    built object is kept and handed to the run that :meth:`take` s it, so a component is built
    once per run, not once per check. It is never pickled or compared."""

    name: str
    params: Mapping[str, Any] = field(default_factory=dict)
    _built: Any = field(default=None, init=False, repr=False, compare=False)

    def __hash__(self) -> int:
        return hash((self.name, json.dumps(dict(self.params), sort_keys=True, default=str)))

    def __getstate__(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params, "_built": None}

    def take(self, registry: Registry[Any]) -> Any:
        """The object built when this component was checked (the first call), else a new one
        (a second run of the same config gets fresh state)."""
        built, self.__dict__["_built"] = self._built, None
        return built if built is not None else registry.build(self.name, **dict(self.params))


@dataclass(frozen=True)
class OptimizerConfig:
    """The base optimizer; techniques such as SAM or ⊥Grad wrap it."""

    name: Literal["adamw", "adam", "sgd"] = "adamw"  # torch.optim class
    lr: Annotated[float, _FINITE] = 1e-3  # learning rate
    betas: Annotated[tuple[float, float], Interval(0, 1, closed="left")] = (0.9, 0.999)  # Adam(W)
    eps: Annotated[float, _FINITE] = 1e-8  # Adam(W) denominator epsilon
    momentum: Annotated[float, _FINITE] = 0.0  # SGD momentum
    nesterov: bool = False  # SGD Nesterov momentum
    weight_decay: Annotated[float, _FINITE] = 0.0  # decoupled for AdamW, L2 for Adam and SGD

    def __post_init__(self) -> None:
        # torch.optim's own checks, one line each, before any run record is written
        _check_bounds("optimizer.", self)
        if self.nesterov and self.momentum <= 0:
            raise ConfigError("optimizer.nesterov: needs optimizer.momentum > 0")


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run. Every field but ``name`` enters the run's identity."""

    task: Component = Component("modular")  # the data: a registered task and its parameters
    model: Component = Component("mlp")  # a registered model and its parameters
    optimizer: OptimizerConfig = OptimizerConfig()  # the base optimizer
    techniques: tuple[Component, ...] = ()  # registered techniques, composed in this order
    measures: tuple[Component, ...] = (
        Component("accuracy"),
        Component("loss"),
        Component("ece"),
        Component("gap"),
    )  # registered measures computed at each evaluation
    # registered observers (change nothing in training); schema 3
    callbacks: tuple[Component, ...] = field(default=(), metadata={"since": 3})
    loss: Literal["cross_entropy", "mse"] = "cross_entropy"  # mse: against one-hot targets
    loss_dtype: Literal["float32", "float64"] = "float32"  # precision of the default loss
    # "bf16-mixed": the training forward under bfloat16 autocast, float32 weights, optimizer
    # and loss; evaluation and measures stay in float32; schema 2
    precision: Literal["float32", "bf16-mixed"] = field(default="float32", metadata={"since": 2})
    steps: Annotated[int, Ge(1)] = 1000  # optimizer steps
    batch_size: Annotated[int | None, Ge(1)] = None  # None: full batch, one step per epoch
    eval_every: Annotated[int, Ge(1)] = 10  # steps between evaluations (and step 0 and the last)
    checkpoint_every: Annotated[int, Ge(1)] = 100  # steps between checkpoints (and the last)
    seed: Annotated[int, Ge(0)] = 0  # seeds the split, the initialization and the batch order
    init_from: str | None = None  # a finished run's id: its final weights initialize the model
    name: str | None = None  # a free label; not part of the identity

    def __post_init__(self) -> None:
        # Check every component and write its defaults out, however the config was made.
        for key in ("task", "model"):
            object.__setattr__(self, key, check_component(_COMPONENT_FIELDS[key],
                                                        getattr(self, key), key))
        for key in _LIST_FIELDS:
            object.__setattr__(self, key, check_components(key, getattr(self, key)))
        _check_bounds("", self)

    @property
    def identity(self) -> str:
        return run_identity(self)


# ----------------------------------------------------------------------------- type checking

_COMPONENT_FIELDS: dict[str, Registry] = {
    "task": TASKS,
    "model": MODELS,
    "techniques": TECHNIQUES,
    "measures": MEASURES,
    "callbacks": CALLBACKS,
}
_LIST_FIELDS = ("techniques", "measures", "callbacks")  # lists of registered components


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(hint))
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against the type hint ``hint``; return it in canonical form."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("null", "none") and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _coerce(value, option, key)
            except ConfigError as err:
                errors.append(err)
        raise errors[0] if len(options) == 1 else ConfigError(
            f"{key}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}"
        )
    if origin is Literal:
        if value in args and type(value) in {type(a) for a in args}:
            return value
        raise ConfigError(f"{key}: expected {_type_name(hint)}, got {value!r}")
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
            value = [yaml.safe_load(v) for v in value]
        if not isinstance(value, list | tuple):
            value = [value]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {list(value)!r}")
        pairs = enumerate(zip(value, args, strict=True))
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in pairs)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if not -_INT_LIMIT <= value < _INT_LIMIT:  # what the store (SQLite) can hold
                raise ConfigError(f"{key}: {value} is out of range (|value| < 2**63)")
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if hint is float:
        number = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is None:
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if math.isnan(number):  # NaN compares false with every bound, so it slips past them
            raise ConfigError(f"{key}: expected a number, got NaN")
        return number
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {hint!r}")  # a bug in a component, not user input


_INT_LIMIT = 2**63


def _fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {
        f.name: hints[f.name]
        for f in dataclasses.fields(cls)
        if f.init and not f.name.startswith("_")
    }


def check_component(registry: Registry, spec: Any, key: str) -> Component:
    """Turn ``name`` / ``{name: ..., **params}`` / Component into a checked Component (built
    once, see :meth:`Component.take`)."""
    if isinstance(spec, Component) and spec._built is not None:
        return spec  # checked already, and not yet taken by a run
    if isinstance(spec, Component):
        name, params = spec.name, dict(spec.params)
    elif isinstance(spec, str):
        name, params = spec, {}
    elif isinstance(spec, Mapping):
        params = dict(spec)
        name = params.pop("name", None)
        if not isinstance(name, str):
            raise ConfigError(f"{key}: needs a 'name'; valid {registry.kind}s: "
                              + ", ".join(registry.names()))
    else:
        raise ConfigError(f"{key}: expected a {registry.kind} name or mapping, got {spec!r}")
    try:
        entry = registry.get(name)
    except UnknownNameError as err:
        raise ConfigError(f"{key}: {err}") from None
    fields = _fields(entry.cls) if dataclasses.is_dataclass(entry.cls) else {}
    checked = entry.defaults()
    for param, value in params.items():
        if param not in fields:
            valid = ", ".join(sorted(fields)) or "(none)"
            raise ConfigError(
                f"{key}.{param}: unknown parameter of {registry.kind} {name!r}; valid: {valid}"
            )
        checked[param] = _coerce(value, fields[param], f"{key}.{param}")
    try:
        built = entry.build(**checked)  # runs the component's own validation (__post_init__)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{key}: {err}") from None
    component = Component(name, checked)
    object.__setattr__(component, "_built", built)
    return component


def check_components(key: str, value: Any) -> tuple[Component, ...]:
    """Check a list of ``techniques``, ``measures`` or ``callbacks`` (names or mappings with
    parameters)."""
    items = [value] if isinstance(value, str | Mapping | Component) else value
    if not isinstance(items, list | tuple):
        raise ConfigError(f"{key}: expected a list, got {value!r}")
    checked = [check_component(_COMPONENT_FIELDS[key], v, f"{key}[{i}]")
               for i, v in enumerate(items)]
    names = [c.name for c in checked]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{key}: {', '.join(dupes)} listed more than once")
    if key == "techniques" and len(checked) > 1:
        try:
            check_combination([c._built for c in checked])
        except ValueError as err:  # CombinationError: names both techniques
            raise ConfigError(f"{key}: {err}") from None
    return tuple(checked)


def config_from_dict(data: Mapping[str, Any]) -> RunConfig:
    """Build a checked :class:`RunConfig` from plain data (parsed YAML, say)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"a run config must be a mapping, got {type(data).__name__}")
    run_fields = _fields(RunConfig)
    kwargs: dict[str, Any] = {}
    data = dict(data)
    version = data.pop("schema_version", SCHEMA_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ConfigError(f"schema_version: expected a positive integer, got {version!r}")
    if version > SCHEMA_VERSION:
        raise ConfigError(f"schema_version: this config was written by a newer heldout (schema "
                          f"{version}; this one reads up to {SCHEMA_VERSION}); upgrade heldout")
    for key, value in data.items():
        if key not in run_fields:
            raise ConfigError(f"{key}: unknown config key; valid keys: {', '.join(run_fields)}")
        if key in ("task", "model"):
            kwargs[key] = check_component(_COMPONENT_FIELDS[key], value, key)
        elif key in _LIST_FIELDS:
            kwargs[key] = check_components(key, value)
        elif key == "optimizer":
            kwargs[key] = _optimizer_from(value)
        else:
            kwargs[key] = _coerce(value, run_fields[key], key)
    return RunConfig(**kwargs)


def _optimizer_from(value: Any) -> OptimizerConfig:
    if isinstance(value, OptimizerConfig):
        return value
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, Mapping):
        raise ConfigError(f"optimizer: expected a mapping, got {value!r}")
    fields = _fields(OptimizerConfig)
    out = {}
    for key, v in value.items():
        if key not in fields:
            raise ConfigError(f"optimizer.{key}: unknown key; valid keys: {', '.join(fields)}")
        out[key] = _coerce(v, fields[key], f"optimizer.{key}")
    return OptimizerConfig(**out)


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """Plain, JSON-ready data for ``cfg``: every field of :class:`RunConfig` (every default
    written out) and ``schema_version``."""
    data: dict[str, Any] = {f.name: _plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    data["schema_version"] = SCHEMA_VERSION
    return data


def _plain(value: Any) -> Any:
    """A config value as JSON-ready data: components as ``{"name": ..., **params}``, the
    optimizer as a mapping, tuples as lists."""
    if isinstance(value, Component):
        return {"name": value.name, **{k: _plain(v) for k, v in value.params.items()}}
    if isinstance(value, OptimizerConfig):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def canonical_json(cfg: RunConfig) -> str:
    """The canonical form of ``cfg``: sorted-key JSON of every field but ``name``. A field added
    after the first schema (``metadata["since"] > 1``, see :data:`SCHEMA_VERSION`) is left out
    while it holds its default, so the runs recorded before it keep their ids."""
    data = config_to_dict(cfg)
    for key in ("name", "schema_version"):
        data.pop(key)
    for f in dataclasses.fields(cfg):
        if f.metadata.get("since", 1) > 1 and data[f.name] == _plain(f.default):
            data.pop(f.name)
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def run_identity(cfg: RunConfig) -> str:
    """A 12-hex-digit hash of the canonical config: the run's id."""
    return hashlib.sha256(canonical_json(cfg).encode()).hexdigest()[:12]


def read_yaml(path: str | Path, what: str = "config") -> Any:
    """The parsed YAML of the file at ``path`` (None when empty); a file that cannot be read,
    is not UTF-8 text or is not YAML is a one-line :class:`ConfigError` naming it."""
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(f"{path}: cannot read {what} ({err.strerror})") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: {what} is not UTF-8 text (byte {err.object[err.start]:#04x}"
                          f" at offset {err.start})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None


def default_data() -> dict[str, Any]:
    """:class:`RunConfig`'s fields and their defaults as plain data, checking (building) no
    component: the base that a file's data and overrides are laid over."""
    return {f.name: _plain(f.default) for f in dataclasses.fields(RunConfig)}


def config_data(path: str | Path) -> dict[str, Any]:
    """A YAML run config file's data laid over :func:`default_data` (not yet checked)."""
    data = read_yaml(path, "config") or {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: a run config must be a mapping, got {type(data).__name__}")
    return {**default_data(), **data}


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> RunConfig:
    """Read a YAML run config and apply ``key=value`` overrides (checked once, at the end)."""
    return config_from_dict(apply_overrides(config_data(path), overrides))


def parse_overrides(cfg: RunConfig, overrides: Iterable[str]) -> RunConfig:
    """Apply dotted ``key=value`` overrides to ``cfg``; values are parsed as YAML.

    ``steps=300``, ``optimizer.lr=0.01``, ``task=digits`` (switch component, defaults reset),
    ``task.p=97``, ``model.hidden=[200,200]``, ``techniques=perp_grad,sam`` (replace the list),
    ``techniques.sam.rho=0.1`` (a parameter of a listed technique), ``measures.ece.n_bins=15``.
    """
    return config_from_dict(apply_overrides(config_to_dict(cfg), overrides))


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Set each dotted ``key=value`` of ``overrides`` in the plain config ``data`` (in place;
    returned), as :func:`parse_overrides` describes; nothing is checked or built yet."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{item!r}: an override is key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        _set(data, key.split("."), value, item)
    return data


def _set(data: dict[str, Any], path: list[str], value: Any, item: str) -> None:
    head, rest = path[0], path[1:]
    if head not in data:
        raise ConfigError(f"{head}: unknown config key; valid keys: {', '.join(data)}")
    if head in _LIST_FIELDS:
        if not rest:
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            if value is None:
                value = []
            elif isinstance(value, str | Mapping):
                value = [value]
            data[head] = [{"name": v} if isinstance(v, str) else v for v in value]
            return
        # the entries are dicts (built above, or by the YAML loader), so they take assignment
        items = {c["name"]: cast(dict[str, Any], c) for c in data[head] if isinstance(c, Mapping)}
        name = rest[0]
        if name not in items:
            listed = ", ".join(items) or "none"
            raise ConfigError(
                f"{head}.{name}: not in {head} (listed: {listed}); add it with {head}=...,{name}"
            )
        if len(rest) != 2:
            raise ConfigError(f"{item!r}: expected {head}.NAME.PARAM=VALUE")
        items[name][rest[1]] = value
        return
    if not rest:
        if head in ("task", "model") and isinstance(value, str):
            value = {"name": value}  # switching component: its defaults apply
        data[head] = value
        return
    node = data[head]
    if not isinstance(node, dict):
        raise ConfigError(f"{head}.{rest[0]}: {head} has no sub-keys")
    if len(rest) != 1:
        raise ConfigError(f"{item!r}: too many dots")
    if rest[0] == "name" and head in ("task", "model"):
        data[head] = {"name": value}  # switching component: its defaults apply
        return
    node[rest[0]] = value
