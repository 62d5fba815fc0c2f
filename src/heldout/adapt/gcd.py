"""Generalized category discovery (GCD) on the features of a trained model: ProtoGCD and a
pseudo-labeling baseline that treats old and new classes separately.

In GCD a model is trained on labeled examples of the *old* classes; the unlabeled query set
holds examples of the old classes and of ``num_new`` *new* ones. An adapter here scores every
query example over ``n_old + num_new`` classes: the old classes in the source's order, then
the discovered ones (evaluated with :func:`heldout.measures.gcd.gcd_accuracy`, which matches
the discovered columns to the true new classes).

References:
    Ma, Zhu, Zhang, Liu. ProtoGCD: Unified and Unbiased Prototype Learning for Generalized
    Category Discovery. arXiv:2504.03755 (catalog #51).
    Vaze, Han, Vedaldi, Zisserman. Generalized Category Discovery. arXiv:2201.02609.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heldout.core.adapter import Adapter, Source, split_head
from heldout.core.bounds import Annotated, Ge, Gt, Interval
from heldout.registry import ADAPTERS
from heldout.tasks.splitting import import_optional

__all__ = [
    "GCDPseudoLabel",
    "ProtoGCD",
    "dapl_targets",
    "dual_level_pseudo_label_loss",
    "entropy_regularization",
    "kmeans",
    "prototype_logits",
    "prototype_separation",
]

_PROTOGCD = ("ProtoGCD: Unified and Unbiased Prototype Learning for Generalized Category "
             "Discovery (arXiv:2504.03755)",)
_GCD = ("Generalized Category Discovery (arXiv:2201.02609)",)


# ---------------------------------------------------------------------- the math of ProtoGCD

def prototype_logits(features: Tensor, prototypes: Tensor) -> Tensor:
    """Cosine similarities ``cos(z_i, μ_k)`` of every feature row to every prototype row,
    shape ``(N, K)``; divided by a temperature they are ProtoGCD's classification logits."""
    return F.normalize(features, dim=-1) @ F.normalize(prototypes, dim=-1).T


def dapl_targets(teacher_logits: Tensor, ratio: float, temperature: float) -> Tensor:
    """Dual-level adaptive pseudo-labels: the sharpened teacher distribution
    ``q_i = softmax(l_i / τ_t)``, replaced by its one-hot arg-max for the ``⌊ratio · N⌋`` most
    confident rows (hard labels), kept soft for the others. Confidence is the ratio of the
    largest to the second largest probability (as in the official code).

    Example:
        >>> logits = torch.tensor([[2.0, 0.0], [0.1, 0.0]], dtype=torch.float64)
        >>> dapl_targets(logits, 0.5, 1.0).round(decimals=3).tolist()
        [[1.0, 0.0], [0.525, 0.475]]
    """
    if not 0 <= ratio <= 1:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    targets = F.softmax(teacher_logits.detach() / temperature, dim=-1)
    top2 = targets.topk(2, dim=-1).values
    hard = (top2[:, 0] / (top2[:, 1] + 1e-6)).topk(int(len(targets) * ratio)).indices
    one_hot = F.one_hot(targets.argmax(dim=-1), targets.shape[-1]).to(targets.dtype)
    targets[hard] = one_hot[hard]
    return targets


def dual_level_pseudo_label_loss(student_logits: Tensor, teacher_logits: Tensor, ratio: float,
                                 student_temperature: float = 0.1,
                                 teacher_temperature: float = 0.05) -> Tensor:
    """ProtoGCD's self-distillation loss with dual-level adaptive pseudo-labels (DAPL):
    ``mean_i −Σ_k q_ik log softmax(s_i / τ_s)_k`` with ``q`` from :func:`dapl_targets` of the
    (detached) teacher logits. Both arguments are cosine logits ``(N, K)``.

    Example:
        >>> s = torch.tensor([[1.0, 0.0]])
        >>> float(dual_level_pseudo_label_loss(s, s, 1.0, 1.0)) == float(-F.log_softmax(s, 1)[0, 0])
        True
    """
    targets = dapl_targets(teacher_logits, ratio, teacher_temperature)
    return -(targets * F.log_softmax(student_logits / student_temperature, dim=-1)).sum(-1).mean()


