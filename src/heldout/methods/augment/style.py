"""Feature-statistics style augmentation: AdvStyle (#63) and its baseline MixStyle.

Both are modules inserted after chosen conv stages of a network. They read each sample's
per-channel feature mean μ and standard deviation σ (over the positions) as its *style*,
normalize the features, x̂ = (x − μ) / σ, and give them other statistics, x̂ σ' + μ'
(:func:`restyle`, AdaIN's rule). In evaluation mode both are the identity.

* **AdvStyle** (Zhang et al.): μ' = μ + ε₁ · GRL(a_μ), σ' = σ + ε₂ · GRL(a_σ), ε ~ N(0, 1) per
  sample and channel, with learnable per-channel intensities a_μ, a_σ behind a gradient
  reversal layer (:func:`grad_reverse`) of weight ``adv_weight``: one backward pass minimizes
  the task loss for the network and maximizes it for the intensities. Each forward pass
  picks, with probability 1/3 each, the identity, DSU-style random statistics (the same rule
  with the intensities replaced by the batch standard deviation of μ and σ) or AdvStyle.
* **MixStyle** (Zhou et al.): with probability ``p``, μ' = λ μ + (1 − λ) μ_π, σ' likewise,
  for a random permutation π of the batch and λ ~ Beta(α, α) per sample.

Every random draw comes from the module's ``generator``; the techniques :class:`AdvStyle` and
:class:`MixStyle` set it at each step from the run's seed, the technique's name and the step
(:func:`heldout.core.augment.augmentation_generator`), so a resumed run is bit-identical.

References:
    Zhang, Deng, Li, Jia, Zhang. Adversarial Style Augmentation for Domain Generalization.
    arXiv:2301.12643.
    Zhou, Yang, Qiao, Xiang. Domain Generalization with MixStyle. arXiv:2104.02008.
    Li, Dai, Fang, Duan. Uncertainty Modeling for Out-of-Distribution Generalization (DSU).
    arXiv:2202.03958.
    Huang, Belongie. Arbitrary Style Transfer in Real-time with Adaptive Instance
    Normalization. arXiv:1703.06868.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from heldout.core.augment import augmentation_generator
from heldout.core.bounds import Annotated, Ge, Gt, Interval
from heldout.core.technique import Technique
from heldout.registry import TECHNIQUES

if TYPE_CHECKING:
    from heldout.core.state import State

__all__ = [
    "AdvStyle",
    "AdvStyleLayer",
    "MixStyle",
    "MixStyleLayer",
    "feature_statistics",
    "grad_reverse",
    "insert_after",
    "restyle",
    "sample_beta",
]

ADVSTYLE_PAPER = "Adversarial Style Augmentation for Domain Generalization (arXiv:2301.12643)"
MIXSTYLE_PAPER = "Domain Generalization with MixStyle (arXiv:2104.02008)"


# ------------------------------------------------------------------------------ pure functions

def feature_statistics(x: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Per-sample, per-channel mean and standard deviation ``sqrt(var + eps)`` of features
    ``(B, C, *positions)`` over the positions, each of shape ``(B, C, 1, ...)``.

    Example:
        >>> mu, sigma = feature_statistics(torch.tensor([[[1.0, 3.0]]]), eps=0.0)
        >>> mu.item(), sigma.item()
        (2.0, 1.0)
    """
    if x.dim() < 3:
        raise ValueError(f"style statistics need features (B, C, L) or (B, C, H, W), got "
                         f"shape {tuple(x.shape)}")
    dims = tuple(range(2, x.dim()))
    mu = x.mean(dim=dims, keepdim=True)
    sigma = (x.var(dim=dims, keepdim=True, unbiased=False) + eps).sqrt()
    return mu, sigma


