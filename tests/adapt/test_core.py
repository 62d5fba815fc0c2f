"""Core: the class-correlation loss on hand-computed cases and against a NumPy oracle;
no step (steps = 0) is α-BN bit for bit, lr = 0 changes nothing; a step lowers the loss."""

import numpy as np
import pytest
import torch
from torch import nn

from heldout.adapt.core_loss import Core, class_correlation_loss
from heldout.adapt.normalization import AlphaBN
from heldout.core.adapter import batchnorm_layers
from heldout.core.inputs import InputSpec
from heldout.registry import ADAPTERS, MODELS


def test_loss_by_hand():
    # P = [[0.8, 0.2], [0.4, 0.6]]: M = PᵀP = [[0.8, 0.4], [0.4, 0.4]], rows normalized
    # [[2/3, 1/3], [1/2, 1/2]]: off-diagonal mass (1/3 + 1/2) / 2 = 5/12
    probabilities = torch.tensor([[0.8, 0.2], [0.4, 0.6]], dtype=torch.float64)
    loss = class_correlation_loss(probabilities.log())
    assert abs(float(loss) - 5 / 12) < 1e-12
    # uniform predictions over C classes: (C − 1) / C; one confident example per class: 0
    assert abs(float(class_correlation_loss(torch.zeros(7, 5))) - 4 / 5) < 1e-6
    assert float(class_correlation_loss(100 * torch.eye(3))) < 1e-12


def _numpy_loss(logits: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    m = p.T @ p
    m /= m.sum(axis=1, keepdims=True)
    c = m.shape[0]
    return float((m.sum() - np.trace(m)) / c)


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_loss_matches_numpy(temperature):
    logits = torch.randn(16, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert abs(float(class_correlation_loss(logits, temperature))
               - _numpy_loss(logits.numpy(), temperature)) < 1e-12
    # the temperature divides the logits
    assert torch.allclose(class_correlation_loss(logits * temperature, temperature),
                          class_correlation_loss(logits))


def test_loss_refuses_bad_input():
    with pytest.raises(ValueError, match="logits"):
        class_correlation_loss(torch.zeros(5))
    with pytest.raises(ValueError, match="temperature"):
        class_correlation_loss(torch.zeros(2, 3), temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        ADAPTERS.build("core", temperature=-1.0)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    net = MODELS.build("cnn2d", channels=(6, 8)).build(InputSpec("continuous", (64,)), 10)
    net.train()
    with torch.no_grad():
        for _ in range(5):
            net(torch.rand(32, 64) * 2 + 0.5)
    return net.eval()


def batches(count: int = 3) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.rand(16, 64, generator=generator) for _ in range(count)]


def test_no_step_is_alpha_bn_bit_for_bit(model):
    core, alpha_bn = Core(model, alpha=0.2, steps=0), AlphaBN(model, alpha=0.2)
    for x in batches():
        assert torch.equal(core(x), alpha_bn(x))


def test_zero_learning_rate_changes_nothing(model):
    core, alpha_bn = Core(model, alpha=0.2, lr=0.0, steps=2), AlphaBN(model, alpha=0.2)
    before = {k: v.clone() for k, v in core.net.state_dict().items()}
    for x in batches():
        torch.testing.assert_close(core(x), alpha_bn(x), rtol=0, atol=1e-5)
    after = core.net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_step_lowers_the_loss_on_a_fixed_batch(model):
    x = batches(1)[0]
    core = Core(model, alpha=0.5, lr=1e-2, steps=1)
    losses = []
    for _ in range(4):
        with torch.no_grad():
            losses.append(float(class_correlation_loss(core.net(x))))
        core(x)
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    # only the BatchNorm affine parameters moved
    moved = {n for n, p in core.net.named_parameters()
             if not torch.equal(p, dict(model.named_parameters())[n.replace(".norm.", ".")])}
    names = {f"norm{i}.norm.{w}" for i in (1, 2) for w in ("weight", "bias")}
    assert moved == names
    assert len(batchnorm_layers(core.net)) == 2
