"""Few-shot classification on a frozen backbone: the inductive prototype classifier
(SimpleShot) and the transductive clustering methods (k-means seeded by the supports, the
Laplacian-regularized bound optimizer of LaplacianShot).

Every method reads features of the backbone (``split_head(net)[0]``), CL2N-normalized
(:func:`cl2n`), and classifies one episode: labeled supports of ``N`` classes and an
unlabeled query set seen all at once. The math is in plain functions on features
(:func:`nearest_prototype`, :func:`kmeans`, :func:`laplacian_shot`); the registered adapters
only extract and normalize the features.

References:
    Wang, Chao, Weinberger, van der Maaten. SimpleShot: Revisiting Nearest-Neighbor
    Classification for Few-Shot Learning. arXiv:1911.04623.
    Ziko, Dolz, Granger, Ben Ayed. Laplacian Regularized Few-Shot Learning. ICML 2020,
    arXiv:2006.15486.
    Ziko, Boudiaf, Dolz, Granger, Ben Ayed. Transductive Few-Shot Learning: Clustering is All
    You Need? arXiv:2106.09516 (catalog #52).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from heldout.core.adapter import Adapter, Source, split_head
from heldout.core.bounds import Annotated, Ge, Gt
from heldout.registry import ADAPTERS

__all__ = ["FewShotAdapter", "KMeans", "LaplacianResult", "LaplacianShot", "SimpleShot",
           "check_episode", "cl2n", "kmeans", "knn_affinity", "laplacian_objective",
           "laplacian_shot", "nearest_prototype", "prototypes", "squared_distances"]

_SIMPLESHOT = ("SimpleShot: Revisiting Nearest-Neighbor Classification for Few-Shot Learning "
               "(arXiv:1911.04623)",)
_CLUSTERING = ("Transductive Few-Shot Learning: Clustering is All You Need? (arXiv:2106.09516)",)
_LAPLACIAN = ("Laplacian Regularized Few-Shot Learning (arXiv:2006.15486)", *_CLUSTERING)

Normalization = Literal["cl2n", "l2", "none"]


# ------------------------------------------------------------------------------ the math


def cl2n(features: Tensor, center: Tensor | None) -> Tensor:
    """SimpleShot's CL2N: subtract ``center`` (the mean base-class feature), then divide each
    row by its Euclidean norm. ``center=None`` only L2-normalizes.

    Example:
        >>> cl2n(torch.tensor([[3.0, 5.0]]), torch.tensor([0.0, 1.0])).tolist()
        [[0.6000000238418579, 0.800000011920929]]
    """
    if center is not None:
        features = features - center
    return features / features.norm(dim=1, keepdim=True).clamp_min(1e-12)


def squared_distances(a: Tensor, b: Tensor) -> Tensor:
    """``(A, B)`` squared Euclidean distances between the rows of ``a`` and ``b``."""
    return (a.unsqueeze(1) - b.unsqueeze(0)).pow(2).sum(-1)


def check_episode(support: Tensor, support_y: Tensor, query: Tensor) -> int:
    """The number of classes ``N`` of an episode; refuses support labels that are not
    ``0..N-1`` with every class present, and mismatched shapes."""
    if support_y.dim() != 1 or len(support_y) != len(support):
        raise ValueError(f"support_y must hold one label per support row ({len(support)}), "
                         f"got shape {tuple(support_y.shape)}")
    if support_y.is_floating_point() or len(support_y) == 0 or int(support_y.min()) < 0:
        raise ValueError("support_y must be non-negative integer labels 0..N-1")
    n_way = int(support_y.max()) + 1
    if len(torch.unique(support_y)) != n_way:
        raise ValueError(f"support_y must hold every class 0..{n_way - 1} at least once, got "
                         f"{sorted(torch.unique(support_y).tolist())}")
    if query.dim() != 2 or query.shape[1] != support.shape[1] or len(query) == 0:
        raise ValueError(f"query features must be (Q, {support.shape[1]}) with Q >= 1, got "
                         f"{tuple(query.shape)}")
    return n_way


def prototypes(support: Tensor, support_y: Tensor, n_way: int) -> Tensor:
    """``(N, D)`` class means of the support features."""
    one_hot = torch.nn.functional.one_hot(support_y, n_way).to(support.dtype)
    return (one_hot.T @ support) / one_hot.sum(0).unsqueeze(1)


def nearest_prototype(support: Tensor, support_y: Tensor, query: Tensor) -> Tensor:
    """SimpleShot's inductive classifier: ``(Q, N)`` scores ``−‖f_q − m_c‖²``, ``m_c`` the
    mean support feature of class ``c``; the prediction is the nearest prototype.

    Example:
        >>> s, sy = torch.tensor([[0.0], [2.0], [10.0]]), torch.tensor([0, 0, 1])
        >>> nearest_prototype(s, sy, torch.tensor([[4.0]])).tolist()
        [[-9.0, -36.0]]
    """
    n_way = check_episode(support, support_y, query)
    return -squared_distances(query, prototypes(support, support_y, n_way))


def kmeans(support: Tensor, support_y: Tensor, query: Tensor, *, soft: bool = False,
           temperature: float = 0.1, iterations: int = 10,
           include_support: bool = True) -> tuple[Tensor, Tensor]:
    """k-means on the query features seeded by the support prototypes: ``(scores, centers)``.

    Centers start at the prototypes ``m_c``. Each iteration assigns the queries (hard:
    ``z_q = argmin_c ‖f_q − m_c‖²``; soft: ``r_qc = softmax_c(−‖f_q − m_c‖² / T)``) and moves
    each center to the mean of its supports and its (weighted) queries,
    ``m_c = (Σ_{s∈S_c} f_s + Σ_q r_qc f_q) / (|S_c| + Σ_q r_qc)``; with
    ``include_support=False`` the supports only seed the centers (plain Lloyd iterations; a
    cluster left without queries keeps its center). Hard k-means stops early once the
    assignment no longer changes. Scores at the final centers: ``−‖f_q − m_c‖²`` (hard) or
    ``log r_qc`` (soft).

    References:
        Ziko et al. Transductive Few-Shot Learning: Clustering is All You Need?
        arXiv:2106.09516 (k-means and soft k-means as the unregularized cases).

    Example:
        >>> s, sy = torch.tensor([[0.0], [10.0]]), torch.tensor([0, 1])
        >>> q = torch.tensor([[4.0], [6.0], [8.0]])
        >>> scores, centers = kmeans(s, sy, q)  # 4 → class 0, 6 and 8 → class 1
        >>> centers.flatten().tolist()
        [2.0, 8.0]
    """
    n_way = check_episode(support, support_y, query)
    if not temperature > 0 or int(iterations) != iterations or iterations < 0:
        raise ValueError(f"kmeans: temperature must be > 0 and iterations an int >= 0, got "
                         f"{temperature!r}, {iterations!r}")
    centers = prototypes(support, support_y, n_way)
    one_hot = torch.nn.functional.one_hot(support_y, n_way).to(support.dtype)
    support_sum, support_count = one_hot.T @ support, one_hot.sum(0)
    if not include_support:
        support_sum, support_count = torch.zeros_like(support_sum), torch.zeros_like(support_count)
    previous = None
    for _ in range(iterations):
        distances = squared_distances(query, centers)
        if soft:
            weights = torch.softmax(-distances / temperature, dim=1)
        else:
            labels = distances.argmin(dim=1)
            if previous is not None and torch.equal(labels, previous):
                break
            previous = labels
            weights = torch.nn.functional.one_hot(labels, n_way).to(query.dtype)
        mass = support_count + weights.sum(0)
        moved = (support_sum + weights.T @ query) / mass.clamp_min(1e-12).unsqueeze(1)
        centers = torch.where((mass > 0).unsqueeze(1), moved, centers)
    distances = squared_distances(query, centers)
    scores = torch.log_softmax(-distances / temperature, dim=1) if soft else -distances
    return scores, centers


def knn_affinity(features: Tensor, k: int) -> Tensor:
    """``(Q, Q)`` symmetric kNN affinity: ``w_pq = (a_pq + a_qp) / 2`` with ``a_pq = 1`` when
    ``q`` is one of the ``k`` nearest neighbours of ``p`` (itself excluded), else 0.

    Example:
        >>> knn_affinity(torch.tensor([[0.0], [1.0], [5.0]]), 1).tolist()
        [[0.0, 1.0, 0.0], [1.0, 0.0, 0.5], [0.0, 0.5, 0.0]]
    """
    n = len(features)
    if int(k) != k or not 1 <= k <= n - 1:
        raise ValueError(f"knn must be an int in 1..{n - 1} (queries minus one), got {k!r}")
    distances = squared_distances(features, features)
    distances.fill_diagonal_(float("inf"))
    neighbours = distances.topk(k, dim=1, largest=False).indices
    directed = torch.zeros(n, n, dtype=features.dtype).scatter_(1, neighbours, 1.0)
    return (directed + directed.T) / 2


def laplacian_objective(assign: Tensor, unary: Tensor, affinity: Tensor, lam: float) -> Tensor:
    """The relaxed LaplacianShot objective the bound optimizer decreases,
    ``E(Y) = Σ_q y_qᵀ a_q − (λ/2) Σ_{p,q} w_pq y_pᵀ y_q + Σ_q y_qᵀ log y_q``: unary term,
    the Laplacian term ``(λ/2) Σ w_pq ‖y_p − y_q‖²`` up to a constant on one-hot points, and
    the entropy barrier that keeps ``y_q`` in the simplex (``0 log 0 = 0``)."""
    entropy_term = torch.special.xlogy(assign, assign).sum()
    return ((assign * unary).sum() - lam / 2 * (assign * (affinity @ assign)).sum()
            + entropy_term)


@dataclass(frozen=True)
class LaplacianResult:
    """What :func:`laplacian_shot` returns: ``log_assign`` ``(Q, N)`` (the log of the final
    assignments ``Y``), the objective after each iteration, and whether it converged."""

    log_assign: Tensor
    objectives: list[float]
    converged: bool


def laplacian_shot(unary: Tensor, affinity: Tensor, lam: float, *, max_iterations: int = 20,
                   tol: float = 1e-6) -> LaplacianResult:
    """LaplacianShot's bound optimizer: from ``Y⁰ = softmax(−a)`` it repeats the parallel
    per-query update ``y_q ← softmax(−a_q + λ Σ_p w_qp y_p)`` (the minimizer of the bound
    that linearizes the concave Laplacian term at the current ``Y``), until the objective
    (:func:`laplacian_objective`) changes by at most ``tol · |E|`` or ``max_iterations``.

    ``unary`` ``(Q, N)`` is ``a_qc = ‖f_q − m_c‖²``; ``affinity`` ``(Q, Q)`` a symmetric
    non-negative ``W``. The objective never increases when ``W`` is positive semi-definite
    (the bound is then tight and above ``E``); for a kNN affinity that is not guaranteed, as
    in the paper. ``λ = 0`` gives ``softmax(−a)``: the nearest-prototype prediction.

    References:
        Ziko et al. Laplacian Regularized Few-Shot Learning. arXiv:2006.15486, Eqs. (6)-(8).

    Example:
        >>> unary = torch.tensor([[0.0, 2.0], [0.0, 2.0], [0.6, 0.5]])
        >>> w = torch.ones(3, 3) - torch.eye(3)
        >>> laplacian_shot(unary, w, 0.0).log_assign.argmax(1).tolist()
        [0, 0, 1]
        >>> laplacian_shot(unary, w, 1.0).log_assign.argmax(1).tolist()  # its neighbours win
        [0, 0, 0]
    """
    if unary.dim() != 2 or affinity.shape != (len(unary), len(unary)):
        raise ValueError(f"unary must be (Q, N) and affinity (Q, Q); got {tuple(unary.shape)} "
                         f"and {tuple(affinity.shape)}")
    if not lam >= 0 or int(max_iterations) != max_iterations or max_iterations < 1 or tol < 0:
        raise ValueError(f"laplacian_shot: lam must be >= 0, max_iterations an int >= 1 and "
                         f"tol >= 0; got {lam!r}, {max_iterations!r}, {tol!r}")
    logits = -unary
    objectives: list[float] = []
    converged = False
    for _ in range(max_iterations):
        logits = -unary + lam * (affinity @ torch.softmax(logits, dim=1))
        energy = float(laplacian_objective(torch.softmax(logits, dim=1), unary, affinity, lam))
        if objectives and abs(energy - objectives[-1]) <= tol * abs(objectives[-1]):
            objectives.append(energy)
            converged = True
            break
        objectives.append(energy)
    return LaplacianResult(torch.log_softmax(logits, dim=1), objectives, converged)


# ------------------------------------------------------------------------------ adapters


@dataclass(eq=False)
class FewShotAdapter(Adapter):
    """What the few-shot adapters share: the backbone stays frozen (``changes = nothing``);
    ``transduce(query_x, support_x=..., support_y=...)`` extracts features with
    ``split_head(net)[0]``, normalizes them and calls :meth:`classify`, which returns
    ``(Q, N)`` class scores for the episode's ``N`` support classes.

    ``normalize="cl2n"`` centers by the mean feature of the labeled source (base-class)
    data when the adapter is bound with ``source`` (SimpleShot's CL2N); bound without
    source, it centers by the mean support feature instead (an inductive choice, the same
    for every method), then L2-normalizes.
    """

    mode: ClassVar[Literal["online", "transductive"]] = "transductive"
    changes: ClassVar[frozenset[str]] = frozenset({"nothing"})
    needs_support: ClassVar[bool] = True

    normalize: Normalization = "cl2n"  # feature normalization: cl2n, l2 or none

    def __post_init__(self, model: nn.Module | None = None) -> None:
        if self.normalize not in ("cl2n", "l2", "none"):
            raise ValueError(f"normalize must be 'cl2n', 'l2' or 'none', got {self.normalize!r}")
        self.center: Tensor | None = None  # the mean source feature, set by bind
        super().__post_init__(model)

    def prepare(self, net: nn.Module, source: Source | None) -> None:
        self.featurizer = split_head(net)[0]
        self.center = None
        if source is not None and self.normalize == "cl2n":
            self.center = self.features(source.x).mean(0)

    def features(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.featurizer(x).flatten(1)

    def normalized(self, support: Tensor, query: Tensor) -> tuple[Tensor, Tensor]:
        """Support and query features after the adapter's normalization."""
        if self.normalize == "none":
            return support, query
        center = None
        if self.normalize == "cl2n":
            center = self.center if self.center is not None else support.mean(0)
        return cl2n(support, center), cl2n(query, center)

    def transduce(self, x: Tensor, **kwargs: Any) -> Tensor:
        unknown = set(kwargs) - {"support_x", "support_y"}
        if unknown or "support_x" not in kwargs or "support_y" not in kwargs:
            raise TypeError(f"few-shot adapter {self.name} takes transduce(query_x, "
                            f"support_x=..., support_y=...); got keywords {sorted(kwargs)}")
        support, query = self.normalized(self.features(kwargs["support_x"]), self.features(x))
        return self.classify(support, kwargs["support_y"], query)

    def classify(self, support: Tensor, support_y: Tensor, query: Tensor) -> Tensor:
        """``(Q, N)`` scores of the (normalized) query features of one episode."""
        raise NotImplementedError


@ADAPTERS.register(
    "simpleshot",
    summary="SimpleShot: nearest class prototype on CL2N features (inductive few-shot).",
    papers=(52,),
    references=_SIMPLESHOT,
)
@dataclass(eq=False)
class SimpleShot(FewShotAdapter):
    """SimpleShot (Wang et al.; arXiv:1911.04623): CL2N features (centered by the base-class
    mean, L2-normalized), each query labeled by its nearest support prototype; scores are
    ``−‖f_q − m_c‖²``. Inductive: each query is classified on its own."""

    def classify(self, support: Tensor, support_y: Tensor, query: Tensor) -> Tensor:
        return nearest_prototype(support, support_y, query)


@ADAPTERS.register(
    "kmeans",
    summary="Transductive k-means (hard or soft) on the queries, seeded by the support "
    "prototypes.",
    papers=(52,),
    search_space={"temperature": ("log_uniform", 0.01, 1.0)},
    references=_CLUSTERING,
)
@dataclass(eq=False)
class KMeans(FewShotAdapter):
    """Transductive k-means (Ziko et al., arXiv:2106.09516): centers seeded by the support
    prototypes, updated from the supports and the (hard or softly) assigned queries
    (:func:`kmeans`). Scores are ``−‖f_q − m_c‖²`` (hard) or ``log r_qc`` (soft)."""

    soft: bool = False  # soft assignments softmax(−d / temperature) instead of argmin
    temperature: Annotated[float, Gt(0.0)] = 0.1  # soft k-means temperature
    iterations: Annotated[int, Ge(0)] = 10  # center updates (hard stops early at a fixed point)

    def classify(self, support: Tensor, support_y: Tensor, query: Tensor) -> Tensor:
        return kmeans(support, support_y, query, soft=self.soft, temperature=self.temperature,
                      iterations=self.iterations)[0]


@ADAPTERS.register(
    "laplacianshot",
    summary="LaplacianShot: prototype distances plus a kNN Laplacian term, bound optimizer.",
    papers=(52,),
    search_space={"lam": ("log_uniform", 0.1, 3.0)},
    references=_LAPLACIAN,
)
@dataclass(eq=False)
class LaplacianShot(FewShotAdapter):
    """LaplacianShot (Ziko et al., ICML 2020, arXiv:2006.15486): minimizes
    ``Σ_q y_qᵀ a_q + (λ/2) Σ_{p,q} w_pq ‖y_p − y_q‖²`` over query assignments, ``a_qc`` the
    squared distance to the support prototype, ``W`` the symmetric kNN affinity of the
    queries, by the bound optimizer (:func:`laplacian_shot`). Scores are the log
    assignments. Deviation: the prototypes are the plain support means (the paper also
    rectifies them with the queries), so the comparison with SimpleShot isolates the
    Laplacian term."""

    lam: Annotated[float, Ge(0.0)] = 1.0  # weight λ of the Laplacian term
    knn: Annotated[int, Ge(1)] = 3  # neighbours per query in the affinity
    max_iterations: Annotated[int, Ge(1)] = 20  # bound updates at most
    tol: Annotated[float, Ge(0.0)] = 1e-6  # stop when |ΔE| <= tol · |E|

    def classify(self, support: Tensor, support_y: Tensor, query: Tensor) -> Tensor:
        n_way = check_episode(support, support_y, query)
        unary = squared_distances(query, prototypes(support, support_y, n_way))
        affinity = knn_affinity(query, min(self.knn, len(query) - 1)) if len(query) > 1 \
            else torch.zeros(1, 1, dtype=query.dtype)
        return laplacian_shot(unary, affinity, self.lam, max_iterations=self.max_iterations,
                              tol=self.tol).log_assign
