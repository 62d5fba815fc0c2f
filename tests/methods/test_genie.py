"""Genie: the BNS loss against hand-built batches, synthesis lowers it, and the technique."""

import pytest
import torch
from torch import nn

from heldout.methods.genie import Genie, bns_loss, gaussian_calibration, genie_synthesize


def _bn_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():  # running statistics as after training on shifted data
        net[1].running_mean.copy_(torch.linspace(-1, 1, 8))
        net[1].running_var.copy_(torch.linspace(0.5, 2, 8))
    return net.eval()


def _batch_with_stats(mean: torch.Tensor, std: torch.Tensor, n: int = 32) -> torch.Tensor:
    z = torch.randn(n, len(mean), generator=torch.Generator().manual_seed(3))
    z = (z - z.mean(0)) / z.std(0)  # unbiased std exactly 1 per channel
    return mean + std * z


def test_bns_loss_is_zero_for_a_batch_with_the_running_statistics():
    bn = nn.BatchNorm2d(3).eval()  # a one-layer model: the BN input is the batch itself
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        bn.running_var.copy_(torch.tensor([1.0, 4.0, 0.25]))
    std = (bn.running_var + bn.eps).sqrt()
    flat = _batch_with_stats(bn.running_mean, std, n=8 * 4)  # (32, 3) -> (8, 3, 2, 2)
    x = flat.reshape(8, 2, 2, 3).permute(0, 3, 1, 2)
    assert bns_loss(bn, x).item() < 1e-10
    # off by 1 in every channel's mean: loss (3 * 1^2) / 3 = 1
    torch.testing.assert_close(bns_loss(bn, x + 1.0), torch.tensor(1.0), rtol=1e-5, atol=1e-5)


def test_bns_loss_sums_layers_hand_computed():
    net = _bn_net()
    x = torch.randn(16, 10)
    h = net[0](x)
    std, mean = torch.std_mean(h, dim=0)
    bn = net[1]
    expected = ((mean - bn.running_mean).pow(2).sum()
                + (std - (bn.running_var + bn.eps).sqrt()).pow(2).sum()) / 8
    torch.testing.assert_close(bns_loss(net, x), expected)
    with pytest.raises(ValueError, match="BatchNorm"):
        bns_loss(nn.Linear(2, 2), torch.zeros(2, 2))


def test_synthesis_lowers_the_loss_below_noise_and_leaves_the_model_alone():
    net = _bn_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    start = genie_synthesize(net, (10,), 64, 64, steps=0,
                             generator=torch.Generator().manual_seed(0))
    data = genie_synthesize(net, (10,), 64, 64, steps=200,
                            generator=torch.Generator().manual_seed(0))
    assert data.shape == (64, 10)
    noise = gaussian_calibration(64, (10,), torch.Generator().manual_seed(0))
    with torch.no_grad():
        final = bns_loss(net, data).item()
        assert final < 0.05 * bns_loss(net, start).item()
        assert final < 0.05 * bns_loss(net, noise).item()
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    again = genie_synthesize(net, (10,), 64, 64, steps=200,
                             generator=torch.Generator().manual_seed(0))
    assert torch.equal(data, again)  # seeded: deterministic


def test_genie_technique_quantizes_from_synthetic_data_only():
    net = _bn_net()

    class _State:
        model = net
        train_data = (torch.full((10, 10), float("nan")), torch.zeros(10))  # only the shape

    technique = Genie(steps=20, num_samples=32, batch_size=32)
    quantized = technique.eval_model(_State())
    out = quantized(torch.randn(5, 10))
    assert out.shape == (5, 3) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="method"):
        Genie(method="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size"):
        genie_synthesize(net, (10,), 4, batch_size=1)
