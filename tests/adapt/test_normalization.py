"""The BatchNorm adapters against their oracles: α = 0 is the source model and α = 1 BN
adaptation bit for bit, α = 1 is torch's training-mode BatchNorm, α-BN mixes statistics as
its formula says, and Tent starts from BN adaptation and lowers the entropy."""

import copy

import pytest
import torch
from torch import nn

from heldout.adapt.normalization import (
    AlphaBN,
    BNAdapt,
    SourceModel,
    Tent,
    entropy,
    mixed_batch_norm,
)
from heldout.core.adapter import batchnorm_layers
from heldout.core.inputs import InputSpec
from heldout.registry import MODELS


@pytest.fixture(scope="module")
def model() -> nn.Module:
    """A cnn2d with BatchNorm2d whose running statistics and affine parameters are not the
    defaults (as after training)."""
    torch.manual_seed(0)
    net = MODELS.build("cnn2d", channels=(6, 8)).build(InputSpec("continuous", (64,)), 10)
    net.train()
    with torch.no_grad():
        for _ in range(5):
            net(torch.rand(32, 64) * 2 + 0.5)
        for norm in batchnorm_layers(net):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    return net.eval()


def batch(seed: int = 1, size: int = 16) -> torch.Tensor:
    return torch.rand(size, 64, generator=torch.Generator().manual_seed(seed))


def test_alpha_zero_is_the_source_model_bit_for_bit(model):
    x = batch()
    assert torch.equal(AlphaBN(model, alpha=0.0)(x), SourceModel(model)(x))
    with torch.no_grad():
        assert torch.equal(AlphaBN(model, alpha=0.0)(x), model(x))


def test_alpha_one_is_bn_adaptation_bit_for_bit(model):
    for size in (2, 16, 100):
        x = batch(size=size)
        assert torch.equal(AlphaBN(model, alpha=1.0)(x), BNAdapt(model)(x))


def test_alpha_one_is_training_mode_batchnorm(model):
    x = batch(size=64)
    reference = _train_mode(model)
    with torch.no_grad():
        expected = reference(x)
    torch.testing.assert_close(AlphaBN(model, alpha=1.0)(x), expected, rtol=0, atol=1e-5)


def test_alpha_between_is_not_either_end(model):
    x = batch()
    mid = AlphaBN(model, alpha=0.5)(x)
    assert not torch.allclose(mid, SourceModel(model)(x), atol=1e-3)
    assert not torch.allclose(mid, BNAdapt(model)(x), atol=1e-3)


def _train_mode(model: nn.Module) -> nn.Module:
    reference = copy.deepcopy(model)
    for norm in batchnorm_layers(reference):
        norm.train()
        norm.momentum = 0.0
    return reference


def test_mixing_by_hand():
    # one channel, running μ_s = 2, σ²_s = 3; batch [0, 2]: μ_t = 1, σ²_t = 1 (biased)
    norm = nn.BatchNorm1d(1, eps=0.0).eval()
    norm.running_mean.fill_(2.0)
    norm.running_var.fill_(3.0)
    norm.weight.data.fill_(2.0)
    norm.bias.data.fill_(1.0)
    x = torch.tensor([[0.0], [2.0]])
    # α = 0.5: μ = 1.5, σ² = 2  ->  2 (x − 1.5) / √2 + 1
    expected = torch.tensor([[2 * -1.5 / 2**0.5 + 1], [2 * 0.5 / 2**0.5 + 1]])
    torch.testing.assert_close(mixed_batch_norm(x, norm, 0.5), expected, rtol=0, atol=1e-6)
    # α = 0.25: μ = 1.75, σ² = 2.5
    expected = 2 * (x - 1.75) / 2.5**0.5 + 1
    torch.testing.assert_close(mixed_batch_norm(x, norm, 0.25), expected, rtol=0, atol=1e-6)
    # the same numbers with a gradient flowing (the explicit path)
    x.requires_grad_(True)
    out = mixed_batch_norm(x, norm, 0.25)
    torch.testing.assert_close(out.detach(), expected.detach(), rtol=0, atol=1e-6)
    out.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_gradient_through_the_statistics_matches_training_mode_batchnorm():
    torch.manual_seed(0)
    norm = nn.BatchNorm2d(3).eval()
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    weights = torch.randn(4, 3, 5, 5)
    (mixed_batch_norm(x, norm, 1.0) * weights).sum().backward()
    grad_mixed = x.grad.clone()
    x.grad = None
    reference = nn.BatchNorm2d(3).train()
    (reference(x) * weights).sum().backward()
    torch.testing.assert_close(grad_mixed, x.grad, rtol=1e-4, atol=1e-5)


def test_tent_first_prediction_is_bn_adaptation_and_its_entropy_falls(model):
    x = batch(size=32)
    tent = Tent(model, lr=1e-2)
    first = tent(x)
    torch.testing.assert_close(first, BNAdapt(model)(x), rtol=0, atol=1e-5)
    losses = [float(entropy(first).mean())]
    for _ in range(5):
        losses.append(float(entropy(tent(x)).mean()))
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses


def test_mixed_batch_norm_refuses_a_layer_without_running_statistics():
    norm = nn.BatchNorm1d(2, track_running_stats=False)
    with pytest.raises(ValueError, match="running statistics"):
        mixed_batch_norm(torch.zeros(3, 2), norm, 0.5)
