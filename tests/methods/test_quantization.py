"""Fake quantization and PTQ against hand computations and PyTorch's own fake-quantize ops."""

import numpy as np
import pytest
import torch
from torch import nn

from heldout.methods.quantization import (
    FakeQuant,
    QuantizedLayer,
    activation_range,
    affine_qparams,
    calibrate,
    fake_quantize,
    learn_step_sizes,
    output_distance,
    post_training_quantize,
    quant_grid,
    quantize_model,
    quantized_layers,
    symmetric_qparams,
)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 36, 3)).eval()


def test_round_to_nearest_matches_hand_computation():
    # scale 0.5, zero point 2, 3 bits: grid q in [0, 7], values s * (q - 2) in [-1, 2.5]
    x = torch.tensor([0.0, 0.2, 0.25, 0.75, 1.25, -0.25, -0.9, -3.0, 2.6, 10.0])
    # x/s = 0, .4, .5 (tie -> 0), 1.5 (tie -> 2), 2.5 (tie -> 2), -.5 (tie -> 0), -1.8 -> -2,
    # -6 -> q = -4 clipped to 0 -> -1.0, 5.2 -> q = 7 -> 2.5, clipped to 2.5
    expected = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 0.0, -1.0, -1.0, 2.5, 2.5])
    assert torch.equal(fake_quantize(x, 0.5, 2, bits=3), expected)
    # the autograd path (straight-through rounding) gives the same values
    assert torch.equal(fake_quantize(x.clone().requires_grad_(), 0.5, 2, bits=3), expected)
    # signed 3-bit grid [-4, 3], zero point 0
    assert torch.equal(fake_quantize(torch.tensor([-5.0, -1.75, 1.6, 9.0]), 1.0, 0, 3,
                                     signed=True), torch.tensor([-4.0, -2.0, 2.0, 3.0]))


def test_grid_and_bad_bits():
    assert quant_grid(8) == (0, 255) and quant_grid(2, signed=True) == (-2, 1)
    for bits in (1, 33, 4.0):
        with pytest.raises(ValueError, match="bits"):
            fake_quantize(torch.zeros(2), 1.0, 0, bits)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weight_bits"):
        quantize_model(nn.Linear(2, 2), weight_bits=1)
    with pytest.raises(ValueError, match="method"):
        activation_range(torch.ones(3), 8, "median")  # type: ignore[arg-type]


def test_matches_torch_fake_quantize_per_tensor_and_per_channel():
    torch.manual_seed(1)
    x = torch.randn(6, 5) * 3
    scale, zero_point = affine_qparams(x.min(), x.max(), 4)
    ours = fake_quantize(x, scale, zero_point, 4)
    theirs = torch.fake_quantize_per_tensor_affine(x, float(scale), int(zero_point), 0, 15)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    scales, zeros = symmetric_qparams(x, 4, axis=0)
    ours = fake_quantize(x, scales, zeros, 4, signed=True, axis=0)
    theirs = torch.fake_quantize_per_channel_affine(x, scales, zeros.int(), 0, -8, 7)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_per_channel_symmetric_scales_are_max_abs_over_levels():
    w = torch.randn(5, 3, 3, 3)
    scales, zeros = symmetric_qparams(w, 4, axis=0)
    expected = torch.stack([w[c].abs().max() for c in range(5)]) / 7
    torch.testing.assert_close(scales, expected, rtol=0, atol=0)
    assert torch.equal(zeros, torch.zeros(5))
    # every channel's largest |w| is exactly representable
    q = fake_quantize(w, scales, 0, 4, signed=True, axis=0)
    torch.testing.assert_close(q.abs().flatten(1).max(dim=1).values,
                               w.abs().flatten(1).max(dim=1).values)


def test_32_bit_fake_quantization_is_the_identity():
    torch.manual_seed(2)
    x = torch.randn(1000) * 5
    scale, zero_point = affine_qparams(x.min(), x.max(), 32)
    out = fake_quantize(x, scale, zero_point, 32)
    assert out.dtype == torch.float32
    # the grid step (range / (2^32 - 1), ~1e-8) is far below float32's resolution of the range
    assert (out - x).abs().max() <= torch.finfo(torch.float32).eps * x.abs().max()
    # a whole model at 32 bits computes the float model's outputs to float32 precision
    net, inputs = _net(), torch.randn(8, 1, 6, 6)
    q = post_training_quantize(net, inputs, weight_bits=32, act_bits=32)
    torch.testing.assert_close(q(inputs), net(inputs), rtol=1e-5, atol=1e-6)


def test_values_on_the_grid_are_unchanged_bit_for_bit():
    x = torch.arange(-8, 8, dtype=torch.float32) * 0.125
    assert torch.equal(fake_quantize(x, 0.125, 0, 4, signed=True), x)


def test_straight_through_gradient_is_one_inside_zero_outside():
    x = torch.tensor([-3.0, -0.3, 0.0, 0.4, 0.74, 0.9, 2.0], requires_grad=True)
    fake_quantize(x, 0.25, 1, bits=2).sum().backward()  # grid s * ([0, 3] - 1) = [-0.25, 0.5]
    assert torch.equal(x.grad, torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]))
    # -0.3/0.25 = -1.2 -> round -1 + 1 = 0: inside; 0.74 -> 2.96 -> 3 + 1 = 4 > 3: clipped


