"""Outliers with opposing signals (#20): paired groups of examples whose losses swing in
opposite directions between consecutive evaluations.

The paper finds that a few paired groups of outliers, sharing a large feature but carrying
opposing labels, dominate training: their losses rise and fall alternately ("high on one
group and then the other") until the total loss spikes. This module detects such pairs from a
table of per-example losses on a fixed probe set, tracked over evaluations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heldout.core.bounds import Annotated, Ge
from heldout.core.measure import EvalContext, Measure
from heldout.core.per_example import iter_per_example_gradients, per_example_loss
from heldout.core.sampling import sample_indices
from heldout.registry import MEASURES

__all__ = [
    "OpposingGroups",
    "OpposingSignals",
    "group_gradient_cosine",
    "opposing_signals",
    "per_example_losses",
]


@dataclass(frozen=True)
class OpposingGroups:
    """The pair found by :func:`opposing_signals` at one transition between evaluations."""

    rising: Tensor  # probe indices whose loss rose most (largest change first)
    falling: Tensor  # probe indices whose loss fell most (most negative change first)
    rise: float  # mean loss change of the rising group (> 0; 0.0 when empty)
    fall: float  # mean loss change of the falling group (< 0; 0.0 when empty)
    correlation: float  # corr over the window of the groups' summed changes (NaN if undefined)

    @property
    def swing(self) -> float:
        """min(rise, −fall): the weaker side's swing, 0 unless *both* groups exist (a single
        high-loss cluster is just hard examples, not opposing signals)."""
        if len(self.rising) == 0 or len(self.falling) == 0:
            return 0.0
        return min(self.rise, -self.fall)


def _robust_scale(changes: Tensor) -> Tensor:
    """1.4826·MAD (the normal-consistent median absolute deviation), or 1.2533 × the mean
    absolute deviation from the median when the MAD is 0 (more than half the changes equal)."""
    deviation = (changes - changes.median()).abs()
    mad = deviation.median()
    return 1.4826 * mad if mad > 0 else 1.2533 * deviation.mean()


def opposing_signals(
    losses: Tensor,
    *,
    top_k: int = 20,
    threshold: float = 3.5,
    at: int = -1,
) -> OpposingGroups:
    """Find the rising and the falling group of outliers in a ``(T, N)`` table of per-example
    losses (T ≥ 2 evaluations of the same N probe examples, oldest first).

    Rule: Δ_i = ℓ_i(t+1) − ℓ_i(t) at transition ``at`` (default the latest). An example is an
    outlier when its robust z-score (Δ_i − median Δ) / (1.4826·MAD Δ) exceeds ``threshold``
    in absolute value (Iglewicz-Hoaglin's modified z-score; 3.5 is their cut-off); the rising
    group is the ``top_k`` largest positive outliers, the falling group the ``top_k`` most
    negative. ``threshold=0`` gives the plain top-k / bottom-k by Δ. ``correlation`` is the
    Pearson correlation, over every transition of the table, of Σ_{i∈rising} Δ_i(t) and
    Σ_{j∈falling} Δ_j(t): strongly negative when the two groups keep swinging against each
    other; NaN with fewer than 3 transitions, an empty group or a constant series. It
    includes the selecting transition, which is opposed by construction, so read it with
    T ≥ 4 or more.

    Provenance: the paper's abstract says the paired groups' losses oscillate "between high
    on one group and then the other" and that their gradients point in opposite directions
    (see :func:`group_gradient_cosine`); the selection of top/bottom examples by loss change follows
    the spec's reading of the paper, and the robust threshold and the correlation are the
    toolkit's formalization [recon: the paper's exact selection rule was not checked].

    References:
        Outliers with Opposing Signals Have an Outsized Effect on Neural Network Optimization
        (arXiv:2311.04163).

    Example:
        >>> before = torch.ones(20)
        >>> after = before.clone()
        >>> after[2], after[7] = 3.0, -0.5  # example 2 swings up by 2, example 7 down by 1.5
        >>> found = opposing_signals(torch.stack([before, after]))
        >>> found.rising.tolist(), found.falling.tolist(), found.rise, found.swing
        ([2], [7], 2.0, 1.5)
    """
    if losses.dim() != 2 or len(losses) < 2:
        raise ValueError(f"losses must be (T >= 2, N), got shape {tuple(losses.shape)}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    table = losses.double()
    changes = table[1:] - table[:-1]  # (T-1, N)
    delta = changes[at]
    scale = _robust_scale(delta)
    centered = delta - delta.median()
    limit = threshold * scale
    order = torch.argsort(delta, descending=True, stable=True)
    rising = order[centered[order] > limit][:top_k]
    falling = order.flip(0)[centered[order.flip(0)] < -limit][:top_k]
    rise = float(delta[rising].mean()) if len(rising) else 0.0
    fall = float(delta[falling].mean()) if len(falling) else 0.0
    return OpposingGroups(rising, falling, rise, fall, _correlation(changes, rising, falling))


def _correlation(changes: Tensor, rising: Tensor, falling: Tensor) -> float:
    if len(changes) < 3 or len(rising) == 0 or len(falling) == 0:
        return float("nan")
    a = changes[:, rising].sum(1)
    b = changes[:, falling].sum(1)
    a, b = a - a.mean(), b - b.mean()
    norms = math.sqrt(float(a.square().sum()) * float(b.square().sum()))
    return float((a * b).sum()) / norms if norms > 0 else float("nan")


def per_example_losses(
    outputs: Tensor, targets: Tensor, loss: Literal["auto", "cross_entropy", "mse"] = "auto"
) -> Tensor:
    """Per-example losses in float64: cross-entropy for class indices, mean squared error
    over the output entries for real-valued targets (``"auto"``: by the targets' dtype)."""
    if loss == "auto":
        loss = "mse" if targets.is_floating_point() else "cross_entropy"
    if loss == "cross_entropy":
        return F.cross_entropy(outputs.double(), targets.long(), reduction="none")
    if loss == "mse":
        y = targets.double().reshape(len(targets), -1)
        return (outputs.double().reshape(len(targets), -1) - y).square().mean(1)
    raise ValueError(f"unknown loss {loss!r}; valid losses: auto, cross_entropy, mse")


def group_gradient_cosine(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    first: Tensor,
    second: Tensor,
    *,
    chunk_size: int = 64,
    loss: Literal["auto", "cross_entropy", "mse"] = "auto",
) -> float:
    """cos(ḡ_A, ḡ_B) of the mean loss gradients of two groups of examples (indices into
    ``inputs``): negative when the groups pull the weights in opposite directions, the
    second half of the opposing-signals test. Eval mode; the model is left as it was.
    NaN when a group is empty or its mean gradient is zero.

    Example:
        >>> net = torch.nn.Linear(1, 1, bias=False)
        >>> x, y = torch.ones(2, 1), torch.tensor([[3.0], [-3.0]])  # opposite targets
        >>> group_gradient_cosine(net, x, y, torch.tensor([0]), torch.tensor([1]))
        -1.0
    """
    if len(first) == 0 or len(second) == 0:
        return float("nan")
    means = []
    for group in (first, second):
        x, y = inputs[group], targets[group]
        rows = iter_per_example_gradients(
            model, x, y, chunk_size=chunk_size, loss_fn=per_example_loss(loss, y))
        total = sum(chunk.double().sum(0) for chunk in rows)  # a Tensor: the group has rows
        means.append(cast(Tensor, total) / len(group))
    a, b = means
    norms = math.sqrt(float(a.square().sum()) * float(b.square().sum()))
    return float((a * b).sum()) / norms if norms > 0 else float("nan")


@MEASURES.register(
    "opposing_signals",
    summary="Paired groups of probe examples whose losses swing in opposite directions "
    "between evaluations (opposing signals).",
    papers=(20,),
)
@dataclass
class OpposingSignals(Measure):
    """Tracks per-example losses of a fixed probe set and reports :func:`opposing_signals`.

    At each evaluation of a listed split the probe's losses (from the shared eval-mode
    logits: no extra forward pass) are appended to a rolling table of the last ``window``
    evaluations, kept as state (``state_dict``), so a resumed run reports what an unbroken
    one would. From the second evaluation on it reports ``opposing_rise`` and
    ``opposing_fall`` (mean loss change of each group), ``opposing_rising_size`` and
    ``opposing_falling_size``, ``opposing_swing`` (the weaker side's swing, 0 unless both
    groups exist), ``opposing_correlation`` once the window holds ≥ 3 transitions (and is
    defined), and with ``gradient_check`` ``opposing_gradient_cosine``. [recon] top_k = 20
    per side follows the spec's k ≈ 10-30; the window and threshold are toolkit choices.

    References:
        Outliers with Opposing Signals Have an Outsized Effect on Neural Network Optimization
        (arXiv:2311.04163).

    Example:
        >>> from heldout.core import evaluate
        >>> net, measure = torch.nn.Linear(4, 3), OpposingSignals(probe_size=16)
        >>> data = {"train": (torch.randn(32, 4), torch.randint(0, 3, (32,)))}
        >>> evaluate(net, data, [measure])  # first evaluation: nothing to compare yet
        {}
        >>> with torch.no_grad():
        ...     _ = net.weight.mul_(2.0)
        >>> sorted(evaluate(net, data, [measure]))[0]
        'train/opposing_fall'
    """

    # probe examples tracked (a fixed random subset of the split)
    probe_size: Annotated[int, Ge(2)] = 1024
    window: Annotated[int, Ge(2)] = 8  # evaluations kept in the loss table (>= 2)
    top_k: Annotated[int, Ge(1)] = 20  # most examples per group
    # robust z-score a loss change must exceed (0: plain top-k)
    threshold: Annotated[float, Ge(0)] = 3.5
    seed: int = 0  # seed of the probe draw
    loss: Literal["auto", "cross_entropy", "mse"] = "auto"  # auto: by the targets' dtype
    gradient_check: bool = False  # also cos of the two groups' mean gradients
    chunk_size: Annotated[int, Ge(1)] = 64  # examples per vmap(grad) call for the gradient check
    splits: tuple[str, ...] = ("train",)  # where to track the probe
    _losses: dict[str, Tensor] = field(  # split -> (T, N) probe losses, oldest first
        default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.loss not in ("auto", "cross_entropy", "mse"):
            raise ValueError(f"loss must be auto, cross_entropy or mse, got {self.loss!r}")

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        if ctx.split not in self.splits:
            return {}
        targets = ctx.targets
        index = sample_indices(len(targets), self.probe_size, self.seed).to(targets.device)
        current = per_example_losses(ctx.logits[index], targets[index], self.loss).cpu()
        table = self._losses.get(ctx.split)
        if table is not None and table.shape[1] != len(current):
            raise ValueError(f"opposing_signals: the {ctx.split!r} probe has {len(current)} "
                             f"examples but the tracked losses have {table.shape[1]}")
        table = current[None] if table is None else torch.cat([table, current[None]])
        self._losses[ctx.split] = table = table[-self.window :]
        if len(table) < 2:
            return {}
        found = opposing_signals(table, top_k=self.top_k, threshold=self.threshold)
        out = {
            "opposing_rise": found.rise,
            "opposing_fall": found.fall,
            "opposing_rising_size": float(len(found.rising)),
            "opposing_falling_size": float(len(found.falling)),
            "opposing_swing": found.swing,
        }
        if math.isfinite(found.correlation):
            out["opposing_correlation"] = found.correlation
        if self.gradient_check:
            x, y = ctx.tensors()
            cosine = group_gradient_cosine(
                ctx.model, x[index], y[index], found.rising.to(y.device),
                found.falling.to(y.device), chunk_size=self.chunk_size, loss=self.loss)
            if math.isfinite(cosine):
                out["opposing_gradient_cosine"] = cosine
        return out

    def state_dict(self) -> dict[str, Any]:
        """The tracked loss table of each split, ``{"losses.<split>": (T, N) float64}``."""
        return {f"losses.{split}": table.clone() for split, table in self._losses.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        tables = {}
        for key, value in state.items():
            if not key.startswith("losses.") or not isinstance(value, Tensor) or value.dim() != 2:
                raise ValueError(f"opposing_signals: unexpected state entry {key!r}")
            tables[key.removeprefix("losses.")] = value.detach().clone().double().cpu()
        self._losses = tables