def restyle(x: Tensor, mu: Tensor, sigma: Tensor, new_mu: Tensor, new_sigma: Tensor) -> Tensor:
    """AdaIN's rule: features ``x`` with statistics ``(mu, sigma)`` given ``(new_mu,
    new_sigma)``, ``(x − mu) / sigma · new_sigma + new_mu``.

    Example:
        >>> x = torch.tensor([[[1.0, 3.0]]])
        >>> restyle(x, *feature_statistics(x, 0.0), torch.tensor(10.0), torch.tensor(2.0))
        tensor([[[ 8., 12.]]])
    """
    return (x - mu) / sigma * new_sigma + new_mu


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: float) -> Tensor:
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.weight * grad, None


def grad_reverse(x: Tensor, weight: float = 1.0) -> Tensor:
    """The gradient reversal layer: the identity forward, ``−weight · grad`` backward.

    Example:
        >>> a = torch.ones(2, requires_grad=True)
        >>> (3 * grad_reverse(a, 10.0)).sum().backward()
        >>> a.grad.tolist()
        [-30.0, -30.0]
    """
    return _GradReverse.apply(x, weight)


def _sample_gamma(shape: float, size: tuple[int, ...], generator: torch.Generator,
                  device: torch.device, dtype: torch.dtype) -> Tensor:
    """log of Gamma(shape, 1) draws: Marsaglia–Tsang's squeeze for shape ≥ 1, boosted by
    U^(1/shape) for shape < 1 (kept in logs so tiny shapes do not underflow)."""
    boost = shape < 1
    d = (shape + 1 if boost else shape) - 1 / 3
    c = 1 / math.sqrt(9 * d)
    out = torch.empty(size, device=device, dtype=dtype)
    todo = torch.ones(size, dtype=torch.bool, device=device)
    while bool(todo.any()):
        z = torch.randn(size, generator=generator, device=device, dtype=dtype)
        u = torch.rand(size, generator=generator, device=device, dtype=dtype)
        v = (1 + c * z) ** 3
        accept = todo & (v > 0) & (
            torch.log(u) < 0.5 * z ** 2 + d - d * v + d * torch.log(v.clamp_min(1e-30)))
        out = torch.where(accept, math.log(d) + torch.log(v.clamp_min(1e-30)), out)
        todo = todo & ~accept
    if boost:
        u = torch.rand(size, generator=generator, device=device, dtype=dtype)
        out = out + torch.log(u.clamp_min(1e-38)) / shape
    return out


def sample_beta(alpha: float, beta: float, size: tuple[int, ...], generator: torch.Generator,
                device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
                ) -> Tensor:
    """Beta(α, β) draws of shape ``size`` taken from ``generator`` only (``torch.distributions``
    draws from the global RNG): G_α / (G_α + G_β) for independent Gamma draws. (For α = 0.1
    about a tenth of the draws lie within float32's spacing of 0 or 1 and round to it.)

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> draws = sample_beta(0.1, 0.1, (1000,), g)
        >>> extreme = ((draws < 0.1) | (draws > 0.9)).float().mean()  # U-shaped for α < 1
        >>> bool(((draws >= 0) & (draws <= 1)).all()), bool(extreme > 0.7)
        (True, True)
    """
    if alpha <= 0 or beta <= 0:
        raise ValueError(f"Beta parameters must be > 0, got alpha={alpha}, beta={beta}")
    device = torch.device(device)
    log_a = _sample_gamma(alpha, size, generator, device, dtype)
    log_b = _sample_gamma(beta, size, generator, device, dtype)
    return torch.exp(log_a - torch.logaddexp(log_a, log_b))


# ------------------------------------------------------------------------------ modules

class _StyleLayer(nn.Module):
    """What the style modules share: the generator their draws come from."""

    def __init__(self) -> None:
        super().__init__()
        self.generator: torch.Generator | None = None  # set per step by the technique

    def _generator(self, device: torch.device) -> torch.Generator:
        if self.generator is None:  # a plain loop that never set one: a fixed stream
            self.generator = torch.Generator(device=device).manual_seed(0)
        return self.generator

    def _uniform(self, device: torch.device) -> float:
        return float(torch.rand((), generator=self._generator(device), device=device))


