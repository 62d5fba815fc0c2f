"""Plug & Play Generative Networks (#46): conditional sampling in a generator's latent space
with a learned denoising-autoencoder prior.

A PPGN has a generator G: h → x, a "condition" network C giving p(y | x), and a prior on
the code h learned by a denoising autoencoder R (trained to map h + noise back to h, so that
R(h) − h ∝ ∂log p(h)/∂h). Sampling is the paper's Langevin-like iteration for PPGN-h

    h ← h + ε1·(R(h) − h) + ε2·∂log p(y | G(h))/∂h + N(0, ε3²),

the prior term pulling h towards codes the DAE has seen, the condition term towards codes
whose image C assigns to class y, the noise keeping the chain moving. With ε2 = ε3 = 0 it
iterates to a fixed point of the DAE; with ε1 = ε3 = 0 it is gradient ascent on log p(y|G(h)).

The pieces work in a plain loop: :func:`prior_term`, :func:`condition_gradient`,
:func:`ppgn_step` (one update), :func:`ppgn_sample` (the chain); :func:`fit_decoder` fits G to
invert a trained encoder E (the model :class:`~heldout.models.generator.LatentAutoencoder`),
:class:`DenoisingAutoencoder` and :func:`fit_dae` give R. All random draws come from the
``generator`` passed (never the global RNG).

Deviations from the paper: G is trained with the image-space L2 loss only (the paper adds a
feature-space loss and a GAN loss), on small MLPs instead of ImageNet networks; the DAE is on
the whole code h (PPGN-h), and the sampler starts from N(0, I) codes unless given ``h0``.

References:
    Plug & Play Generative Networks: Conditional Iterative Generation of Images in Latent
    Space (Nguyen, Clune, Bengio, Dosovitskiy, Yosinski; arXiv:1612.00005), Sec. 3.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heldout.models.generator import LatentAutoencoderNetwork

__all__ = [
    "DenoisingAutoencoder",
    "condition_gradient",
    "fit_dae",
    "fit_decoder",
    "ppgn_sample",
    "ppgn_step",
    "prior_term",
]

Module = Callable[[Tensor], Tensor]


def _targets(target: int | Tensor, n: int, device: torch.device) -> Tensor:
    targets = torch.as_tensor(target, device=device).long()
    return targets.expand(n) if targets.dim() == 0 else targets


def prior_term(h: Tensor, dae: Module) -> Tensor:
    """R(h) − h: the DAE's reconstruction minus the code, an estimate of σ²·∂log p(h)/∂h
    (Alain & Bengio), without gradient.

    Example:
        >>> float(prior_term(torch.tensor([[2.0]]), lambda h: 0.5 * h))
        -1.0
    """
    with torch.no_grad():
        return dae(h) - h


def condition_gradient(h: Tensor, classifier: Module, decoder: Module,
                       target: int | Tensor) -> Tensor:
    """∂ log p(y | G(h)) / ∂h per row: the gradient, through the decoder, of the
    classifier's log-softmax of class ``target`` (one class, or one per row) at the image
    G(h). Rows are independent (each row's gradient is that of its own log-probability)."""
    targets = _targets(target, len(h), h.device)
    if not len(targets) == len(h):
        raise ValueError(f"condition_gradient: target must be one class or one per row of h "
                         f"({len(h)}), got {len(targets)}")
    code = h.detach().requires_grad_(True)
    with torch.enable_grad():
        log_probs = F.log_softmax(classifier(decoder(code)), dim=-1)
        chosen = log_probs.gather(1, targets[:, None]).sum()
        (grad,) = torch.autograd.grad(chosen, code)
    return grad


def ppgn_step(h: Tensor, classifier: Module, decoder: Module, dae: Module,
              target: int | Tensor, eps1: float, eps2: float, eps3: float,
              generator: torch.Generator | None = None) -> Tensor:
    """One PPGN update, h + ε1·(R(h) − h) + ε2·∂log p(y|G(h))/∂h + ε3·N(0, I) (the noise
    drawn from ``generator``, needed only when ε3 > 0). Terms whose ε is 0 are not computed.

    Example:
        >>> h = torch.tensor([[2.0]])
        >>> ppgn_step(h, None, None, lambda h: 0.5 * h, 0, eps1=0.5, eps2=0.0, eps3=0.0)
        tensor([[1.5000]])
    """
    for name, value in (("eps1", eps1), ("eps2", eps2), ("eps3", eps3)):
        if not value >= 0:
            raise ValueError(f"ppgn_step: {name} must be >= 0, got {value}")
    if eps3 > 0 and generator is None:
        raise ValueError("ppgn_step: eps3 > 0 draws noise: pass a generator")
    step = torch.zeros_like(h)
    if eps1 > 0:
        step = step + eps1 * prior_term(h, dae)
    if eps2 > 0:
        step = step + eps2 * condition_gradient(h, classifier, decoder, target)
    if eps3 > 0:
        step = step + eps3 * torch.randn(h.shape, generator=generator, device=h.device,
                                         dtype=h.dtype)
    return (h + step).detach()


def ppgn_sample(classifier: Module, decoder: Module, dae: Module, target: int | Tensor,
                steps: int = 200, eps1: float = 1e-1, eps2: float = 1.0, eps3: float = 1e-2,
                *, h0: Tensor | None = None, num_samples: int = 1, latent: int | None = None,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Run ``steps`` PPGN updates (:func:`ppgn_step`) for class ``target`` from ``h0``
    (default: ``num_samples`` codes of size ``latent`` drawn N(0, I) from ``generator``);
    returns the final codes and their images G(h).

    The defaults follow the paper's proportions (ε1 = 1e-1 or so for the prior, ε2 = 1 for
    the condition, small noise ε3), to be tuned to the scale of the code.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> net = torch.nn.Linear(2, 3)
        >>> h, x = ppgn_sample(net, lambda h: h, lambda h: h, 1, steps=5, num_samples=4,
        ...                    latent=2, generator=g)
        >>> h.shape, x.shape
        (torch.Size([4, 2]), torch.Size([4, 2]))
    """
    if steps < 0:
        raise ValueError(f"ppgn_sample: steps must be >= 0, got {steps}")
    if h0 is None:
        if latent is None or generator is None:
            raise ValueError("ppgn_sample: without h0, pass latent (the code size) and a "
                             "generator to draw the start")
        h0 = torch.randn(num_samples, latent, generator=generator,
                         device=generator.device)
    h = h0.detach()
    for _ in range(steps):
        h = ppgn_step(h, classifier, decoder, dae, target, eps1, eps2, eps3, generator)
    with torch.no_grad():
        return h, decoder(h)


class DenoisingAutoencoder(nn.Module):
    """R(h) = h + MLP(h): a residual MLP (one hidden ReLU layer) trained by :func:`fit_dae`
    to map a corrupted code h + N(0, σ²) back to h; R(h) − h points towards more probable
    codes.

    Example:
        >>> dae = DenoisingAutoencoder(4, hidden=8)
        >>> dae(torch.zeros(2, 4)).shape
        torch.Size([2, 4])
    """

    def __init__(self, features: int, hidden: int = 64) -> None:
        super().__init__()
        if features < 1 or hidden < 1:
            raise ValueError(f"DenoisingAutoencoder: features and hidden must be >= 1, got "
                             f"features={features}, hidden={hidden}")
        self.features = features
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(),
                                 nn.Linear(hidden, features))

    def forward(self, h: Tensor) -> Tensor:
        return h + torch.as_tensor(self.net(h))


def _fit(params: list[nn.Parameter], loss_of: Callable[[Tensor], Tensor], n: int, steps: int,
         lr: float, batch_size: int, generator: torch.Generator, device: torch.device
         ) -> float:
    """Adam on mini-batches of indices drawn from ``generator``; the last batch's loss."""
    if steps < 1 or not lr > 0 or batch_size < 1:
        raise ValueError(f"need steps >= 1, lr > 0 and batch_size >= 1, got steps={steps}, "
                         f"lr={lr}, batch_size={batch_size}")
    optimizer = torch.optim.Adam(params, lr=lr)
    loss = torch.zeros(())
    for _ in range(steps):
        index = torch.randint(0, n, (min(batch_size, n),), generator=generator, device=device)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_of(index)
        loss.backward()
        optimizer.step()
    return float(loss.detach())


def fit_decoder(network: LatentAutoencoderNetwork, x: Tensor, steps: int = 500, lr: float = 1e-2,
                batch_size: int = 128, generator: torch.Generator | None = None) -> float:
    """Fit the decoder G of ``network`` to invert its encoder E: minimize ‖G(E(x)) − x‖² over ``x``
    with E fixed (only G's parameters change). Returns the last mini-batch's loss.
    Mini-batches are drawn from ``generator`` (default: seeded 0)."""
    generator = generator or torch.Generator(x.device).manual_seed(0)
    with torch.no_grad():
        codes = network.encode(x)

    def loss_of(index: Tensor) -> Tensor:
        return F.mse_loss(network.decode(codes[index]), x[index])

    return _fit(list(network.decoder.parameters()), loss_of, len(x), steps, lr, batch_size,
                generator, x.device)


def fit_dae(dae: nn.Module, codes: Tensor, noise_std: float = 0.5, steps: int = 500,
            lr: float = 1e-2, batch_size: int = 128,
            generator: torch.Generator | None = None) -> float:
    """Train the denoising autoencoder: minimize ‖R(h + σ·ε) − h‖² over the ``codes`` h,
    ε ~ N(0, I) drawn from ``generator`` (default: seeded 0). Returns the last loss."""
    if not noise_std > 0:
        raise ValueError(f"fit_dae: noise_std must be > 0, got {noise_std}")
    generator = generator or torch.Generator(codes.device).manual_seed(0)
    codes = codes.detach()

    def loss_of(index: Tensor) -> Tensor:
        clean = codes[index]
        noise = torch.randn(clean.shape, generator=generator, device=clean.device)
        return F.mse_loss(dae(clean + noise_std * noise), clean)

    return _fit(list(dae.parameters()), loss_of, len(codes), steps, lr, batch_size, generator,
                codes.device)
