"""Magnitude pruning and Sparse Model Soups.

Magnitude pruning zeroes the fraction of weights with the smallest |w|
(:func:`magnitude_prune_mask`, :func:`apply_mask`); the ``magnitude_pruning`` technique keeps
such a mask through a heldout run (one prune–retrain phase). Sparse Model Soups
(:func:`sparse_model_soup`) is iterative magnitude pruning whose every phase retrains several
copies of the pruned model and starts the next phase from their soup: all copies share the
mask, so their average is exactly as sparse.

Sparse Model Soups lives here rather than in a file of its own: it is a pruning schedule (one
mask per phase, pruned weights stay pruned), and it measures the soup's sparsity with the same
choice of prunable tensors as the mask.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from heldout.core.bounds import Annotated, Interval
from heldout.core.technique import Technique
from heldout.methods.averaging.batchnorm import recompute_batchnorm_stats
from heldout.methods.soups import StateDict, average_state_dicts, greedy_soup
from heldout.registry import TECHNIQUES

__all__ = [
    "MagnitudePruning",
    "Mask",
    "SoupPhase",
    "SparseSoupResult",
    "apply_mask",
    "magnitude_prune_mask",
    "mask_sparsity",
    "sparse_model_soup",
]

Mask = dict[str, Tensor]  # parameter name → bool tensor, True where the weight is kept


def _prunable(source: nn.Module | Mapping[str, Tensor],
              include: Iterable[str] | None) -> dict[str, Tensor]:
    entries = dict(source.named_parameters()) if isinstance(source, nn.Module) else dict(source)
    if include is not None:
        names = list(include)
        missing = [n for n in names if n not in entries]
        if missing:
            raise KeyError(f"no entries named {missing[:5]}")
        return {n: entries[n] for n in names}
    # weight matrices and kernels: biases and normalization scales stay dense
    return {n: t for n, t in entries.items()
            if (n == "weight" or n.endswith(".weight")) and t.is_floating_point() and t.dim() >= 2}


def _smallest(scores: Tensor, k: int) -> Tensor:
    """Bool tensor: True at the k smallest scores (ties broken by position)."""
    pruned = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if k > 0:
        pruned[torch.argsort(scores.flatten(), stable=True)[:k]] = True
    return pruned


def magnitude_prune_mask(
    source: nn.Module | Mapping[str, Tensor],
    sparsity: float,
    scope: Literal["global", "layer"] = "global",
    *,
    previous: Mapping[str, Tensor] | None = None,
    include: Iterable[str] | None = None,
) -> Mask:
    """Magnitude pruning mask: zero the fraction ``sparsity`` of prunable weights with the
    smallest |w|, the rest kept (True).

    ``scope="global"``: one threshold over all prunable tensors together (Sparse Model Soups'
    default, as ``torch.nn.utils.prune.global_unstructured`` with L1); ``"layer"``: each tensor
    to ``sparsity`` on its own. Of n weights, round(sparsity·n) are pruned. Prunable by
    default: the floating ``*.weight`` entries with two or more dimensions (linear and
    convolution weights; biases and normalization scales stay dense), or the names in
    ``include``. Entries pruned in ``previous`` stay pruned (iterative pruning); its sparsity
    must not exceed ``sparsity``.

    Example:
        >>> w = {"fc.weight": torch.tensor([[0.1, -3.0], [2.0, -0.5]])}
        >>> magnitude_prune_mask(w, 0.5)["fc.weight"]
        tensor([[False,  True],
                [ True, False]])

    References:
        Sparse Model Soups: A Recipe for Improved Pruning via Model Averaging (Zimmer et al.,
        ICLR 2024; arXiv:2306.16788).
    """
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    tensors = _prunable(source, include)
    if not tensors:
        raise ValueError("nothing to prune: no weight matrices found (pass include=...)")
    scores = {}
    for name, t in tensors.items():
        s = t.detach().abs().to(torch.float64)
        if previous is not None and name in previous:
            s = s.masked_fill(~previous[name].to(device=s.device, dtype=torch.bool), -1.0)
        scores[name] = s
    groups = [list(scores)] if scope == "global" else [[n] for n in scores]
    mask: Mask = {}
    for names in groups:
        flat = torch.cat([scores[n].flatten() for n in names])
        k = round(sparsity * flat.numel())
        already = int((flat < 0).sum())
        if already > k:
            raise ValueError(f"the previous mask prunes {already} of {flat.numel()} weights, "
                             f"more than sparsity {sparsity} allows ({k})")
        keep = ~_smallest(flat, k)
        for name, part in zip(names, keep.split([scores[n].numel() for n in names]),
                              strict=True):
            mask[name] = part.view(scores[name].shape)
    return mask


def mask_sparsity(mask: Mapping[str, Tensor]) -> float:
    """The fraction of masked-out (False) entries over all tensors of ``mask``."""
    total = sum(m.numel() for m in mask.values())
    return 0.0 if total == 0 else sum(int((~m.bool()).sum()) for m in mask.values()) / total


@torch.no_grad()
def apply_mask(target: nn.Module | Mapping[str, Tensor], mask: Mapping[str, Tensor]) -> Any:
    """Zero, in place, the entries of ``target`` (a module's parameters or a state dict) where
    ``mask`` is False; return ``target``."""
    entries = dict(target.named_parameters()) if isinstance(target, nn.Module) else target
    for name, keep in mask.items():
        if name not in entries:
            raise KeyError(f"the mask names {name!r}, which the target does not have")
        tensor = entries[name]
        tensor.masked_fill_(~keep.to(device=tensor.device, dtype=torch.bool), 0)
    return target


@TECHNIQUES.register(
    "magnitude_pruning",
    summary="Fixed magnitude-pruning mask kept through training: retrain a pruned model "
    "(one SMS phase).",
    papers=(60,),
    search_space={"sparsity": ("choice", [0.5, 0.8, 0.9, 0.95])},
)
@dataclass
class MagnitudePruning(Technique):
    """Prune the model once by magnitude before training (or use a given mask, see
    :meth:`from_mask`) and re-apply the mask after every optimizer step, so pruned weights
    stay exactly zero. The mask is checkpointed.

    Pruned weights still receive gradients, and optimizer state builds up for them; it never
    reaches the kept weights with element-wise optimizers (SGD, Adam, AdamW). Sparse Model
    Soups also zeroes the momentum of pruned weights; with the mask re-applied after every
    step the weights are the same either way for SGD.
    """

    # fraction of prunable weights set to zero (SMS: goal sparsity 0.9)
    sparsity: Annotated[float, Interval(0, 1)] = 0.9
    scope: Literal["global", "layer"] = "global"  # one threshold for all layers, or per layer
    _mask: Mask | None = field(default=None, init=False, repr=False)
    _targets: list[tuple[Tensor, Tensor]] = field(default_factory=list, init=False, repr=False)

    touches = frozenset({"model", "after_step"})

    def __post_init__(self) -> None:
        if self.scope not in ("global", "layer"):
            raise ValueError(f"scope must be 'global' or 'layer', got {self.scope!r}")

    @classmethod
    def from_mask(cls, mask: Mapping[str, Tensor]) -> MagnitudePruning:
        """A technique that keeps the given mask (parameter name → bool, True = kept)."""
        technique = cls(sparsity=mask_sparsity(mask))
        technique._mask = {k: v.detach().to(torch.bool).clone() for k, v in mask.items()}
        return technique

    @property
    def mask(self) -> Mask | None:
        return self._mask

    def transform_model(self, model: nn.Module) -> nn.Module:
        if self._mask is None:
            self._mask = magnitude_prune_mask(model, self.sparsity, self.scope)
        apply_mask(model, self._mask)
        return model

    def on_fit_start(self, state: Any) -> None:
        if self._mask is None:
            self._mask = magnitude_prune_mask(state.model, self.sparsity, self.scope)
        params = dict(state.model.named_parameters())
        missing = [n for n in self._mask if n not in params]
        if missing:
            raise KeyError(f"magnitude_pruning: the model has no parameters {missing[:5]}")
        self._targets = [(params[n], ~m.to(params[n].device)) for n, m in self._mask.items()]
        self.on_after_step(state)

    @torch.no_grad()
    def on_after_step(self, state: Any) -> None:
        for param, pruned in self._targets:
            param.masked_fill_(pruned, 0)

    def state_dict(self) -> dict[str, Any]:
        return {} if self._mask is None else {"mask": {k: v.clone() for k, v in
                                                        self._mask.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self._mask = {k: v.to(torch.bool).clone() for k, v in state["mask"].items()}
            self._targets = []  # rebuilt at fit start, on the model's device


@dataclass
class SoupPhase:
    """One prune–retrain–average phase of :func:`sparse_model_soup`."""

    target_sparsity: float  # the sparsity pruned to at the start of the phase
    sparsity: float  # the soup's fraction of zero weights among the prunable ones
    chosen: list[int]  # the retrained copies that went into the soup
    candidate_scores: list[float] | None  # their held-out scores (when evaluate_fn is given)
    soup_score: float | None  # the soup's held-out score (when evaluate_fn is given)


@dataclass
class SparseSoupResult:
    """What :func:`sparse_model_soup` returns: the final soup, its mask and each phase."""

    model: nn.Module
    mask: Mask
    phases: list[SoupPhase]


def _sparsity_schedule(sparsity: float, phases: int) -> list[float]:
    # prune 1 − (1 − S)^(1/P) of the remaining weights each phase: S after P phases
    return [1.0 - (1.0 - sparsity) ** (k / phases) for k in range(1, phases + 1)]


def _reparametrize(model: nn.Module, mask: Mask) -> None:
    for name, keep in mask.items():
        module_name, _, attr = name.rpartition(".")
        prune.custom_from_mask(model.get_submodule(module_name), attr, keep)


def _make_permanent(model: nn.Module, mask: Mask) -> None:
    for name in mask:
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name)
        if hasattr(module, attr + "_orig"):
            prune.remove(module, attr)


def sparse_model_soup(
    train_fn: Callable[[nn.Module, int], nn.Module | None],
    model: nn.Module,
    *,
    sparsity: float = 0.9,
    phases: int = 3,
    n_retrains: int = 3,
    schedule: Sequence[float] | None = None,
    seeds: Sequence[int] | None = None,
    scope: Literal["global", "layer"] = "global",
    soup: Literal["uniform", "greedy"] = "uniform",
    evaluate_fn: Callable[[StateDict], float] | None = None,
    bn_data: Any = None,
    bn_batch_size: int | None = None,
    include: Iterable[str] | None = None,
) -> SparseSoupResult:
    """Sparse Model Soups: iterative magnitude pruning whose every phase retrains several
    copies and starts the next phase from their average.

    For each phase p = 1..P (``schedule`` gives the sparsities; default S_p = 1 − (1 − S)^{p/P},
    i.e. prune 1 − (1 − S)^{1/P} of the remaining weights each phase):

    1. prune the current model by magnitude to S_p (``scope``; pruned weights stay pruned);
    2. retrain m = ``n_retrains`` copies, ``train_fn(copy, seed)`` for seed in ``seeds``
       (default 0..m−1); ``train_fn`` varies whatever it likes with the seed (batch order,
       weight decay, retrain length) and returns the trained model (or None: trained in
       place). Each copy's masked weights are reparametrized as ``weight_orig * weight_mask``
       (``torch.nn.utils.prune``), so any training loop keeps the mask;
    3. average them: uniform, or greedy with ``evaluate_fn`` (a state dict → held-out score);
       all copies share the mask, so the soup has exactly the same zeros;
    4. recompute BatchNorm statistics on ``bn_data`` if given (the paper: 20% of the training
       data), and start the next phase from the soup.

    ``model`` (the trained dense model) is not modified. Defaults: S = 0.9 (the code's goal
    sparsity); m = 3 as in the paper's sketch of one phase; P = 3 [unverified].

    Example:
        >>> def train(net, seed):  # a stand-in for a real retraining loop
        ...     torch.manual_seed(seed)
        ...     with torch.no_grad():
        ...         net.weight.add_(0.01 * torch.randn_like(net.weight))
        ...     return net
        >>> result = sparse_model_soup(train, nn.Linear(10, 10), sparsity=0.5, phases=2)
        >>> round(mask_sparsity(result.mask), 2)
        0.5

    References:
        Sparse Model Soups: A Recipe for Improved Pruning via Model Averaging (Zimmer et al.,
        ICLR 2024; arXiv:2306.16788).
    """
    targets = list(schedule) if schedule is not None else _sparsity_schedule(sparsity, phases)
    if not targets or any(b < a for a, b in zip(targets, targets[1:], strict=False)):
        raise ValueError(f"the sparsity schedule must be non-empty and non-decreasing: {targets}")
    seed_list = list(seeds) if seeds is not None else list(range(n_retrains))
    if not seed_list:
        raise ValueError("need at least one retrained copy per phase")
    if soup == "greedy" and evaluate_fn is None:
        raise ValueError("a greedy soup needs evaluate_fn")
    if soup not in ("uniform", "greedy"):
        raise ValueError(f"soup must be 'uniform' or 'greedy', got {soup!r}")
    current = copy.deepcopy(model)
    mask: Mask | None = None
    history: list[SoupPhase] = []
    for target in targets:
        mask = magnitude_prune_mask(current, target, scope, previous=mask, include=include)
        apply_mask(current, mask)
        ingredients = []
        for seed in seed_list:
            candidate = copy.deepcopy(current)
            _reparametrize(candidate, mask)
            trained = train_fn(candidate, seed)
            trained = candidate if trained is None else trained
            _make_permanent(trained, mask)
            apply_mask(trained, mask)
            ingredients.append({k: v.detach().clone() for k, v in trained.state_dict().items()})
        scores = None
        if soup == "greedy":
            assert evaluate_fn is not None
            found = greedy_soup(ingredients, evaluate_fn)
            state, chosen, scores = found.state_dict, found.chosen, found.candidate_scores
        else:
            state, chosen = average_state_dicts(ingredients), list(range(len(ingredients)))
            if evaluate_fn is not None:
                scores = [float(evaluate_fn(s)) for s in ingredients]
        current.load_state_dict(state)
        apply_mask(current, mask)
        if bn_data is not None:
            recompute_batchnorm_stats(current, bn_data, bn_batch_size)
        soup_score = None if evaluate_fn is None else float(
            evaluate_fn({k: v.detach().clone() for k, v in current.state_dict().items()}))
        prunable = _prunable(current, list(mask))
        zeros = sum(int((t == 0).sum()) for t in prunable.values())
        history.append(SoupPhase(target, zeros / sum(t.numel() for t in prunable.values()),
                                 chosen, scores, soup_score))
    assert mask is not None
    return SparseSoupResult(current, mask, history)