class AdvStyleLayer(_StyleLayer):
    """The AdvStyle module for ``channels`` feature channels (see the module docstring).

    In training mode each forward pass is, with probabilities ``p_identity``, ``p_random``
    and the rest, the identity, DSU random statistics, or adversarial statistics. The
    intensities ``a_mu``, ``a_sigma`` (parameters, shape ``(C,)``) are set on the first
    training forward to the batch standard deviation of μ and σ (detached); ``bound``
    (buffers ``bound_mu``, ``bound_sigma``) is ``max_intensity`` times those initial values:
    :meth:`project` clamps their magnitudes to it.

    Example:
        >>> layer = AdvStyleLayer(4).train()
        >>> layer(torch.randn(8, 4, 5, 5)).shape
        torch.Size([8, 4, 5, 5])
    """

    bound_mu: Tensor
    bound_sigma: Tensor
    initialized: Tensor

    def __init__(self, channels: int, adv_weight: float = 10.0, max_intensity: float = 3.0,
                 p_identity: float = 1 / 3, p_random: float = 1 / 3, eps: float = 1e-6) -> None:
        super().__init__()
        if p_identity < 0 or p_random < 0 or p_identity + p_random > 1 + 1e-12:
            raise ValueError(f"p_identity and p_random must be >= 0 with sum <= 1, got "
                             f"{p_identity}, {p_random}")
        self.adv_weight, self.max_intensity, self.eps = adv_weight, max_intensity, eps
        self.p_identity, self.p_random = p_identity, p_random
        self.a_mu = nn.Parameter(torch.zeros(channels))
        self.a_sigma = nn.Parameter(torch.zeros(channels))
        self.register_buffer("bound_mu", torch.full((channels,), math.inf))
        self.register_buffer("bound_sigma", torch.full((channels,), math.inf))
        self.register_buffer("initialized", torch.tensor(False))

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        u = self._uniform(x.device)
        if u < self.p_identity:
            return x
        mu, sigma = feature_statistics(x, self.eps)
        batch_std_mu = mu.std(dim=0, keepdim=True)  # DSU's uncertainty of each statistic
        batch_std_sigma = sigma.std(dim=0, keepdim=True)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        if not bool(self.initialized):
            with torch.no_grad():
                self.a_mu.copy_(batch_std_mu.reshape(-1))
                self.a_sigma.copy_(batch_std_sigma.reshape(-1))
                self.bound_mu.copy_(self.max_intensity * self.a_mu)
                self.bound_sigma.copy_(self.max_intensity * self.a_sigma)
                self.initialized.fill_(True)
        if u < self.p_identity + self.p_random:
            scale_mu, scale_sigma = batch_std_mu, batch_std_sigma
        else:
            scale_mu = grad_reverse(self.a_mu, self.adv_weight).reshape(shape)
            scale_sigma = grad_reverse(self.a_sigma, self.adv_weight).reshape(shape)
        generator = self._generator(x.device)
        noise = torch.randn((2, *mu.shape), generator=generator, device=x.device,
                            dtype=x.dtype)
        return restyle(x, mu, sigma, mu + noise[0] * scale_mu, sigma + noise[1] * scale_sigma)

    @torch.no_grad()
    def project(self) -> None:
        """Clamp the intensities onto ``[−bound, bound]`` (the paper leaves them unbounded;
        the noise is symmetric, so only their magnitude matters and a sign change is free)."""
        self.a_mu.copy_(torch.maximum(torch.minimum(self.a_mu, self.bound_mu), -self.bound_mu))
        self.a_sigma.copy_(torch.maximum(torch.minimum(self.a_sigma, self.bound_sigma),
                                         -self.bound_sigma))


