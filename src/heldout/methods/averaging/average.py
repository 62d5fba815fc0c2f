"""The one weight-average holder: a copy of the model, its update count and a rule.

Every running average of the weights in heldout is a :class:`WeightAverage`: a frozen copy of
the model (``module``), the number of points averaged into it (``updates``) and a *rule* that
moves the copy toward the model at each update. The rules are
``torch.optim.swa_utils``' ``multi_avg_fn`` functions, or follow their signature:

    rule(averaged: list[Tensor], current: list[Tensor], num_averaged: int) -> None

updating ``averaged`` in place toward ``current``, where ``num_averaged`` points are already
in the average. Three rules ship: EMA (:func:`~heldout.methods.averaging.ema.ema_rule`), SWA
(:func:`~heldout.methods.averaging.swa.swa_rule`) and Gaussian trajectory averaging
(:class:`~heldout.methods.averaging.gaussian.GaussianRule`).

Why not ``torch.optim.swa_utils.AveragedModel`` as the holder itself. Its rules are used (the
EMA and SWA rules *are* ``get_ema_multi_avg_fn`` and ``get_swa_multi_avg_fn``), and a test checks
that the holder and ``AveragedModel`` agree; the class is not, because

* its first ``update_parameters`` copies the model, so an EMA would start from the first
  point, while heldout's EMA (and the vectorized trainer's stacked EMA) starts from the
  weights the model had when the average was made and blends every update;
* its count ``n_averaged`` is a tensor, so the SWA weight 1/(n + 1) is a float32 tensor: a
  float64 model gets a float32-rounded mean (1/3 → 0.33333334), and on a GPU each update waits
  for the device twice (``bool(n_averaged == 0)``, ``n_averaged > 0``);
* with ``use_buffers=True`` it averages integer buffers too (BatchNorm's
  ``num_batches_tracked``), which the Gaussian average copies instead;
* its ``state_dict`` (``n_averaged`` and ``module.``-prefixed keys) is not the checkpoint
  format of heldout's techniques, and it regroups the tensors by device and dtype at every
  update.

Checkpoint format: ``{"module": module.state_dict(), "updates": n, **rule state}``. The EMA
rule keeps no state, so an EMA's format is exactly ``{"module", "updates"}`` (what the
vectorized trainer reads and writes for each copy). Dicts written before the holder existed
count their points under ``"averaged"`` (SWA) or ``"points"`` (Gaussian averaging); they load.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from heldout.core.technique import Technique

__all__ = ["AveragingRule", "AveragingTechnique", "WeightAverage", "average_into"]

AveragingRule = Callable[[list[Tensor], list[Tensor], int], None]
"""``rule(averaged, current, num_averaged)``: move ``averaged`` toward ``current`` in place."""

_LEGACY_COUNTS = ("averaged", "points")  # the count's key in SWA / Gaussian dicts of before


def _is_averaged(tensor: Tensor) -> bool:
    return tensor.is_floating_point() or tensor.is_complex()


@torch.no_grad()
def average_into(average: nn.Module, model: nn.Module, rule: AveragingRule, num_averaged: int,
                 *, average_buffers: bool = False) -> None:
    """One update of the average ``average`` toward ``model``: ``rule`` on the floating-point
    parameters (and, with ``average_buffers``, the floating-point buffers, e.g. BatchNorm
    statistics) in one call; every other entry is copied from ``model`` (integer buffers such
    as ``num_batches_tracked``, and all buffers without ``average_buffers``)."""
    mine = [*average.parameters(), *(average.buffers() if average_buffers else ())]
    theirs = [*model.parameters(), *(model.buffers() if average_buffers else ())]
    if len(mine) != len(theirs):
        raise ValueError("the average and the model have different numbers of parameters")
    averaged, current, copied = [], [], []
    for a, p in zip(mine, theirs, strict=True):
        if _is_averaged(a):
            averaged.append(a)
            current.append(p.detach())
        else:
            copied.append((a, p))
    if averaged:  # first: a rule that refuses the update leaves the average as it was
        rule(averaged, current, num_averaged)
    for a, p in copied:
        a.copy_(p)
    if not average_buffers:
        for a, b in zip(average.buffers(), model.buffers(), strict=True):
            a.copy_(b)


class WeightAverage:
    """A frozen copy of ``model`` that a ``rule`` moves toward the model at each :meth:`update`.

    ``updates`` counts the points averaged in; the rule sees it as ``num_averaged``. The copy
    starts as the model's weights at construction; the SWA and Gaussian rules replace them at
    the first update, the EMA rule blends them.

    Example:
        >>> from torch.optim.swa_utils import get_swa_multi_avg_fn
        >>> model = nn.Linear(2, 1)
        >>> average = WeightAverage(model, get_swa_multi_avg_fn())
        >>> for value in (1.0, 3.0):
        ...     _ = nn.init.constant_(model.weight, value)
        ...     average.update(model)
        >>> average.module.weight
        Parameter containing:
        tensor([[2., 2.]])

    References:
        Averaging Weights Leads to Wider Optima and Better Generalization (Izmailov et al.,
        UAI 2018; arXiv:1803.05407).
    """

    def __init__(self, model: nn.Module, rule: AveragingRule, *,
                 average_buffers: bool = False) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.rule = rule
        self.average_buffers = average_buffers
        self.updates = 0

    def update(self, model: nn.Module) -> None:
        average_into(self.module, model, self.rule, self.updates,
                     average_buffers=self.average_buffers)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        rule_state: dict[str, Any] = getattr(self.rule, "state_dict", dict)()
        return {"module": self.module.state_dict(), "updates": self.updates, **rule_state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        key = next((k for k in ("updates", *_LEGACY_COUNTS) if k in state), None)
        if key is None:
            raise KeyError(f"no update count in the average's state (keys {sorted(state)})")
        self.updates = int(state[key])
        if hasattr(self.rule, "load_state_dict"):
            self.rule.load_state_dict(state)


@dataclass
class AveragingTechnique(Technique):
    """The Trainer adapter shared by the averaging techniques: a :class:`WeightAverage` made
    from the model at fit start (holding a checkpoint's state if one was loaded before),
    updated and evaluated where the subclass says, and checkpointed in the holder's format.

    Subclasses define ``_average_of`` (build the holder for the run), ``on_after_step`` and
    ``eval_model``."""

    _average: WeightAverage | None = field(default=None, init=False, repr=False)
    _pending: dict[str, Any] | None = field(default=None, init=False, repr=False)

    touches = frozenset({"after_step", "eval_model"})

    def _average_of(self, state: Any) -> WeightAverage:
        raise NotImplementedError

    def _adopt(self, average: WeightAverage) -> WeightAverage:
        """Keep ``average`` as this technique's, with the state a checkpoint restored, if any."""
        if self._pending is not None:
            average.load_state_dict(self._pending)
            self._pending = None
        self._average = average
        return average

    def _holder(self, state: Any) -> WeightAverage:
        return self._average if self._average is not None else self._adopt(
            self._average_of(state))

    def on_fit_start(self, state: Any) -> None:
        self._holder(state)

    def state_dict(self) -> dict[str, Any]:
        if self._average is None:
            return {} if self._pending is None else dict(self._pending)
        return self._average.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        if self._average is None:
            self._pending = dict(state)
        else:
            self._average.load_state_dict(state)
