"""Neuron periodicity (#68): the Fourier inverse participation ratio (IPR) of each neuron.

On modular arithmetic, a *generalizing* neuron's weights over the ``p`` residues are close to a
single Fourier mode, while a *memorizing* neuron's are spread over many frequencies. For each
hidden neuron ``k`` of the first layer, take its weight vector over each operand's ``p``
tokens (``U_k``, ``V_k``: the columns ``[0, p)`` and ``[p, 2p)`` of the
:class:`~heldout.models.layers.TokenLinear` weight) and its readout column ``W_{·k}`` (over the
``p`` classes), the magnitudes ``a_j`` of each vector's real DFT, normalized to unit ℓ2
(``ĉ = a / ‖a‖₂``), and ``IPR = Σ_j ĉ_j^{2r}`` with ``r = 2``, i.e. ``(‖a‖₄ / ‖a‖₂)⁴``. The
neuron's IPR is the mean over its vectors. A single frequency gives 1; a flat spectrum over the
``⌊p/2⌋ + 1`` real-DFT bins (e.g. a one-hot weight vector) gives ``1 / (⌊p/2⌋ + 1)``; i.i.d.
Gaussian weights give about ``2 / (⌊p/2⌋ + 1)``.

Verified against the paper's Eq. 3-4 and the official code (``d-doshi/Grokking``:
``utils/data_processing.py`` ``calculate_ipr``; ``Notebooks/Grokking_with_label_corruption.ipynb``):
``np.fft.rfft`` magnitudes with the DC bin included, unit-ℓ2 normalization, ``r = 2``, the mean
of the U, V and W IPRs, and pruning as zeroing a neuron's two input rows and its output column
on a copy of the trained network, in ascending (or descending) IPR order, without retraining.
The paper states ``IPR ∈ [1/p, 1]``, which is the full complex DFT's range; the code (and
this module) use the real DFT, under which the ideal value is 1 (0.5 under the full DFT). The
paper sets no threshold for a "periodic" neuron; ``threshold = 0.5`` in :class:`NeuronIPR` is
heldout's choice (the coexistence-phase histogram is bimodal with modes near 0.05 and 0.85).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from heldout.core.bounds import Annotated, Ge, Interval
from heldout.core.measure import EvalContext, Measure
from heldout.models.layers import TokenLinear
from heldout.registry import MEASURES

__all__ = ["NeuronIPR", "fourier_ipr", "neuron_ipr", "prune_by_ipr", "prune_neurons"]


def fourier_ipr(vectors: Tensor, r: int = 2) -> Tensor:
    """``Σ_j ĉ_j^{2r}`` along the last dimension, ``ĉ`` the unit-ℓ2 real-DFT magnitudes.

    Scale-invariant; an all-zero vector (a pruned neuron) has IPR 0.

    References:
        Doshi, Das, He, Gromov. To Grok or not to Grok: Disentangling Generalization and
        Memorization on Corrupted Algorithmic Datasets. arXiv:2310.13061, Eq. 3.

    Example:
        >>> n = torch.arange(7.0)
        >>> round(float(fourier_ipr(torch.cos(2 * torch.pi * 2 * n / 7))), 6)
        1.0
        >>> float(fourier_ipr(torch.eye(7)[0]))  # flat spectrum over 4 real-DFT bins
        0.25
    """
    if r < 1:
        raise ValueError(f"r must be >= 1, got {r}")
    magnitude = torch.fft.rfft(vectors.double(), dim=-1).abs()
    norm = magnitude.norm(dim=-1, keepdim=True)
    unit = magnitude / norm.where(norm > 0, 1.0)
    return unit.pow(2 * r).sum(dim=-1)


def _token_layer_and_readout(model: nn.Module) -> tuple[TokenLinear, nn.Linear | None]:
    """The first TokenLinear and the first plain ``nn.Linear`` after it that reads its
    neurons (``in_features`` = its width), if any."""
    modules = list(model.modules())
    start = next((i for i, m in enumerate(modules) if isinstance(m, TokenLinear)), None)
    if start is None:
        raise ValueError(f"{type(model).__name__} has no TokenLinear first layer; neuron IPR "
                         "needs token inputs (e.g. heldout's MLP on the modular task)")
    first = modules[start]
    assert isinstance(first, TokenLinear)
    readout = next((m for m in modules[start + 1 :] if isinstance(m, nn.Linear)
                    and not isinstance(m, TokenLinear)
                    and m.in_features == first.out_features), None)
    return first, readout


def neuron_ipr(model: nn.Module, r: int = 2) -> Tensor:
    """The IPR of each neuron of ``model``'s first (TokenLinear) layer, shape ``(width,)``.

    The mean of :func:`fourier_ipr` over the neuron's weight vector for each token position
    (``U_k``, ``V_k`` for two operands) and, when the next linear layer maps the neurons to
    ``vocab`` outputs (the classes of the modular task), its readout column ``W_{·k}``. For
    a deeper MLP the next layer is hidden-to-hidden and only the input vectors count.

    References:
        Doshi, Das, He, Gromov. To Grok or not to Grok: Disentangling Generalization and
        Memorization on Corrupted Algorithmic Datasets. arXiv:2310.13061, Eq. 4.

    Example:
        >>> from heldout.models import MLP
        >>> from heldout.tasks.base import InputSpec
        >>> net = MLP(hidden=(16,)).build(InputSpec("tokens", (2,), vocab=7), num_classes=7)
        >>> neuron_ipr(net).shape
        torch.Size([16])
    """
    first, readout = _token_layer_and_readout(model)
    weight = first.weight.detach()
    per_position = weight.reshape(first.out_features, first.n_positions, first.vocab)
    total = fourier_ipr(per_position, r).sum(dim=1)  # over the token positions
    count = first.n_positions
    if readout is not None and readout.out_features == first.vocab:
        total = total + fourier_ipr(readout.weight.detach().t(), r)
        count += 1
    return (total / count).to(weight.dtype)


def prune_neurons(model: nn.Module, neurons: Tensor) -> nn.Module:
    """A deep copy of ``model`` with the listed neurons of its first (TokenLinear) layer
    removed: their input rows (and biases) and their columns in the next linear layer set to
    zero. ``model`` itself is left untouched."""
    pruned = copy.deepcopy(model)
    first, readout = _token_layer_and_readout(pruned)
    index = torch.as_tensor(neurons, dtype=torch.long, device=first.weight.device)
    with torch.no_grad():
        first.weight[index] = 0
        if first.bias is not None:
            first.bias[index] = 0
        if readout is not None:
            readout.weight[:, index] = 0
    return pruned


def prune_by_ipr(
    model: nn.Module,
    fraction: float,
    order: Literal["low", "high"] = "low",
    r: int = 2,
) -> nn.Module:
    """A deep copy of ``model`` with ``round(fraction · width)`` first-layer neurons pruned
    (:func:`prune_neurons`), lowest IPR first (``"low"``: the memorizing neurons, which
    removes memorization of corrupted labels while keeping generalization) or highest first
    (``"high"``: the control, which destroys generalization). Ties keep index order.

    References:
        Doshi, Das, He, Gromov. To Grok or not to Grok: Disentangling Generalization and
        Memorization on Corrupted Algorithmic Datasets. arXiv:2310.13061, Section 2.1.

    Example:
        >>> from heldout.models import MLP
        >>> from heldout.tasks.base import InputSpec
        >>> net = MLP(hidden=(10,)).build(InputSpec("tokens", (2,), vocab=7), num_classes=7)
        >>> pruned = prune_by_ipr(net, 0.3)
        >>> int((pruned.linear1.weight.abs().sum(1) == 0).sum())
        3
    """
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    if order not in ("low", "high"):
        raise ValueError(f"order must be 'low' or 'high', got {order!r}")
    scores = neuron_ipr(model, r)
    ranked = torch.sort(scores, descending=order == "high", stable=True).indices
    return prune_neurons(model, ranked[: round(fraction * len(scores))])


@MEASURES.register(
    "neuron_ipr",
    summary="Fourier inverse participation ratio of the first-layer neurons: mean and share "
    "of periodic (generalizing) neurons.",
    papers=(68,),
)
@dataclass
class NeuronIPR(Measure):
    """``ipr_mean`` (mean :func:`neuron_ipr` over neurons, the paper's ``IPR``-bar) and
    ``ipr_high_fraction`` (share of neurons with IPR >= ``threshold``). It reads only the
    weights, so it is computed once per evaluation, on the listed splits.

    References:
        Doshi, Das, He, Gromov. To Grok or not to Grok: Disentangling Generalization and
        Memorization on Corrupted Algorithmic Datasets. arXiv:2310.13061.

    Example:
        >>> from heldout.models import MLP
        >>> from heldout.tasks.base import InputSpec
        >>> net = MLP(hidden=(8,)).build(InputSpec("tokens", (2,), vocab=5), num_classes=5)
        >>> data = (torch.tensor([[0, 1]]), torch.tensor([1]))
        >>> sorted(NeuronIPR().compute(EvalContext(net, "train", data)))
        ['ipr_high_fraction', 'ipr_mean']
    """

    r: Annotated[int, Ge(1)] = 2  # IPR exponent: Σ ĉ^(2r) (paper and code: r = 2)
    # IPR at or above which a neuron counts as periodic (heldout's)
    threshold: Annotated[float, Interval(0, 1, closed="right")] = 0.5
    splits: tuple[str, ...] = ("train",)  # where to report it (the value is split-independent)

    def __post_init__(self) -> None:
        self.splits = tuple(self.splits)

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        if ctx.split not in self.splits:
            return {}
        scores = neuron_ipr(ctx.model, self.r).double()
        return {"ipr_mean": float(scores.mean()),
                "ipr_high_fraction": float((scores >= self.threshold).double().mean())}