class MixStyleLayer(_StyleLayer):
    """The MixStyle module: in training mode, with probability ``p`` per forward pass, mixes
    each sample's statistics with those of a randomly permuted partner with λ ~ Beta(α, α)
    per sample; the statistics are detached as in the paper's code (gradients do not flow
    through the mixing weights' statistics).

    Example:
        >>> layer = MixStyleLayer(p=1.0).train()
        >>> layer(torch.randn(8, 4, 5)).shape
        torch.Size([8, 4, 5])
    """

    def __init__(self, p: float = 0.5, alpha: float = 0.1, eps: float = 1e-6) -> None:
        super().__init__()
        self.p, self.alpha, self.eps = p, alpha, eps

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self._uniform(x.device) >= self.p:
            return x
        generator = self._generator(x.device)
        lam = sample_beta(self.alpha, self.alpha, (len(x),), generator, x.device).to(x.dtype)
        perm = torch.randperm(len(x), generator=generator, device=x.device)
        return self.mix(x, lam, perm)

    def mix(self, x: Tensor, lam: Tensor, perm: Tensor) -> Tensor:
        """MixStyle with given weights ``lam`` (B,) and partners ``perm`` (B,)."""
        mu, sigma = feature_statistics(x, self.eps)
        mu, sigma = mu.detach(), sigma.detach()
        lam = lam.reshape(-1, *([1] * (x.dim() - 1)))
        return restyle(x, mu, sigma, lam * mu + (1 - lam) * mu[perm],
                       lam * sigma + (1 - lam) * sigma[perm])