def test_step_size_gradient_is_the_learned_step_size_rule():
    x = torch.tensor([0.3, 5.0])
    s = torch.tensor(1.0, requires_grad=True)
    fake_quantize(x, s, 0, bits=2, signed=True).sum().backward()  # grid [-2, 1]
    # inside: round(x/s) - x/s = 0 - 0.3; clipped above: q_max - z = 1
    torch.testing.assert_close(s.grad, torch.tensor(-0.3 + 1.0))


def test_activation_ranges():
    values = torch.arange(0, 10001, dtype=torch.float32)  # 0 .. 10000
    assert activation_range(values, 8, "minmax") == (0.0, 10000.0)
    low, high = activation_range(values, 8, "percentile", percentile=99.0)
    assert (low, high) == (100.0, 9900.0)
    skewed = torch.randn(5001).exp()
    low, high = activation_range(skewed, 8, "percentile", percentile=99.9)
    expected = np.percentile(skewed.numpy(), [0.1, 99.9], method="nearest")
    assert (low, high) == (float(expected[0]), float(expected[1]))
    # MSE: at 4 bits a Gaussian's tails are clipped (optimum near 2.5 sigma); the chosen
    # range has the smallest error of the candidates
    cloud = torch.randn(20000, generator=torch.Generator().manual_seed(0))
    low, high = activation_range(cloud, 4, "mse", grid=50)
    assert 1.5 < high < 3.5 < cloud.max() and -3.5 < low < -1.5
    from heldout.methods.quantization import quantization_error
    best = quantization_error(cloud, low, high, 4)
    for alpha in (0.02, 0.1, 0.5, 1.0):
        assert best <= quantization_error(cloud, alpha * cloud.min(), alpha * cloud.max(), 4)


def test_quantize_model_wraps_exact_types_and_calibrates_with_hooks():
    from heldout.models.layers import TokenLinear
    net = nn.Sequential(TokenLinear(2, 5, 8), nn.ReLU(), nn.Linear(8, 3))
    q = quantize_model(net, 4, 4)
    assert [name for name, _ in quantized_layers(q)] == ["2"]  # the token lookup is kept
    assert isinstance(q[0], TokenLinear) and net[2].__class__ is nn.Linear  # original intact
    tokens = torch.randint(0, 5, (32, 2))
    calibrate(q, tokens)
    hidden = torch.relu(net[0](tokens))
    scale, zero_point = affine_qparams(0.0, hidden.max(), 4)
    assert torch.equal(q[2].act_scale, scale) and torch.equal(q[2].act_zero_point, zero_point)
    # hand-built forward: quantized input, per-channel symmetric weight
    w_scale = net[2].weight.abs().max(dim=1).values / 7
    expected = nn.functional.linear(
        fake_quantize(hidden, scale, zero_point, 4),
        fake_quantize(net[2].weight, w_scale, 0, 4, signed=True, axis=0), net[2].bias)
    torch.testing.assert_close(q(tokens), expected, rtol=0, atol=1e-6)
    with pytest.raises(TypeError, match="QuantizedLayer wraps"):
        QuantizedLayer(nn.ReLU())


def test_post_training_quantization_error_shrinks_with_bits_and_model_is_unchanged():
    net, x = _net(), torch.randn(64, 1, 6, 6)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    errors = [output_distance(post_training_quantize(net, x, b, b)(x), net(x)).item()
              for b in (2, 4, 8)]
    assert errors[0] > errors[1] > errors[2]
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_learn_step_sizes_lowers_the_output_distance():
    net, x = _net(), torch.randn(128, 1, 6, 6)
    q = post_training_quantize(net, x, 3, 3)
    before = output_distance(q(x), net(x)).item()
    net.train()
    learn_step_sizes(q, net, x, steps=60, lr=1e-2, generator=torch.Generator().manual_seed(0))
    assert net.training  # the float model's mode is restored
    net.eval()
    assert output_distance(q(x), net(x)).item() < before


def test_fake_quant_technique_needs_training_tensors():
    class _State:
        model = _net()
        train_data = None
    with pytest.raises(ValueError, match="state.train_data"):
        FakeQuant().eval_model(_State())
    with pytest.raises(ValueError, match="act_bits"):
        FakeQuant(act_bits=1)


def test_cached_quantized_weight_follows_weight_changes():
    layer = QuantizedLayer(nn.Linear(4, 3), weight_bits=4, act_bits=None)
    x = torch.randn(2, 4)
    with torch.no_grad():
        first = layer(x)
        layer.layer.weight.mul_(2.0)  # in place: the cached weight must not be reused
        layer.weight_scale.mul_(2.0)
        second = layer(x)
    expected = nn.functional.linear(
        x, fake_quantize(layer.layer.weight, layer.weight_scale, 0, 4, signed=True, axis=0),
        layer.layer.bias)
    torch.testing.assert_close(second, expected, rtol=0, atol=0)
    assert not torch.equal(first, second)
