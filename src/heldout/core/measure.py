"""The extension point for everything that observes a model: :class:`Measure`.

A measure is a pure function (``accuracy(logits, y)``, ``expected_calibration_error(...)``)
plus a registered adapter. A ``scope="split"`` adapter computes on one split at a time from an
:class:`EvalContext`, which runs the model once per split and shares the logits between all
measures; a ``scope="run"`` adapter combines the per-split metrics (the generalization gap).
Metric keys are ``"<split>/<name>"``, e.g. ``"test/accuracy"``.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import cached_property
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

__all__ = [
    "EvalContext",
    "Measure",
    "NonFiniteOutputError",
    "check_splits",
    "eval_mode",
    "evaluate",
    "is_classification",
]


class NonFiniteOutputError(ValueError):
    """A model's outputs on a split hold NaN or infinite values: no measure of them means
    anything (and some, such as binned calibration, cannot be computed at all)."""


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the duration (BatchNorm reads its running statistics, dropout is off);
    every module's own training flag is restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode


class EvalContext:
    """One split under evaluation: the model, the data and (computed once) the logits."""

    def __init__(
        self,
        model: nn.Module,
        split: str,
        data: Any,
        batch_size: int = 8192,
        device: Any = None,
        initial_state: Mapping[str, Tensor] | None = None,
    ) -> None:
        self.model = model
        self.split = split
        self.data = data
        self.batch_size = batch_size
        self.device = device
        self.initial_state = initial_state  # the model's state_dict before training, if known

    def tensors(self) -> tuple[Tensor, Tensor]:
        """The whole split as ``(inputs, targets)`` on the evaluation device."""
        if isinstance(self.data, DataLoader):
            xs, ys = zip(*self._chunks(), strict=True)
            x, y = torch.cat(xs), torch.cat(ys)
        else:
            x, y = (self.data.x, self.data.y) if hasattr(self.data, "x") else self.data
        return x.to(self.device), y.to(self.device)

    def batches(self) -> Iterable[tuple[Tensor, Tensor]]:
        """The split in chunks of at most ``batch_size`` examples, on the evaluation device."""
        for x, y in self._chunks():
            yield x.to(self.device), y.to(self.device)

    def _chunks(self) -> Iterable[tuple[Tensor, Tensor]]:
        if isinstance(self.data, DataLoader):
            for x, y, *_ in self.data:
                yield x, y
            return
        x, y = (self.data.x, self.data.y) if hasattr(self.data, "x") else self.data
        for start in range(0, len(y), self.batch_size):
            yield x[start : start + self.batch_size], y[start : start + self.batch_size]

    @cached_property
    def _outputs(self) -> tuple[Tensor, Tensor]:
        was_training = self.model.training
        self.model.eval()
        logits, targets = [], []
        try:
            with torch.no_grad():
                for x, y in self._chunks():
                    logits.append(self.model(x.to(self.device)).detach())
                    targets.append(y.to(self.device))
        finally:
            self.model.train(was_training)
        return torch.cat(logits), torch.cat(targets)

    @cached_property
    def _finite_logits(self) -> Tensor:
        logits = self._outputs[0]
        # one reduction in the common case: a finite sum means every entry is finite (only an
        # overflowing sum of finite entries takes the element-wise look as well)
        if bool(torch.isfinite(logits.sum())):
            return logits
        finite = torch.isfinite(logits)
        if not bool(finite.all()):
            rows = int((~finite.reshape(len(logits), -1).all(dim=1)).sum())
            raise NonFiniteOutputError(f"the model's outputs on split {self.split!r} hold NaN "
                                       f"or infinite values ({rows} of {len(logits)} rows)")
        return logits

    @property
    def logits(self) -> Tensor:
        """The model's outputs on the split (checked finite once)."""
        return self._finite_logits

    @property
    def targets(self) -> Tensor:
        return self._outputs[1]

    @property
    def clean_targets(self) -> Tensor | None:
        clean = getattr(self.data, "clean_y", None)
        return None if clean is None else clean.to(self.targets.device)

    def initial_model(self) -> nn.Module | None:
        """A copy of the model holding its weights before training, if they are known."""
        if self.initial_state is None:
            return None
        initial = copy.deepcopy(self.model)
        try:
            initial.load_state_dict(self.initial_state)
        except RuntimeError as error:
            raise ValueError(f"initial_state does not fit the model: {error}") from None
        return initial

    @property
    def groups(self) -> Tensor | None:
        groups = getattr(self.data, "groups", None)
        return None if groups is None else groups.to(self.targets.device)


def is_classification(targets: Tensor) -> bool:
    """Whether ``targets`` are class indices: one integer label per example."""
    return not targets.is_floating_point() and targets.dim() == 1


def check_splits(splits: tuple[str, ...]) -> None:
    """Refuse a measure's ``splits`` parameter unless it is a non-empty tuple of split names."""
    if not splits or not all(isinstance(s, str) for s in splits):
        raise ValueError(f"splits must be a non-empty tuple of split names, got {splits!r}")


class Measure:
    """Base of the registered measures. Subclasses are dataclasses of their parameters."""

    registry_name: ClassVar[str]

    scope: ClassVar[Literal["split", "run"]] = "split"
    # "classes": only on splits with integer class targets (skipped on regression splits)
    targets: ClassVar[Literal["classes", "any"]] = "any"

    def __post_init__(self) -> None:
        """Subclasses (dataclasses) check their parameters here; bounds declared on the
        fields (:mod:`heldout.core.bounds`) are checked before, by the registry."""

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        raise NotImplementedError

    def combine(self, metrics: Mapping[str, float]) -> dict[str, float]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """State a measure keeps between evaluations (e.g. the previous per-example losses);
        the Trainer checkpoints it so a resumed run measures exactly as an unbroken one."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"measure {type(self).__name__} keeps no state but was given "
                             f"{list(state)}")


def evaluate(
    model: nn.Module,
    splits: Mapping[str, Any],
    measures: Sequence[Measure],
    *,
    batch_size: int = 8192,
    device: Any = None,
    initial_state: Mapping[str, Tensor] | None = None,
    outputs: Mapping[str, tuple[Tensor, Tensor]] | None = None,
) -> dict[str, float]:
    """Compute ``measures`` on every split of ``splits`` (name → data); return flat metrics.

    ``initial_state`` (the model's state_dict before training) serves the measures that
    compare with the initialization, such as distance from initialization. ``outputs`` gives,
    for some splits, the model's logits and the targets already computed (in eval mode, no
    gradient), so the model does not run on them again; vectorized training computes those
    of all its copies at once.
    """
    metrics: dict[str, float] = {}
    for split, data in splits.items():
        ctx = EvalContext(model, split, data, batch_size, device, initial_state)
        if outputs is not None and split in outputs:
            ctx.__dict__["_outputs"] = outputs[split]  # the cached_property's value
        for measure in measures:
            if measure.scope != "split":
                continue
            if measure.targets == "classes" and ctx.targets.is_floating_point():
                continue
            for key, value in measure.compute(ctx).items():
                metrics[f"{split}/{key}"] = float(value)
    for measure in measures:
        if measure.scope == "run":
            metrics.update({k: float(v) for k, v in measure.combine(metrics).items()})
    return metrics
