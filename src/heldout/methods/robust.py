"""Robust-mean gradient descent (#10): suppress weak gradient directions by replacing the mean
of the per-example gradients with a robust estimate of it.

Chatterjee and Zielinski argue that directions supported by many examples ("strong",
coherent directions) drive generalization, while directions pushed by few examples drive
memorization. A robust mean keeps the first and damps the second:

* :func:`winsorized_mean`: per coordinate, clamp the m per-example values to their c-th and
  (1 − c)-th percentiles, then average (winsorized gradient descent);
* :func:`median_of_means`: split the examples into groups, average each group, take the
  coordinate-wise median of the group means (M3 with 3 groups: the median of 3 minibatch
  gradients);
* :func:`running_median`: the coordinate-wise median of the last k minibatch gradients, one
  update per step once k gradients have been seen (RM3 with k = 3).

Per-example gradients come from ``torch.func`` (``functional_call`` + ``vmap(grad)``, in
chunks of examples) through :func:`heldout.measures.coherence.per_example_gradients`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from heldout.core.bounds import Annotated, Ge, Interval
from heldout.core.per_example import per_example_gradients, per_example_loss
from heldout.core.technique import Technique
from heldout.registry import TECHNIQUES

__all__ = [
    "RobustMeanGradients",
    "median_of_means",
    "running_median",
    "winsorized_mean",
]

Estimator = Literal["winsorized", "median_of_means", "running_median"]

REFERENCE = "On the Generalization Mystery in Deep Learning (arXiv:2203.10036)"


def _median(stacked: Tensor) -> Tensor:
    """Coordinate-wise median along dim 0, NumPy's convention (mean of the two middle values
    for an even count)."""
    n = stacked.shape[0]
    if n % 2:
        return stacked.kthvalue(n // 2 + 1, dim=0).values
    ordered = stacked.sort(dim=0).values
    return (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def winsorized_mean(per_example: Tensor, clip_fraction: float = 0.1) -> Tensor:
    """Mean over dim 0 after clamping each coordinate to its c-th and (1 − c)-th percentiles.

    For m values per coordinate the bounds are the order statistics of rank
    round((m − 1)·c) and round((m − 1)·(1 − c)) (0-based, half to even): NumPy's
    ``percentile(g, [100c, 100 − 100c], method="nearest")``, which the official code uses.
    ``clip_fraction`` c is a fraction (the code's ``winsorize_pct`` = 100 c); c = 0 is the
    plain mean.

    Example:
        >>> g = torch.tensor([[0.0], [1.0], [2.0], [3.0], [100.0]])
        >>> winsorized_mean(g, 0.25)  # clamp to [1, 3]: mean of 1, 1, 2, 3, 3
        tensor([2.])

    References:
        On the Generalization Mystery in Deep Learning (arXiv:2203.10036); Chatterjee and
        Zielinski, coherent_gradients/iclr_2020_paper/utils.py (google-research).
    """
    if not 0.0 <= clip_fraction <= 0.5:
        raise ValueError(f"clip_fraction must be in [0, 0.5], got {clip_fraction}")
    m = per_example.shape[0]
    if m == 0:
        raise ValueError("winsorized_mean needs at least one example")
    percent = 100.0 * clip_fraction  # the same float arithmetic as NumPy's percentiles
    low_rank = round((m - 1) * (percent / 100.0))
    high_rank = round((m - 1) * ((100.0 - percent) / 100.0))
    if low_rank == 0 and high_rank == m - 1:
        return per_example.mean(dim=0)
    low = _order_statistic(per_example, low_rank)
    high = _order_statistic(per_example, high_rank)
    return per_example.clamp(min=low, max=high).mean(dim=0)


def _order_statistic(values: Tensor, rank: int) -> Tensor:
    """The value of 0-based rank ``rank`` along dim 0. A partial ``topk`` from the nearer end
    is about twice as fast on CPU as ``kthvalue`` or a sort along dim 0."""
    m = values.shape[0]
    if rank < m - 1 - rank:
        return values.topk(rank + 1, dim=0, largest=False, sorted=False).values.amax(dim=0)
    return values.topk(m - rank, dim=0, largest=True, sorted=False).values.amin(dim=0)


def median_of_means(per_example: Tensor, groups: int = 3) -> Tensor:
    """Coordinate-wise median of the means of ``groups`` consecutive groups of rows.

    The groups are split as ``numpy.array_split`` does (sizes differ by at most one); in
    training the rows of a batch are shuffled, so consecutive groups are random groups. With 3
    groups this is M3, the median of 3 minibatch gradients.

    Example:
        >>> g = torch.tensor([[1.0], [3.0], [10.0], [10.0], [-50.0], [-40.0]])
        >>> median_of_means(g, 3)  # group means 2, 10, -45
        tensor([2.])
    """
    if not 1 <= groups <= per_example.shape[0]:
        raise ValueError(f"groups must be in [1, {per_example.shape[0]}] (the number of "
                         f"examples), got {groups}")
    means = torch.stack([chunk.mean(dim=0) for chunk in per_example.tensor_split(groups)])
    return _median(means)


def running_median(history: Sequence[Tensor]) -> Tensor:
    """Coordinate-wise median of a window of gradients (RM3: the last 3 minibatch gradients).

    Example:
        >>> running_median([torch.tensor([1.0, 5.0]), torch.tensor([2.0, 0.0]),
        ...                 torch.tensor([9.0, 1.0])])
        tensor([2., 1.])
    """
    if not history:
        raise ValueError("running_median needs at least one gradient")
    return _median(torch.stack(list(history)))


@contextlib.contextmanager
def _running_statistics_readable(model: nn.Module) -> Iterator[None]:
    """Let BatchNorm layers that hold running statistics read them in eval mode even while
    SAM's second pass has switched their tracking off (eval mode never updates them)."""
    switched = [m for m in model.modules() if isinstance(m, _BatchNorm)
                and not m.track_running_stats and m.running_mean is not None]
    for layer in switched:
        layer.track_running_stats = True
    try:
        yield
    finally:
        for layer in switched:
            layer.track_running_stats = False


@TECHNIQUES.register(
    "robust_mean_gradients",
    summary="Replace the mean gradient by a robust mean of the per-example gradients "
    "(winsorized, median of means) or a running median of minibatch gradients.",
    papers=(10,),
    search_space={"clip_fraction": ("uniform", 0.01, 0.3)},
)
@dataclass
class RobustMeanGradients(Technique):
    """After each backward pass, overwrite every parameter's ``.grad`` with a robust estimate.

    ``winsorized`` and ``median_of_means`` use the per-example gradients of the current batch
    (``state.batch``) for the loss named by ``loss`` (cross-entropy by default, whatever the
    Trainer's loss: other loss terms, weight decay in the loss say, are replaced too). They are
    computed in eval mode (BatchNorm reads its running statistics, dropout is off), which is
    exact for the paper's plain MLPs. ``running_median`` (RM3) needs no per-example
    gradients: it replaces the batch gradient by the median of it and the previous
    ``window − 1`` steps' gradients. As in the official optimizer (``rm3.py``: a ring buffer
    whose median is applied only once its counter reaches 3), the first ``window − 1`` steps
    make no update: their gradients only fill the window, and the parameters' ``.grad`` is
    set to None, so the base optimizer skips them (no momentum, weight decay or Adam moments
    either). ``pad_window=True`` instead updates from the first step, with the window padded
    by copies of the first gradient. With a two-pass step strategy (SAM) it acts on each pass,
    and the gradient of the last pass of a step is the one the running median remembers (a
    step whose first pass leaves no gradient makes no update). The official optimizer folds
    weight decay into each remembered gradient; here the base optimizer's weight decay acts
    on the median.
    """

    estimator: Estimator = "winsorized"  # winsorized, median_of_means (M3) or running_median
    # winsorized: c (the code's flag: 10 percent)
    clip_fraction: Annotated[float, Interval(0, 0.5)] = 0.1
    groups: Annotated[int, Ge(1)] = 3  # median_of_means: number of groups (M3: 3)
    window: Annotated[int, Ge(1)] = 3  # running_median: gradients in the median (RM3: 3)
    pad_window: bool = False  # running_median: update from step 1, padding with the first grad
    # per-example loss; the field shadows the ``loss`` hook, which the trainer calls only for
    # techniques that touch "loss" (this one does not), and renaming it would change run ids
    loss: Literal["cross_entropy", "mse"] = "cross_entropy"  # type: ignore[assignment]  # a field, not the hook
    # examples per vmap(grad) call: memory ~ chunk_size x #params
    chunk_size: Annotated[int, Ge(1)] = 64
    _history: list[list[Tensor]] = field(default_factory=list, init=False, repr=False)
    _pending: list[Tensor] | None = field(default=None, init=False, repr=False)

    touches = frozenset({"gradients"})

    def __post_init__(self) -> None:
        if self.estimator not in get_args(Estimator):
            raise ValueError(f"unknown estimator {self.estimator!r}; valid: "
                             f"{', '.join(get_args(Estimator))}")

    def on_after_backward(self, state: Any) -> None:
        params = [p for p in state.model.parameters() if p.requires_grad]
        if self.estimator == "running_median":
            self._running_median(params)
            return
        x, y = state.batch[0], state.batch[1]
        with _running_statistics_readable(state.model):
            per_example = per_example_gradients(state.model, x, y, chunk_size=self.chunk_size,
                                                loss_fn=per_example_loss(self.loss, y))
        if self.estimator == "winsorized":
            robust = winsorized_mean(per_example, self.clip_fraction)
        else:
            robust = median_of_means(per_example, self.groups)
        column = 0
        with torch.no_grad():
            for p in params:
                if p.grad is not None:
                    p.grad.copy_(robust[column : column + p.numel()].view_as(p))
                column += p.numel()

    @torch.no_grad()
    def _running_median(self, params: list[Tensor]) -> None:
        current = [torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
                   for p in params]
        self._pending = current
        earlier = self._history[-(self.window - 1):] if self.window > 1 else []
        if len(earlier) < self.window - 1 and not self.pad_window:
            for p in params:  # the window is not full yet: no update (the official rule)
                p.grad = None
            return
        padding = self._history[0] if self._history else current
        window = [padding] * (self.window - 1 - len(earlier)) + earlier + [current]
        for index, p in enumerate(params):
            if p.grad is not None:
                p.grad.copy_(running_median([grads[index] for grads in window]))

    def on_after_step(self, state: Any) -> None:
        if self._pending is not None:
            self._history = [*self._history, self._pending][-max(self.window - 1, 1):]
            self._pending = None

    def state_dict(self) -> dict[str, Any]:
        return {"history": [[t.clone() for t in grads] for grads in self._history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._history = [[t.clone() for t in grads] for grads in state.get("history", [])]
        self._pending = None
