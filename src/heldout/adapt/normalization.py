"""Adapters that act through BatchNorm: the source model, BN adaptation, α-BN and Tent.

All of them normalize with :func:`mixed_batch_norm`: the statistics are a mix of the source
(running) statistics and those of the current test batch, ``μ = (1 − α) μ_s + α μ_t`` and
``σ² = (1 − α) σ²_s + α σ²_t``. ``α = 0`` is the source model (exactly: the mix is then the
running statistics themselves), ``α = 1`` is BN adaptation (the test batch's own statistics,
as a BatchNorm layer in training mode normalizes), and α-BN lies in between.

References:
    Schneider et al. Improving robustness against common corruptions by covariate shift
    adaptation. arXiv:2006.16971 (BN adaptation).
    You, Li, Zhao. Test-time Batch Statistics Calibration for Covariate Shift.
    arXiv:2110.04065 (α-BN and Core; catalog #43).
    Wang, Shelhamer, Liu, Olshausen, Darrell. Tent: Fully Test-Time Adaptation by Entropy
    Minimization. arXiv:2006.10726.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heldout.core.adapter import Adapter, Source, freeze_except
from heldout.core.bounds import Annotated, Ge, Gt, Interval
from heldout.registry import ADAPTERS

__all__ = ["AlphaBN", "BNAdapt", "MixedNorm", "SourceModel", "Tent", "entropy",
           "mixed_batch_norm", "use_mixed_norms"]

_REFERENCES = ("Improving robustness against common corruptions by covariate shift adaptation "
               "(arXiv:2006.16971)",)
_TENT = ("Tent: Fully Test-Time Adaptation by Entropy Minimization (arXiv:2006.10726)",)


def mixed_batch_norm(x: Tensor, norm: nn.modules.batchnorm._BatchNorm, alpha: float) -> Tensor:
    """Batch-normalize ``x`` with statistics mixed from ``norm``'s running (source) ones and
    the batch's: ``μ = (1 − α) μ_s + α μ_t``, ``σ² = (1 − α) σ²_s + α σ²_t`` (σ²_t the biased
    batch variance, the one training-mode BatchNorm normalizes with), then ``norm``'s affine
    γ, β. Gradients flow through the batch statistics, as in training-mode BatchNorm.

    ``alpha = 0`` reads the running statistics only (bit for bit the layer in eval mode);
    ``alpha = 1`` the batch statistics only (training-mode BatchNorm to rounding, without
    touching the running statistics). The batch statistics take two reductions (mean, then
    mean square of the centred batch) and, when no gradient has to flow through them, the
    normalization is one eval-mode ``batch_norm`` call with the mixed statistics.

    Example:
        >>> norm = nn.BatchNorm1d(2).eval()
        >>> x = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
        >>> mixed_batch_norm(x, norm, 0.0).equal(norm(x))
        True
        >>> mixed_batch_norm(x, norm, 1.0).round(decimals=3).tolist()
        [[-1.0, -1.0], [1.0, 1.0]]
    """
    if norm.running_mean is None or norm.running_var is None:
        raise ValueError("mixed_batch_norm needs a BatchNorm layer with running statistics "
                         "(track_running_stats=True)")
    if alpha == 0.0:  # the source statistics: exactly the layer in eval mode
        return F.batch_norm(x, norm.running_mean, norm.running_var, norm.weight, norm.bias,
                            False, 0.0, norm.eps)
    dims = [0, *range(2, x.dim())]
    shape = [1, -1, *([1] * (x.dim() - 2))]
    mean = x.mean(dim=dims, keepdim=True)
    tracked = torch.is_grad_enabled() and x.requires_grad
    centered = x - mean
    # two passes (mean, then the mean square of the centred batch): stable, and on CPU several
    # times faster than torch.var_mean over the non-contiguous batch and spatial axes
    var = (centered * centered if tracked else centered.square_()).mean(dim=dims)
    mean = mean.reshape(-1)
    if alpha != 1.0:
        mean = torch.lerp(norm.running_mean, mean, alpha)
        var = torch.lerp(norm.running_var, var, alpha)
    if not tracked:
        # one fused pass; eval-mode batch_norm gives γ, β their gradients but would treat the
        # statistics as constants, right only while they do not depend on a graph input
        return F.batch_norm(x, mean, var, norm.weight, norm.bias, False, 0.0, norm.eps)
    out = (x - mean.reshape(shape)) * torch.rsqrt(var.reshape(shape) + norm.eps)
    if norm.weight is not None:
        out = out * norm.weight.reshape(shape)
    if norm.bias is not None:
        out = out + norm.bias.reshape(shape)
    return out


class MixedNorm(nn.Module):
    """A BatchNorm layer that normalizes with :func:`mixed_batch_norm` at weight ``alpha``
    (its running statistics never change)."""

    def __init__(self, norm: nn.modules.batchnorm._BatchNorm, alpha: float) -> None:
        super().__init__()
        self.norm = norm
        self.alpha = alpha

    def forward(self, x: Tensor) -> Tensor:
        return mixed_batch_norm(x, self.norm, self.alpha)


def use_mixed_norms(net: nn.Module, alpha: float) -> list[MixedNorm]:
    """Replace every BatchNorm layer of ``net`` (in place) by a :class:`MixedNorm` at
    ``alpha``; returns them. A model without BatchNorm is refused: nothing would adapt."""
    found = []
    for parent in list(net.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                mixed = MixedNorm(child, alpha)
                setattr(parent, child_name, mixed)
                found.append(mixed)
    if not found:
        raise ValueError(f"the model ({type(net).__name__}) has no BatchNorm layer: "
                         "statistics-based adaptation needs one (build it with batch_norm: true)")
    return found


def entropy(logits: Tensor) -> Tensor:
    """The Shannon entropy (nats) of ``softmax(logits)`` per row.

    Example:
        >>> round(float(entropy(torch.zeros(1, 4))[0]), 4)  # uniform over 4: log 4
        1.3863
    """
    log_p = logits.log_softmax(dim=-1)
    return -(log_p.exp() * log_p).sum(dim=-1)


@ADAPTERS.register(
    "source",
    summary="No adaptation: the trained (source) model predicts the test data as it is.",
    references=("On Pitfalls of Test-Time Adaptation (arXiv:2306.03536)",),
)
@dataclass(eq=False)
class SourceModel(Adapter):
    """The baseline every adapter is compared with: the source model in eval mode, its
    BatchNorm layers reading the source (training) statistics, nothing updated."""

    changes: ClassVar[frozenset[str]] = frozenset({"nothing"})

    def forward(self, x: Tensor) -> Tensor:
        assert self.net is not None
        with torch.no_grad():
            return self.net(x)


class _MixedStatistics(Adapter):
    """What the statistics adapters share: every BatchNorm layer of the bound copy normalizes
    with mixed statistics at ``self._alpha()``."""

    changes: ClassVar[frozenset[str]] = frozenset({"bn_statistics"})

    def _alpha(self) -> float:
        raise NotImplementedError

    def prepare(self, net: nn.Module, source: Source | None) -> None:
        self.norms = use_mixed_norms(net, self._alpha())

    def forward(self, x: Tensor) -> Tensor:
        assert self.net is not None
        with torch.no_grad():
            return self.net(x)


@ADAPTERS.register(
    "bn_adapt",
    summary="BN adaptation: normalize with each test batch's own statistics, no training.",
    references=_REFERENCES,
)
@dataclass(eq=False)
class BNAdapt(_MixedStatistics):
    """Test-batch BatchNorm statistics replace the source ones (``α = 1`` of
    :func:`mixed_batch_norm`); nothing is trained."""

    def _alpha(self) -> float:
        return 1.0


@ADAPTERS.register(
    "alpha_bn",
    summary="α-BN: normalize with a mix of source and test-batch BatchNorm statistics.",
    papers=(43,),
    search_space={"alpha": ("log_uniform", 0.01, 1.0)},
)
@dataclass(eq=False)
class AlphaBN(_MixedStatistics):
    """α-BN (You, Li, Zhao; arXiv:2110.04065): in every BatchNorm layer,
    ``μ = (1 − α) μ_source + α μ_batch`` and ``σ² = (1 − α) σ²_source + α σ²_batch``, then
    the source affine parameters. Small test batches give noisy statistics, which the source
    ones steady; no parameter is trained. ``α = 0`` is the source model and ``α = 1`` BN
    adaptation, bit for bit. The variance mixed is the biased batch variance (the one
    training-mode BatchNorm normalizes with; the third-party implementation mixes the unbiased
    one, which differs by a factor ``B / (B − 1)``)."""

    alpha: Annotated[float, Interval(0.0, 1.0)] = 0.1  # weight of the test-batch statistics

    def _alpha(self) -> float:
        return self.alpha


@ADAPTERS.register(
    "tent",
    summary="Tent: minimize prediction entropy online by updating only BatchNorm's affine "
    "parameters.",
    search_space={"lr": ("log_uniform", 1e-4, 1e-2)},
    references=_TENT,
)
@dataclass(eq=False)
class Tent(Adapter):
    """Tent (Wang et al.; arXiv:2006.10726): BatchNorm normalizes with the test batch's
    statistics and, for each batch, ``steps`` Adam steps minimize the mean entropy
    ``H(ŷ) = −Σ_c p(ŷ_c) log p(ŷ_c)`` over the BatchNorm affine parameters γ, β only. The
    predictions returned are those of the forward pass before the batch's update (as in the
    official code, which predicts and adapts in one pass)."""

    changes: ClassVar[frozenset[str]] = frozenset({"bn_statistics", "parameters"})

    lr: Annotated[float, Gt(0.0)] = 1e-3  # Adam learning rate (the paper's CIFAR setting)
    steps: Annotated[int, Ge(1)] = 1  # gradient steps per test batch

    def prepare(self, net: nn.Module, source: Source | None) -> None:
        norms = use_mixed_norms(net, 1.0)
        params = [p for m in norms for p in (m.norm.weight, m.norm.bias) if p is not None]
        if not params:
            raise ValueError("tent updates BatchNorm's affine parameters, but the model's "
                             "BatchNorm layers have none (affine=False)")
        freeze_except(net, params)
        self.optimizer = torch.optim.Adam(params, lr=self.lr)

    def forward(self, x: Tensor) -> Tensor:
        assert self.net is not None
        outputs = None
        for _ in range(self.steps):
            logits = self.net(x)
            outputs = logits.detach() if outputs is None else outputs
            loss = entropy(logits).mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        assert outputs is not None
        return outputs

    def extra_state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
