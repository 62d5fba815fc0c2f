"""Linear probe (#69): how linearly decodable the labels are from a model's frozen features."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heldout.core.adapter import split_head
from heldout.core.bounds import Annotated, Gt
from heldout.core.measure import EvalContext, Measure, eval_mode
from heldout.registry import MEASURES

__all__ = ["LinearProbe", "RidgeProbe", "fit_ridge_probe"]


@dataclass(frozen=True)
class RidgeProbe:
    """A fitted linear probe: standardize with ``mean``/``scale``, then ``z W + b``."""

    mean: Tensor
    scale: Tensor
    weight: Tensor
    bias: Tensor

    def logits(self, features: Tensor) -> Tensor:
        z = (features.double() - self.mean) / self.scale
        return z @ self.weight + self.bias

    def accuracy(self, features: Tensor, labels: Tensor) -> float:
        predictions = self.logits(features).argmax(dim=-1)
        return float((predictions == labels.to(predictions.device)).double().mean())


def fit_ridge_probe(features: Tensor, labels: Tensor, num_classes: int,
                    ridge: float = 1e-3) -> RidgeProbe:
    """Closed-form ridge regression of one-hot labels on standardized features:
    ``W = (ZᵀZ + λ N I)⁻¹ Zᵀ (Y − Ȳ)`` on the centred, unit-variance features Z (N rows),
    bias ``Ȳ`` (the intercept is not penalized); predict the argmax of ``Z W + b``.

    Example:
        >>> x = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
        >>> probe = fit_ridge_probe(x, torch.tensor([0, 0, 1, 1]), 2)
        >>> probe.accuracy(x, torch.tensor([0, 0, 1, 1]))
        1.0

    References:
        The linear evaluation protocol of contrastive representation learning, e.g. CLOOB
        (arXiv:2110.11316), which fits a linear classifier on frozen features.
    """
    if features.dim() != 2 or len(features) != len(labels) or len(labels) < 2:
        raise ValueError(f"fit_ridge_probe: features must be (N, d) with N >= 2 matching "
                         f"labels, got {tuple(features.shape)} and {tuple(labels.shape)}")
    if not ridge > 0:
        raise ValueError(f"fit_ridge_probe: ridge must be > 0, got {ridge}")
    x = features.double()
    mean = x.mean(dim=0)
    scale = x.std(dim=0).clamp_min(1e-12)
    z = (x - mean) / scale
    targets = F.one_hot(labels.long(), num_classes).double()
    bias = targets.mean(dim=0)
    gram = z.T @ z + ridge * len(z) * torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
    weight = torch.linalg.solve(gram, z.T @ (targets - bias))
    return RidgeProbe(mean, scale, weight, bias)


def _fingerprint(model: nn.Module) -> tuple:
    """Changes when any parameter or buffer is replaced or updated in place."""
    tensors = [*model.parameters(), *model.buffers()]
    return (id(model), tuple((t.data_ptr(), t._version) for t in tensors))


@MEASURES.register(
    "linear_probe",
    summary="Accuracy of a ridge linear probe fitted on the frozen features of the train split.",
    papers=(69,),
)
@dataclass
class LinearProbe(Measure):
    """:func:`fit_ridge_probe` on the features (``split_head(model)[0]``, eval mode) of the
    ``reference`` split; key ``probe_accuracy`` on that split and on every later split.

    **Order.** A split-scope measure sees one split at a time: the probe is fitted when the
    reference split is evaluated and applied to the splits evaluated after it in the same
    call (:func:`~heldout.measures.evaluate` visits train, val, test in that order). On a
    split seen without a fresh probe (none yet, or the weights changed) it raises
    RuntimeError. Works on any model that ``split_head`` splits (heldout's MLP and CNNs, and
    the contrastive techniques' ``TwoViewModel``).

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> data = (torch.randn(40, 3), torch.randint(0, 2, (40,)))
        >>> from heldout.measures import evaluate
        >>> sorted(evaluate(net, {"train": data, "test": data}, [LinearProbe()]))
        ['test/probe_accuracy', 'train/probe_accuracy']
    """

    targets = "classes"

    ridge: Annotated[float, Gt(0)] = 1e-3  # λ of the ridge fit, per example
    reference: str = "train"  # the split the probe is fitted on (must be evaluated first)

    def __post_init__(self) -> None:
        self._probe: dict[str, Any] = {}  # the fitted probe, transient (never checkpointed)

    def _features(self, ctx: EvalContext) -> tuple[Tensor, Tensor]:
        featurizer, head = split_head(ctx.model)
        chunks, labels = [], []
        with torch.no_grad(), eval_mode(ctx.model):
            for x, y in ctx.batches():
                chunks.append(featurizer(x).flatten(1))
                labels.append(y)
        return torch.cat(chunks), torch.cat(labels)

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        if ctx.split == self.reference:
            features, labels = self._features(ctx)
            classes = int(ctx.logits.shape[-1])
            probe = fit_ridge_probe(features, labels, classes, self.ridge)
            self._probe = {"fingerprint": _fingerprint(ctx.model), "probe": probe}
            return {"probe_accuracy": probe.accuracy(features, labels)}
        if not self._probe or self._probe["fingerprint"] != _fingerprint(ctx.model):
            raise RuntimeError(
                f"linear_probe on {ctx.split!r} needs a probe fitted on the {self.reference!r} "
                f"split of the same weights: evaluate {self.reference!r} first, in the same "
                "evaluate() call (splits are visited in insertion order)")
        features, labels = self._features(ctx)
        return {"probe_accuracy": self._probe["probe"].accuracy(features, labels)}
