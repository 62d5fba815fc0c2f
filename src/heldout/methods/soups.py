"""Model soups: the weighted mean of the weights of models that share an initialization (or
a pruned parent), θ = Σ_k w_k θ_k with Σ_k w_k = 1 — uniform, or greedy on held-out data.

The functions work on state dicts (or modules) and are what a user imports into their own loop.
Averaging rules for a state dict: floating-point entries are averaged; integer entries (the
BatchNorm batch counter ``num_batches_tracked``) are taken from the first dict, since an
average of counters is meaningless. Averaged BatchNorm statistics do not match averaged
weights: recompute them with
:func:`~heldout.methods.averaging.batchnorm.recompute_batchnorm_stats`. The Gaussian-weighted
soup of a trajectory's checkpoints is
:func:`~heldout.methods.averaging.gaussian.gaussian_average`; running averages of the weights
during training (EMA, SWA, Gaussian) are in :mod:`heldout.methods.averaging`, pruning and Sparse
Model Soups in :mod:`heldout.methods.pruning`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "GreedySoupResult",
    "StateDict",
    "average_state_dicts",
    "greedy_soup",
    "uniform_soup",
]

StateDict = dict[str, Tensor]


def _as_state_dict(source: nn.Module | Mapping[str, Tensor]) -> Mapping[str, Tensor]:
    return source.state_dict() if isinstance(source, nn.Module) else source


def _is_averaged(value: Any) -> bool:
    return isinstance(value, Tensor) and (value.is_floating_point() or value.is_complex())


def average_state_dicts(
    state_dicts: Sequence[nn.Module | Mapping[str, Tensor]],
    weights: Sequence[float] | Tensor | None = None,
) -> StateDict:
    """The weighted mean Σ_k w_k θ_k / Σ_k w_k of state dicts (or modules) with the same keys.

    ``weights`` (non-negative, not all zero) default to uniform. Floating-point entries are
    averaged (accumulated in at least float32, returned in their own dtype); integer and bool
    entries, such as BatchNorm's ``num_batches_tracked``, are copied from the first dict.

    Example:
        >>> a, b = {"w": torch.tensor([0.0, 2.0])}, {"w": torch.tensor([2.0, 4.0])}
        >>> average_state_dicts([a, b], weights=[3, 1])["w"]
        tensor([0.5000, 2.5000])

    References:
        Model soups: averaging weights of multiple fine-tuned models improves accuracy without
        increasing inference time (Wortsman et al., ICML 2022; arXiv:2203.05482).
    """
    dicts = [_as_state_dict(s) for s in state_dicts]
    if not dicts:
        raise ValueError("need at least one state dict to average")
    first = dicts[0]
    for index, other in enumerate(dicts[1:], start=1):
        if other.keys() != first.keys():
            extra, missing = set(other) - set(first), set(first) - set(other)
            raise ValueError(f"state dict {index} has different keys from state dict 0 "
                             f"(extra {sorted(extra)[:5]}, missing {sorted(missing)[:5]})")
    if weights is None:
        factors = [1.0 / len(dicts)] * len(dicts)
    else:
        w = torch.as_tensor(weights, dtype=torch.float64).flatten()
        if len(w) != len(dicts):
            raise ValueError(f"got {len(w)} weights for {len(dicts)} state dicts")
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError(f"weights must be finite, non-negative and not all zero: {w}")
        factors = (w / w.sum()).tolist()
    out: StateDict = {}
    for key, value in first.items():
        if not _is_averaged(value):
            out[key] = value.detach().clone() if isinstance(value, Tensor) else value
            continue
        acc_dtype = torch.promote_types(value.dtype, torch.float32)
        total = torch.zeros(value.shape, dtype=acc_dtype, device=value.device)
        for factor, d in zip(factors, dicts, strict=True):
            total.add_(d[key].detach().to(acc_dtype), alpha=factor)
        out[key] = total.to(value.dtype)
    return out


def uniform_soup(models_or_state_dicts: Sequence[nn.Module | Mapping[str, Tensor]]) -> StateDict:
    """The uniform soup θ = (1/K) Σ_k θ_k of K models (or state dicts) fine-tuned from one
    initialization; load it with ``model.load_state_dict``.

    References:
        Model soups (Wortsman et al., ICML 2022; arXiv:2203.05482).
    """
    return average_state_dicts(models_or_state_dicts)


@dataclass
class GreedySoupResult:
    """What :func:`greedy_soup` found."""

    state_dict: StateDict  # the soup: the uniform mean of the chosen candidates
    chosen: list[int]  # indices into the candidates, in the order they joined the soup
    trajectory: list[float]  # the soup's held-out score after each candidate was considered
    candidate_scores: list[float]  # each candidate's own held-out score
    tried: list[tuple[int, float]]  # (candidate, score of the soup with it added), each trial


def greedy_soup(
    candidates: Sequence[nn.Module | Mapping[str, Tensor]],
    evaluate_fn: Callable[[StateDict], float],
    *,
    scores: Sequence[float] | None = None,
    strict: bool = False,
) -> GreedySoupResult:
    """Greedy soup: add candidates in order of their own held-out score, keeping each only if
    the soup's held-out score does not decrease.

    Rule: sort the candidates by ``evaluate_fn`` (higher is better) on held-out data,
    descending; start the soup with the best; for each next candidate form the uniform mean of
    the soup's ingredients and it, (n·soup + θ)/(n + 1), and keep it if its score is ≥ the
    current soup's (``strict=True``: >, as in the model-soups repository's ``main.py``; the
    paper's Algorithm 1 and the Sparse Model Soups code use ≥). The soup is never worse on the
    selection data than the best single candidate, and the trajectory never decreases.

    ``evaluate_fn`` receives a state dict; when the models have BatchNorm, recompute its
    statistics inside it (:func:`recompute_batchnorm_stats`), as Sparse Model Soups does.
    ``scores`` are the candidates' own scores, if already known.

    Example:
        >>> cands = [{"w": torch.tensor([1.0])}, {"w": torch.tensor([3.0])}]
        >>> greedy_soup(cands, lambda sd: -abs(float(sd["w"]) - 2.0)).chosen
        [0, 1]

    References:
        Model soups (Wortsman et al., ICML 2022; arXiv:2203.05482), Recipe 1 (GreedySoup).
    """
    dicts = [_as_state_dict(c) for c in candidates]
    if not dicts:
        raise ValueError("greedy_soup needs at least one candidate")
    own = [float(evaluate_fn(dict(d))) for d in dicts] if scores is None else [
        float(s) for s in scores]
    if len(own) != len(dicts):
        raise ValueError(f"got {len(own)} scores for {len(dicts)} candidates")
    # stable sort: ties keep the given order; NaN scores go last
    order = sorted(range(len(dicts)),
                   key=lambda i: -own[i] if not math.isnan(own[i]) else math.inf)
    chosen = [order[0]]
    soup = average_state_dicts([dicts[order[0]]])
    best = own[order[0]]
    trajectory, tried = [best], []
    for index in order[1:]:
        trial = average_state_dicts([soup, dicts[index]], weights=[len(chosen), 1])
        score = float(evaluate_fn(trial))
        tried.append((index, score))
        if score > best or (not strict and score >= best):
            chosen.append(index)
            soup, best = trial, score
        trajectory.append(best)
    return GreedySoupResult(soup, chosen, trajectory, own, tried)
