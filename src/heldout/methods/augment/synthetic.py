"""Synthetic domains and style/content recombination as batch augmentations: small,
algorithmic stand-ins for papers that need a generative stack (catalog #8, #59, #75, #53).

Each is a pure function (usable in a plain loop, every random draw from the ``generator`` it
is given) and an :class:`~heldout.core.augment.Augmentation` that the Trainer applies to each
training batch:

* :func:`random_conv` / ``random_conv`` (#8): random-convolution synthetic domains;
* :func:`adain_mix` / ``adain_mix`` (#59): content of one sample, style statistics of another;
* :func:`conditioned_synthesis` / ``conditioned_synthesis`` (#75): synthetic samples recorded
  with the augmentation parameters that conditioned them;
* :func:`perturb_to_rare` / ``rare_compositions`` (#53): structured (subject, relation,
  object) inputs perturbed toward rare compositions (task:
  :mod:`heldout.tasks.compositional`).

Image layout: inputs ``(B, C, H, W)`` are images, ``(B, C, L)`` signals; flat inputs
``(B, F)`` are read as ``channels`` square images when ``F / channels`` is a square (the
digits' 64 = 1x8x8, the colour digits' 192 = 3x8x8) and as ``channels`` signals otherwise
(MNIST-1D's 40); outputs keep the input's shape.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from heldout.core.augment import Augmentation
from heldout.core.bounds import Annotated, Ge, Interval
from heldout.methods.augment.style import feature_statistics, restyle
from heldout.registry import TECHNIQUES

if TYPE_CHECKING:
    from heldout.core.state import State

__all__ = [
    "AdaINMix",
    "ConditionedSynthesis",
    "RandomConv",
    "RareCompositions",
    "adain_mix",
    "as_spatial",
    "composition_counts",
    "conditioned_synthesis",
    "perturb_to_rare",
    "random_conv",
    "random_convolution",
]

RANDCONV = ("Robust and Generalizable Visual Representation Learning via Random Convolutions "
            "(arXiv:2007.13003)")
BEYOND_FINITE = ("Beyond Finite Data: Towards Data-free Out-of-distribution Generalization via "
                 "Extrapolation (arXiv:2403.05523)")
ISSA = ("Intra- & Extra-Source Exemplar-Based Style Synthesis for Improved Domain "
        "Generalization (arXiv:2307.00648)")
ADAIN = ("Arbitrary Style Transfer in Real-time with Adaptive Instance Normalization "
         "(arXiv:1703.06868)")
AUGMENTED_CONDITIONING = ("Augmented Conditioning Is Enough For Effective Training Image "
                          "Generation (arXiv:2502.04475)")
SGG = "Generative Compositional Augmentations for Scene Graph Prediction (arXiv:2007.05756)"


def as_spatial(x: Tensor, channels: int = 1) -> Tensor:
    """``x`` with a channel axis and its spatial axes: ``(B, C, H, W)`` or ``(B, C, L)`` are
    kept; a flat ``(B, F)`` becomes ``(B, channels, s, s)`` when ``F / channels = s²``, else
    ``(B, channels, F / channels)``.

    Example:
        >>> as_spatial(torch.zeros(2, 64)).shape, as_spatial(torch.zeros(2, 40)).shape
        (torch.Size([2, 1, 8, 8]), torch.Size([2, 1, 40]))
    """
    if x.dim() in (3, 4):
        return x
    if x.dim() != 2 or not x.is_floating_point():
        raise ValueError(f"expected float inputs (B, F), (B, C, L) or (B, C, H, W), got "
                         f"{x.dtype} of shape {tuple(x.shape)}")
    if channels < 1 or x.shape[1] % channels:
        raise ValueError(f"channels={channels} does not divide the {x.shape[1]} features")
    per_channel = x.shape[1] // channels
    side = math.isqrt(per_channel)
    if side * side == per_channel:
        return x.reshape(len(x), channels, side, side)
    return x.reshape(len(x), channels, per_channel)


# ------------------------------------------------------------------------ random convolutions

def random_convolution(x: Tensor, weight: Tensor) -> Tensor:
    """Cross-correlate images ``(B, C, H, W)`` (or signals ``(B, C, L)``) with ``weight``
    ``(C, C, k, k)`` (or ``(C, C, k)``), zero padding ``k // 2`` (same size, k odd).

    Example:
        >>> x = torch.arange(4.0).reshape(1, 1, 4)
        >>> random_convolution(x, torch.tensor([[[1.0, 0.0, -1.0]]]))
        tensor([[[-1., -2., -2.,  2.]]])
    """
    conv = F.conv2d if x.dim() == 4 else F.conv1d
    return conv(x, weight.to(x.dtype), padding=weight.shape[-1] // 2)


def random_conv(x: Tensor, generator: torch.Generator, kernel_sizes: tuple[int, ...] = (1, 3, 5),
                p: float = 0.5, mix: bool = True, channels: int = 1) -> Tensor:
    """RandConv: with probability ``p``, the batch seen through one random convolution.

    A kernel size ``k`` is drawn uniformly from ``kernel_sizes`` and a ``(C, C, k, k)``
    filter from N(0, 1 / (C k²)) (He-normal, so the output keeps the input's scale); the
    batch becomes ``α x + (1 − α) conv(x)`` with α ~ U(0, 1) if ``mix`` (RandConv-mix), else
    ``conv(x)``. One filter for the whole batch: each batch is one synthetic domain.

    Example:
        >>> x = torch.rand(4, 64)
        >>> g = torch.Generator().manual_seed(0)
        >>> random_conv(x, g, p=1.0).shape, bool(torch.equal(random_conv(x, g, p=0.0), x))
        (torch.Size([4, 64]), True)
    """
    if not kernel_sizes or any(k < 1 or k % 2 == 0 for k in kernel_sizes):
        raise ValueError(f"kernel_sizes must be odd sizes >= 1, got {kernel_sizes}")
    device = x.device
    if float(torch.rand((), generator=generator, device=device)) >= p:
        return x
    spatial = as_spatial(x, channels)
    c, dims = spatial.shape[1], spatial.dim() - 2
    pick = int(torch.randint(len(kernel_sizes), (), generator=generator, device=device))
    k = kernel_sizes[pick]
    weight = torch.randn((c, c) + (k,) * dims, generator=generator, device=device)
    weight = weight / math.sqrt(c * k ** dims)
    out = random_convolution(spatial, weight)
    if mix:
        alpha = torch.rand((), generator=generator, device=device, dtype=x.dtype)
        out = alpha * spatial + (1 - alpha) * out
    return out.reshape(x.shape)


@TECHNIQUES.register(
    "random_conv",
    summary="Random-convolution synthetic domains: a random filter per batch applied to the "
    "inputs (mixed with them), a data-free stand-in for extrapolated domains.",
    papers=(8,),
    search_space={"p": ("choice", [0.5, 0.8]), "mix": ("choice", [True, False])},
    references=(BEYOND_FINITE, RANDCONV),
)
@dataclass
class RandomConv(Augmentation):
    """:func:`random_conv` on every training batch.

    Stand-in for "Beyond Finite Data" (#8), which extrapolates novel domains with a large
    language model's knowledge and a text-to-image model: neither is available offline, so
    the synthetic domains come from random convolutions (RandConv, Xu et al.), which change
    local texture and contrast while keeping shapes. What is kept is the interface: a
    generator of synthetic domains plugged into training as an augmentation.

    References:
        Li et al. Beyond Finite Data: Towards Data-free Out-of-distribution Generalization
        via Extrapolation. arXiv:2403.05523.
        Xu, Liu, Yang, Niethammer. Robust and Generalizable Visual Representation Learning
        via Random Convolutions. arXiv:2007.13003.
    """

    kernel_sizes: tuple[int, ...] = (1, 3, 5)  # odd filter sizes, one drawn per batch
    p: Annotated[float, Interval(0, 1)] = 0.5  # probability a batch is convolved
    mix: bool = True  # α x + (1 − α) conv(x), α ~ U(0, 1); False: conv(x) alone
    channels: Annotated[int, Ge(1)] = 1  # channels of flat inputs (3 for digits_color)

    def __post_init__(self) -> None:
        self.kernel_sizes = tuple(self.kernel_sizes)
        if not self.kernel_sizes or any(k < 1 or k % 2 == 0 for k in self.kernel_sizes):
            raise ValueError(f"kernel_sizes must be odd sizes >= 1, got {self.kernel_sizes}")

    def augment(self, x: Tensor, y: Tensor, generator: torch.Generator,
                groups: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return random_conv(x, generator, self.kernel_sizes, self.p, self.mix,
                           self.channels), y


# ------------------------------------------------------------------------ style/content (AdaIN)

def _partners(groups: Tensor | None, count: int, cross_domain: bool,
              generator: torch.Generator, device: torch.device) -> Tensor:
    """Each sample's style partner: a random permutation, or with ``cross_domain`` a sample
    drawn uniformly from another domain (any sample when the batch has only one)."""
    if not cross_domain or groups is None:
        return torch.randperm(count, generator=generator, device=device)
    other = (groups[:, None] != groups[None, :]).to(torch.float64)
    other[other.sum(dim=1) == 0] = 1.0
    return torch.multinomial(other, 1, generator=generator).squeeze(1)


def adain_mix(x: Tensor, generator: torch.Generator, groups: Tensor | None = None,
              p: float = 0.5, cross_domain: bool = True, channels: int = 1,
              eps: float = 1e-6) -> Tensor:
    """Style/content recombination: each sample, with probability ``p``, keeps its content
    (its normalized input) and takes the per-channel mean and std of a partner (AdaIN),
    ``(x_i − μ_i) / σ_i · σ_j + μ_j``. Partners: another domain's sample when ``groups`` is
    given and ``cross_domain`` (the batch's other domains), else a random permutation.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.rand(4, 64)
        >>> bool(torch.equal(adain_mix(x, g, p=0.0), x)), adain_mix(x, g, p=1.0).shape
        (True, torch.Size([4, 64]))
    """
    spatial = as_spatial(x, channels)
    device = x.device
    partner = _partners(groups, len(x), cross_domain, generator, device)
    apply = torch.rand(len(x), generator=generator, device=device) < p
    mu, sigma = feature_statistics(spatial, eps)
    mixed = restyle(spatial, mu, sigma, mu[partner], sigma[partner])
    keep = apply.reshape(-1, *([1] * (spatial.dim() - 1)))
    return torch.where(keep, mixed, spatial).reshape(x.shape)


@TECHNIQUES.register(
    "adain_mix",
    summary="Style/content recombination: content of one sample with the per-channel "
    "mean/std of another (AdaIN), across the batch's domains.",
    papers=(59,),
    search_space={"p": ("choice", [0.3, 0.5, 1.0])},
    references=(ISSA, ADAIN),
)
@dataclass
class AdaINMix(Augmentation):
    """:func:`adain_mix` on every training batch, partners from other training domains.

    Stand-in for ISSA (#59), which recombines the style and content of images with a
    StyleGAN2 masked-noise encoder (style: the latent; content: the noise map): here content
    and style are AdaIN's normalized input and its per-channel mean and standard deviation.
    The feature-level version is :class:`~heldout.methods.augment.style.MixStyle` with λ = 0.

    References:
        Li, Zhang, Keuper, Khoreva. Intra- & Extra-Source Exemplar-Based Style Synthesis for
        Improved Domain Generalization. arXiv:2307.00648.
        Huang, Belongie. Arbitrary Style Transfer in Real-time with Adaptive Instance
        Normalization. arXiv:1703.06868.
    """

    p: Annotated[float, Interval(0, 1)] = 0.5  # probability each sample is restyled
    cross_domain: bool = True  # partners from other training domains when known
    channels: Annotated[int, Ge(1)] = 1  # channels of flat inputs (3 for digits_color)

    def augment(self, x: Tensor, y: Tensor, generator: torch.Generator,
                groups: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return adain_mix(x, generator, groups, self.p, self.cross_domain, self.channels), y


# ------------------------------------------------------------------------ conditioned synthesis

Synthesizer = Callable[[Tensor, Tensor], Tensor]  # (conditioning images, vectors) -> samples


def conditioned_synthesis(
    x: Tensor, y: Tensor, generator: torch.Generator, count: int,
    mix_range: tuple[float, float] = (0.5, 1.0), scale_range: tuple[float, float] = (0.8, 1.2),
    shift_range: tuple[float, float] = (-0.1, 0.1), synthesizer: Synthesizer | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``count`` synthetic samples, their labels and the augmentation that conditioned each.

    Each draws a source ``i`` from the batch, a partner ``j`` of the same label, a mixing
    weight λ ~ U(mix_range), a scale a ~ U(scale_range) and a shift b ~ U(shift_range); its
    conditioning image is the augmented real image ``a (λ x_i + (1 − λ) x_j) + b`` (a
    same-class mixup, then an intensity affine map) and its label ``y_i``. ``synthesizer``
    maps (conditioning images, conditioning vectors) to samples (default: the identity, the
    conditioning image itself). The conditioning vectors are the rows ``(i, j, λ, a, b)``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = torch.rand(6, 4), torch.tensor([0, 0, 1, 1, 2, 2])
        >>> samples, labels, cond = conditioned_synthesis(x, y, g, 3)
        >>> samples.shape, cond.shape
        (torch.Size([3, 4]), torch.Size([3, 5]))
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if not x.is_floating_point():
        raise ValueError(f"conditioned_synthesis mixes float inputs, got {x.dtype} (tokens?)")
    for name, (low, high) in (("mix_range", mix_range), ("scale_range", scale_range),
                              ("shift_range", shift_range)):
        if low > high:
            raise ValueError(f"{name} must be (low, high) with low <= high, got {(low, high)}")
    device = x.device

    def uniform(low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(count, generator=generator, device=device,
                                               dtype=x.dtype)

    source = torch.randint(len(x), (count,), generator=generator, device=device)
    same = (y[source][:, None] == y[None, :]).to(torch.float64)  # includes the source itself
    partner = torch.multinomial(same, 1, generator=generator).squeeze(1) if count else source
    lam, scale, shift = uniform(*mix_range), uniform(*scale_range), uniform(*shift_range)
    shape = (-1,) + (1,) * (x.dim() - 1)
    images = scale.reshape(shape) * (lam.reshape(shape) * x[source] + (1 - lam.reshape(shape))
                                     * x[partner]) + shift.reshape(shape)
    conditioning = torch.stack([source.to(x.dtype), partner.to(x.dtype), lam, scale, shift],
                               dim=1)
    samples = images if synthesizer is None else synthesizer(images, conditioning)
    return samples, y[source], conditioning


@TECHNIQUES.register(
    "conditioned_synthesis",
    summary="Append synthetic samples made from same-class mixup + intensity augmentations "
    "of the batch, each recorded with the augmentation that conditioned it.",
    papers=(75,),
    search_space={"ratio": ("choice", [0.25, 0.5, 1.0])},
    references=(AUGMENTED_CONDITIONING,),
)
@dataclass
class ConditionedSynthesis(Augmentation):
    """Appends ``round(ratio · B)`` samples of :func:`conditioned_synthesis` to each batch and
    keeps, in ``conditioning``, the ``(i, j, λ, a, b)`` row of every example of the last
    augmented batch (real examples: ``(i, i, 1, 1, 0)``, the identity augmentation).

    Stand-in for "Augmented Conditioning Is Enough" (#75), which conditions a text-to-image
    diffusion model (unCLIP) on augmented real images (mixup, CutMix, ...) to synthesize
    training data: no such model is available offline, so the synthesizer is the identity on
    the conditioning image (:func:`conditioned_synthesis` accepts any other). What is kept:
    synthetic samples generated from, and recorded with, the augmentation that conditioned
    them.

    References:
        Chen, Zhang, Romero-Soriano. Augmented Conditioning Is Enough For Effective Training
        Image Generation. arXiv:2502.04475.
    """

    ratio: Annotated[float, Ge(0)] = 0.5  # synthetic samples per real one in a batch
    mix_low: Annotated[float, Interval(0, 1)] = 0.5  # λ ~ U(mix_low, 1): weight of the source
    scale_spread: Annotated[float, Interval(0, 1)] = 0.2  # a ~ U(1 − s, 1 + s)
    shift_spread: Annotated[float, Ge(0)] = 0.1  # b ~ U(−s, s)
    conditioning: Tensor | None = field(default=None, init=False, repr=False, compare=False)

    def augment(self, x: Tensor, y: Tensor, generator: torch.Generator,
                groups: Tensor | None = None) -> tuple[Tensor, Tensor]:
        samples, labels, conditioning = conditioned_synthesis(
            x, y, generator, round(self.ratio * len(x)), (self.mix_low, 1.0),
            (1 - self.scale_spread, 1 + self.scale_spread),
            (-self.shift_spread, self.shift_spread))
        index = torch.arange(len(x), device=x.device, dtype=x.dtype)
        real = torch.stack([index, index, torch.ones_like(index), torch.ones_like(index),
                            torch.zeros_like(index)], dim=1)
        self.conditioning = torch.cat([real, conditioning])
        return torch.cat([x, samples]), torch.cat([y, labels])


# ------------------------------------------------------------------------ rare compositions

def composition_counts(triples: Tensor, n_objects: int) -> Tensor:
    """``(n_objects, n_objects)`` counts of the (subject, object) pairs of ``(B, 3)`` token
    triples ``(subject, relation, object)``.

    Example:
        >>> composition_counts(torch.tensor([[0, 5, 1], [0, 4, 1], [1, 4, 0]]), 2).tolist()
        [[0, 2], [1, 0]]
    """
    _check_triples(triples, n_objects)
    flat = triples[:, 0] * n_objects + triples[:, 2]
    return torch.bincount(flat, minlength=n_objects ** 2).reshape(n_objects, n_objects)


def _check_triples(triples: Tensor, n_objects: int) -> None:
    if triples.dim() != 2 or triples.shape[1] != 3:
        raise ValueError(f"expected (B, 3) triples (subject, relation, object), got shape "
                         f"{tuple(triples.shape)}")
    objects = triples[:, [0, 2]]
    if len(triples) and (objects.min() < 0 or objects.max() >= n_objects):
        raise ValueError(f"n_objects={n_objects}: subject/object tokens must lie in "
                         f"[0, {n_objects}), got {int(objects.min())}..{int(objects.max())}")


def perturb_to_rare(triples: Tensor, counts: Tensor, kinds: int, p: float,
                    generator: torch.Generator) -> Tensor:
    """Perturb (subject, relation, object) triples toward rare compositions.

    With probability ``p`` a triple has its subject or its object (a fair coin) replaced by
    an object of the same kind (``o' ≡ o mod kinds``: interchangeable for the label) drawn
    with probability ∝ 1 / (1 + count) of the (subject, object) pair it would form, ``counts``
    being those pairs' training counts (:func:`composition_counts`).

    Example:
        >>> counts = torch.tensor([[9, 0], [0, 9]])
        >>> g = torch.Generator().manual_seed(0)
        >>> perturb_to_rare(torch.tensor([[0, 2, 0]]), counts, 1, 1.0, g).tolist() in (
        ...     [[0, 2, 1]], [[1, 2, 0]], [[0, 2, 0]])
        True
    """
    n_objects = counts.shape[0]
    _check_triples(triples, n_objects)
    if kinds < 1:
        raise ValueError(f"kinds must be >= 1, got {kinds}")
    device = triples.device
    count = len(triples)
    apply = torch.rand(count, generator=generator, device=device) < p
    side = torch.randint(2, (count,), generator=generator, device=device) * 2  # 0: subj, 2: obj
    rows = torch.arange(count, device=device)
    current = triples[rows, side]
    candidates = torch.arange(n_objects, device=device)
    same_kind = (candidates[None, :] % kinds) == (current[:, None] % kinds)
    counts = counts.to(device)
    # the pair formed with each candidate: (candidate, object) or (subject, candidate)
    formed = torch.where((side == 0)[:, None], counts[:, triples[:, 2]].T,
                         counts[triples[:, 0], :])
    weights = same_kind / (1.0 + formed.to(torch.float64))
    choice = torch.multinomial(weights, 1, generator=generator).squeeze(1)
    out = triples.clone()
    out[rows, side] = torch.where(apply, choice, current)
    return out


@TECHNIQUES.register(
    "rare_compositions",
    summary="Perturb (subject, relation, object) training triples toward rare compositions by "
    "swapping a node for an interchangeable object.",
    papers=(53,),
    search_space={"p": ("choice", [0.25, 0.5, 1.0])},
    references=(SGG,),
)
@dataclass
class RareCompositions(Augmentation):
    """:func:`perturb_to_rare` on every training batch of the ``compositional`` task, with
    the (subject, object) counts of the whole training set (read at the start of training;
    of the batch itself when the training tensors are not known).

    Stand-in for the scene-graph perturbations of Knyazev et al. (#53): there, nodes of real
    scene graphs are replaced to form rare but plausible graphs and a conditional GAN
    generates the visual features of the perturbed graph. Here the structured input is the
    triple itself (no image, no GAN), and "plausible" is "of the same kind" (same label rule).

    References:
        Knyazev, de Vries, Cangea, Taylor, Courville, Belilovsky. Generative Compositional
        Augmentations for Scene Graph Prediction. arXiv:2007.05756.
    """

    n_objects: Annotated[int, Ge(1)] = 12  # object tokens are 0..n_objects-1
    kinds: Annotated[int, Ge(1)] = 4  # objects equal mod kinds are interchangeable
    p: Annotated[float, Interval(0, 1)] = 0.5  # probability a triple is perturbed
    _counts: Tensor | None = field(default=None, init=False, repr=False, compare=False)

    def on_fit_start(self, state: State) -> None:
        if state.train_data is not None:
            self._counts = composition_counts(state.train_data[0], self.n_objects)

    def augment(self, x: Tensor, y: Tensor, generator: torch.Generator,
                groups: Tensor | None = None) -> tuple[Tensor, Tensor]:
        counts = self._counts if self._counts is not None else composition_counts(
            x, self.n_objects)
        return perturb_to_rare(x, counts, self.kinds, self.p, generator), y

    def state_dict(self) -> dict[str, Any]:
        return {}  # the counts are recomputed from the training data at every start