def entropy_regularization(logits: Tensor, temperature: float = 0.1) -> Tensor:
    """``log K − H(p̄)`` with ``p̄ = mean_i softmax(l_i / τ)``: zero when the predictions use
    all ``K`` classes equally on average, ``log K`` when they all fall in one class. It stops
    the clustering from collapsing onto few (old) classes.

    Example:
        >>> float(entropy_regularization(torch.eye(3), 1e-3))  # one row per class: uniform
        0.0
    """
    mean = F.softmax(logits / temperature, dim=-1).mean(dim=0)
    return math.log(mean.numel()) + (mean * torch.log(mean.clamp_min(1e-12))).sum()


def prototype_separation(prototypes: Tensor, temperature: float = 0.1) -> Tensor:
    """``mean_k log( mean_{j≠k} exp(cos(μ_k, μ_j) / τ) )``: pushes every prototype away from
    the others (a contrastive loss with negatives only), so classes stay apart.

    Example:
        >>> round(float(prototype_separation(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), 1.0)), 6)
        -1.0
    """
    if len(prototypes) < 2:
        raise ValueError(f"prototype_separation needs at least 2 prototypes, got "
                         f"{len(prototypes)}")
    similarity = prototype_logits(prototypes, prototypes) / temperature
    off_diagonal = ~torch.eye(len(prototypes), dtype=torch.bool, device=prototypes.device)
    negatives = similarity[off_diagonal].reshape(len(prototypes), -1)
    return (torch.logsumexp(negatives, dim=1) - math.log(negatives.shape[1])).mean()


def kmeans(features: Tensor, clusters: int, seed: int) -> tuple[Tensor, Tensor]:
    """``(centroids, assignments)`` of scikit-learn's k-means (k-means++ initialization, ten
    restarts, ``random_state=seed``) on the rows of ``features``."""
    if not 1 <= clusters <= len(features):
        raise ValueError(f"k-means needs 1 <= clusters <= number of examples, got {clusters} "
                         f"clusters for {len(features)} examples")
    cluster = import_optional("sklearn.cluster")
    model = cluster.KMeans(clusters, n_init=10, random_state=seed)
    assignments = model.fit_predict(features.detach().double().cpu().numpy())
    return (torch.as_tensor(model.cluster_centers_, dtype=features.dtype),
            torch.as_tensor(assignments, dtype=torch.int64))


# ---------------------------------------------------------------------- shared plumbing

def _old_classes(source: Source | None, name: str) -> int:
    if source is None or not len(source.y):
        raise ValueError(f"adapter {name} needs labeled examples of the old classes: "
                         "bind(model, source=Source(x, y))")
    classes = torch.unique(source.y)
    if not torch.equal(classes, torch.arange(len(classes))):
        raise ValueError(f"adapter {name}: the source labels must be the old classes 0 .. "
                         f"n_old-1, got {classes.tolist()}")
    return len(classes)