def insert_after(model: nn.Module, layers: tuple[str, ...],
                 make: Any, suffix: str) -> tuple[nn.Module, list[nn.Module]]:
    """A copy of the ``nn.Sequential`` ``model`` (same class, same layer objects) with
    ``make(channels)`` inserted after each named layer as ``<layer>_<suffix>``; ``channels``
    is the output width of the nearest earlier layer that has one (``out_channels`` or
    ``num_features``). Returns the model and the inserted modules.

    Example:
        >>> net = nn.Sequential(OrderedDict(conv1=nn.Conv1d(1, 3, 3), act1=nn.ReLU()))
        >>> new, added = insert_after(net, ("act1",), lambda c: nn.Identity(), "style")
        >>> list(dict(new.named_children()))
        ['conv1', 'act1', 'act1_style']
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"style layers are inserted into nn.Sequential CNNs (cnn1d, cnn2d); "
                        f"got {type(model).__name__}")
    names = [name for name, _ in model.named_children()]
    unknown = [name for name in layers if name not in names]
    if unknown or not layers:
        raise ValueError(f"layers: {unknown or '()'} not in the model; its layers are "
                         f"{', '.join(names)}")
    out: OrderedDict[str, nn.Module] = OrderedDict()
    added: list[nn.Module] = []
    channels = None
    for name, module in model.named_children():
        out[name] = module
        width = getattr(module, "out_channels", None) or getattr(module, "num_features", None)
        channels = width or channels
        if name in layers:
            if channels is None:
                raise ValueError(f"layers: no convolution or norm before {name!r} gives its "
                                 "channel count")
            out[f"{name}_{suffix}"] = added_module = make(channels)
            added.append(added_module)
    return type(model)(out), added


# ------------------------------------------------------------------------------ techniques

@dataclass
class _StyleTechnique(Technique):
    """Inserts style modules after ``layers`` and sets their generator at every step."""

    layers: tuple[str, ...] = ("act1", "act2")  # layers after which a module is inserted
    _inserted: list[nn.Module] = field(default_factory=list, init=False, repr=False,
                                      compare=False)

    touches = frozenset({"model"})

    def __post_init__(self) -> None:
        if isinstance(self.layers, str):
            self.layers = (self.layers,)
        self.layers = tuple(self.layers)
        if not self.layers:
            raise ValueError("layers must name at least one layer, e.g. ('act1',)")

    def _make(self, channels: int) -> nn.Module:
        raise NotImplementedError

    def transform_model(self, model: nn.Module) -> nn.Module:
        model, self._inserted = insert_after(model, self.layers, self._make,
                                            self.registry_name)
        return model

    def on_batch_start(self, state: State) -> None:
        device = next(state.model.parameters()).device
        generator = augmentation_generator(state.seed, self.name, state.step, device)
        for module in self._inserted:
            module.generator = generator  # type: ignore[assignment]


@TECHNIQUES.register(
    "adv_style",
    summary="AdvStyle: learnable feature mean/std perturbations trained adversarially (GRL) "
    "after chosen conv stages, mixed with identity and DSU random statistics.",
    papers=(63,),
    search_space={"adv_weight": ("choice", [1.0, 3.0, 10.0]),
                  "max_intensity": ("choice", [2.0, 3.0, 5.0])},
    references=(ADVSTYLE_PAPER,
                "Uncertainty Modeling for Out-of-Distribution Generalization "
                "(arXiv:2202.03958)"),
)
@dataclass
class AdvStyle(_StyleTechnique):
    """Adversarial Style Augmentation: an :class:`AdvStyleLayer` after each of ``layers``
    (the ``act{i}`` / ``norm{i}`` layers of heldout's ``cnn1d`` / ``cnn2d``).

    The intensities are parameters of the model, so the run's optimizer updates them with the
    reversed, ``adv_weight``-scaled gradient (the paper's single-backward recipe, its run
    script's ``Vanilla2`` trainer; the extra ascent steps of ``Vanilla2_advstyle`` are not
    done). Bound (the paper has none, and the intensities can blow up): after every
    optimizer step their magnitudes are clamped to ``max_intensity × initial value``, the
    initial value being the batch std of the statistic at the first forward pass (the noise
    ε is symmetric, so an intensity's sign is immaterial).

    References:
        Zhang, Deng, Li, Jia, Zhang. Adversarial Style Augmentation for Domain
        Generalization. arXiv:2301.12643.
    """

    adv_weight: Annotated[float, Ge(0)] = 10.0  # GRL weight (the paper's run script: 10)
    max_intensity: Annotated[float, Ge(0)] = 3.0  # bound, in units of the initial intensity
    p_identity: Annotated[float, Interval(0, 1)] = 1 / 3  # probability of the identity
    p_random: Annotated[float, Interval(0, 1)] = 1 / 3  # probability of DSU statistics

    touches = frozenset({"model", "after_step"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.p_identity + self.p_random > 1:
            raise ValueError(f"p_identity + p_random must be <= 1, got "
                             f"{self.p_identity} + {self.p_random}")

    def _make(self, channels: int) -> nn.Module:
        return AdvStyleLayer(channels, self.adv_weight, self.max_intensity, self.p_identity,
                             self.p_random)

    def on_after_step(self, state: State) -> None:
        for module in self._inserted:
            module.project()  # type: ignore[operator]


@TECHNIQUES.register(
    "mixstyle",
    summary="MixStyle: mix per-sample feature mean/std with a shuffled partner's (Beta(α, α) "
    "weights, probability p) after chosen conv stages.",
    search_space={"p": ("choice", [0.5, 1.0]), "alpha": ("choice", [0.1, 0.3])},
    references=(MIXSTYLE_PAPER,),
)
@dataclass
class MixStyle(_StyleTechnique):
    """MixStyle (random style mixing, AdvStyle's baseline): a :class:`MixStyleLayer` after
    each of ``layers``. Partners are a random shuffle of the batch (the paper's "random"
    variant, not its domain-label "crossdomain" one).

    References:
        Zhou, Yang, Qiao, Xiang. Domain Generalization with MixStyle. arXiv:2104.02008.
    """

    p: Annotated[float, Interval(0, 1)] = 0.5  # probability of mixing at a forward pass
    alpha: Annotated[float, Gt(0)] = 0.1  # Beta(α, α) of the mixing weight

    def _make(self, channels: int) -> nn.Module:
        return MixStyleLayer(self.p, self.alpha)