def _features(featurizer: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return featurizer(x).flatten(1)


# ---------------------------------------------------------------------- ProtoGCD

@ADAPTERS.register(
    "protogcd",
    summary="ProtoGCD: joint prototypes for old and new classes learned on labeled and "
    "unlabeled features, with adaptive pseudo-labels and two regularizers.",
    papers=(51,),
    search_space={"lr": ("log_uniform", 1e-3, 1e-1), "entropy_weight": ("uniform", 0.5, 4.0)},
    references=_PROTOGCD,
)
@dataclass(eq=False)
class ProtoGCD(Adapter):
    """ProtoGCD (Ma, Zhu, Zhang, Liu; arXiv:2504.03755) on a frozen backbone.

    ``K = n_old + num_new`` prototypes ``μ_k`` score a feature ``z`` by ``cos(z, μ_k) / τ_s``,
    old and new classes alike. On the labeled source features (old classes) and the unlabeled
    query features together, ``steps`` full-batch Adam steps minimize

        (1 − w) (L_dapl + λ_ent L_ent + λ_sep L_sep) + w L_sup,

    * ``L_sup``: cross-entropy of the labeled examples' logits with their labels;
    * ``L_dapl`` (:func:`dual_level_pseudo_label_loss`): each view's logits (``/ τ_s``) fit
      the pseudo-labels of the *other* view's sharpened logits (``/ τ_t``): one-hot for the
      ``r`` most confident share of all examples, soft for the rest, with ``r`` ramping
      linearly from ``init_ratio`` to ``final_ratio`` over the first ``ramp_fraction`` of the
      steps;
    * ``L_ent`` (:func:`entropy_regularization`): ``log K`` minus the entropy of the mean
      prediction, against collapsing onto few classes;
    * ``L_sep`` (:func:`prototype_separation`): prototypes repel each other.

    What is trained and what is frozen: the backbone (every layer before the model's linear
    head) is frozen and the head is unused; trained are the prototypes and, with
    ``adapt_features``, a linear map of the features initialized to the identity, the stand-in
    for the last backbone block the paper fine-tunes. The two views are two dropout masks
    (rate ``view_dropout``) on the features, the stand-in for the paper's image augmentations.
    Weights, temperatures and the ratio schedule are the paper's defaults.

    Deviations, all forced by working on frozen features: no contrastive representation
    losses (the paper's supervised and unsupervised contrastive terms need image
    augmentations and train the backbone); the old prototypes start at the labeled class
    means and the new ones at the k-means centroids of all features that Hungarian matching
    leaves unmatched to an old class mean (the paper also offers initialization from labeled
    means and k-means; its default is random). The number of new classes is given
    (``num_new``); the paper's criterion for estimating it is not implemented.

    Each :meth:`transduce` call refits from the bound state, deterministically (seeded by
    ``seed``), so a second call on the same query set returns the same scores; the learned
    prototypes and map are kept in the state and :meth:`predict` scores other inputs with
    them (inductive GCD).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> model = nn.Sequential(nn.Identity(), nn.Linear(4, 2))
        >>> centers = torch.eye(4) * 8
        >>> source = Source(centers[:2].repeat(10, 1) + torch.randn(20, 4, generator=g),
        ...                 torch.arange(2).repeat(10))
        >>> queries = centers.repeat(10, 1) + torch.randn(40, 4, generator=g)
        >>> scores = ProtoGCD(num_new=2, steps=50).bind(model, source).transduce(queries)
        >>> tuple(scores.shape)
        (40, 4)
    """

    mode: ClassVar[Literal["online", "transductive"]] = "transductive"
    changes: ClassVar[frozenset[str]] = frozenset({"parameters"})
    needs_source: ClassVar[bool] = True

    num_new: Annotated[int, Ge(1)] = 5  # number of new classes in the query set (given)
    steps: Annotated[int, Ge(1)] = 300  # full-batch Adam steps per query set
    lr: Annotated[float, Gt(0.0)] = 0.01  # Adam learning rate
    supervised_weight: Annotated[float, Interval(0.0, 1.0)] = 0.35  # w: labeled vs clustering
    entropy_weight: Annotated[float, Ge(0.0)] = 2.0  # λ_ent
    separation_weight: Annotated[float, Ge(0.0)] = 1.0  # λ_sep
    student_temperature: Annotated[float, Gt(0.0)] = 0.1  # τ_s of the logits
    teacher_temperature: Annotated[float, Gt(0.0)] = 0.05  # τ_t of the pseudo-labels
    init_ratio: Annotated[float, Interval(0.0, 1.0)] = 0.2  # share of hard labels at first
    final_ratio: Annotated[float, Interval(0.0, 1.0)] = 1.0  # ... after the ramp
    ramp_fraction: Annotated[float, Interval(0.0, 1.0, closed="right")] = 0.5  # ramp length
    view_dropout: Annotated[float, Interval(0.0, 1.0, closed="left")] = 0.1  # feature dropout
    adapt_features: bool = True  # also learn a linear map of the frozen features
    seed: Annotated[int, Ge(0)] = 0  # seeds the prototype initialization and the views

    def prepare(self, net: nn.Module, source: Source | None) -> None:
        self.featurizer, _ = split_head(net)
        self.num_old = _old_classes(source, self.name)
        assert source is not None
        self.source_features = _features(self.featurizer, source.x)
        self.source_labels = source.y.to(torch.int64)
        width = self.source_features.shape[1]
        self.prototypes = torch.zeros(self.num_old + self.num_new, width)
        self.map = torch.eye(width)
        self.map_bias = torch.zeros(width)

    def extra_state(self) -> dict[str, Any]:
        return {"prototypes": self.prototypes.clone(), "map": self.map.clone(),
                "map_bias": self.map_bias.clone()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.prototypes, self.map, self.map_bias = (
            state["prototypes"].clone(), state["map"].clone(), state["map_bias"].clone())

    def _scores(self, features: Tensor, prototypes: Tensor, weight: Tensor, bias: Tensor
                ) -> Tensor:
        """Cosine logits over temperature: the scores the adapter returns."""
        return prototype_logits(features @ weight.T + bias, prototypes) / self.student_temperature

    def predict(self, x: Tensor) -> Tensor:
        """Scores of ``x`` (``n_old + num_new`` columns) with the prototypes learned by the
        last :meth:`transduce` (inductive: ``x`` takes no part in the fit)."""
        if self.net is None:
            raise RuntimeError(self._unbound())
        if not self.prototypes.any():
            raise RuntimeError(f"adapter {self.name} has learned no prototypes yet: call "
                               "transduce(query_x) first")
        return self._scores(_features(self.featurizer, x), self.prototypes, self.map,
                            self.map_bias)

    def initial_prototypes(self, features: Tensor) -> Tensor:
        """Old: the normalized labeled class means. New: k-means (``n_old + num_new``
        clusters) on all normalized features, minus the centroids matched to the old means."""
        optimize = import_optional("scipy.optimize")
        labeled = F.normalize(self.source_features, dim=-1)
        old = torch.stack([labeled[self.source_labels == c].mean(0)
                           for c in range(self.num_old)])
        centroids, _ = kmeans(F.normalize(features, dim=-1), self.num_old + self.num_new,
                              self.seed)
        _, matched = optimize.linear_sum_assignment(
            prototype_logits(old, centroids).numpy(), maximize=True)
        new = np.setdiff1d(np.arange(len(centroids)), matched)
        return F.normalize(torch.cat([old, centroids[torch.as_tensor(new)]]), dim=-1)

    def transduce(self, x: Tensor, **kwargs: Any) -> Tensor:
        if kwargs:
            raise TypeError(f"adapter {self.name} takes only the query set, got {sorted(kwargs)}")
        query = _features(self.featurizer, x)
        features = torch.cat([self.source_features, query])
        if len(features) < self.num_old + self.num_new:
            raise ValueError(f"adapter {self.name}: {len(features)} examples cannot seed "
                             f"{self.num_old + self.num_new} prototypes")
        generator = torch.Generator().manual_seed(self.seed)
        prototypes = self.initial_prototypes(features).requires_grad_(True)
        weight = torch.eye(features.shape[1], requires_grad=self.adapt_features)
        bias = torch.zeros(features.shape[1], requires_grad=self.adapt_features)
        trained = [prototypes, *([weight, bias] if self.adapt_features else [])]
        optimizer = torch.optim.Adam(trained, lr=self.lr)
        labeled = len(self.source_features)
        for step in range(self.steps):
            progress = min(1.0, step / max(1.0, self.ramp_fraction * self.steps))
            ratio = self.init_ratio + (self.final_ratio - self.init_ratio) * progress
            # cosine logits of two dropout views of every example
            views = [prototype_logits(self._view(features, generator) @ weight.T + bias,
                                      prototypes) for _ in range(2)]
            supervised = sum(F.cross_entropy(v[:labeled] / self.student_temperature,
                                             self.source_labels) for v in views) / 2
            distill = sum(dual_level_pseudo_label_loss(
                views[i], views[1 - i], ratio, self.student_temperature,
                self.teacher_temperature) for i in range(2)) / 2
            entropy = sum(entropy_regularization(v, self.student_temperature)
                          for v in views) / 2
            separation = prototype_separation(prototypes, self.student_temperature)
            clustering = (distill + self.entropy_weight * entropy
                          + self.separation_weight * separation)
            loss = ((1 - self.supervised_weight) * clustering
                    + self.supervised_weight * supervised)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        self.prototypes, self.map, self.map_bias = (
            t.detach().clone() for t in (prototypes, weight, bias))
        return self._scores(query, self.prototypes, self.map, self.map_bias)

    def _view(self, features: Tensor, generator: torch.Generator) -> Tensor:
        if self.view_dropout == 0:
            return features
        keep = torch.rand(features.shape, generator=generator) >= self.view_dropout
        return features * keep / (1 - self.view_dropout)


# ---------------------------------------------------------------------- the baseline

@ADAPTERS.register(
    "gcd_pseudo_label",
    summary="GCD baseline: old classes from the trained classifier where it is confident, "
    "the rest clustered into the new classes by k-means.",
    references=_GCD,
)
@dataclass(eq=False)
class GCDPseudoLabel(Adapter):
    """A GCD baseline that treats old and new classes separately, as the early
    pseudo-labeling methods that ProtoGCD (arXiv:2504.03755) argues against.

    A query example whose trained-classifier probability of its arg-max class is at least
    ``threshold`` (the arg-max an old class, the softmax over all of the head's outputs) keeps
    that old class: its scores are the classifier's probabilities of the old classes and zero
    for the new ones. All others are clustered by k-means (``num_new`` clusters) on the
    normalized frozen features: zero for the old classes and, for the new ones, the softmax of
    minus the squared distances to the centroids. When fewer than ``num_new`` examples fall
    below the threshold, the ``num_new`` least confident ones are clustered. Refits from
    scratch on every query set (deterministic in ``seed``); nothing is kept.
    """

    mode: ClassVar[Literal["online", "transductive"]] = "transductive"
    changes: ClassVar[frozenset[str]] = frozenset({"nothing"})
    needs_source: ClassVar[bool] = True

    num_new: Annotated[int, Ge(1)] = 5  # number of new classes in the query set (given)
    threshold: Annotated[float, Interval(0.0, 1.0)] = 0.9  # confidence that keeps an old class
    seed: Annotated[int, Ge(0)] = 0  # k-means seed

    def prepare(self, net: nn.Module, source: Source | None) -> None:
        self.featurizer, self.head = split_head(net)
        self.num_old = _old_classes(source, self.name)
        if self.head.out_features < self.num_old:
            raise ValueError(f"adapter {self.name}: the head has {self.head.out_features} "
                             f"outputs for {self.num_old} old classes")

    def transduce(self, x: Tensor, **kwargs: Any) -> Tensor:
        if kwargs:
            raise TypeError(f"adapter {self.name} takes only the query set, got {sorted(kwargs)}")
        if len(x) < self.num_new:
            raise ValueError(f"adapter {self.name}: {len(x)} query examples cannot form "
                             f"{self.num_new} new clusters")
        features = _features(self.featurizer, x)
        with torch.no_grad():
            probs = F.softmax(self.head(features), dim=-1)
        confidence, label = probs.max(dim=-1)
        confidence = torch.where(label < self.num_old, confidence, torch.zeros_like(confidence))
        new = confidence < self.threshold
        if int(new.sum()) < self.num_new:
            new = torch.zeros_like(new)
            new[confidence.argsort()[: self.num_new]] = True
        scores = torch.zeros(len(x), self.num_old + self.num_new)
        scores[~new, : self.num_old] = probs[~new, : self.num_old]
        normalized = F.normalize(features[new], dim=-1)
        centroids, _ = kmeans(normalized, self.num_new, self.seed)
        scores[new, self.num_old:] = F.softmax(-torch.cdist(normalized, centroids) ** 2, dim=-1)
        return scores
