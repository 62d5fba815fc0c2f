"""cnn2d: input shapes, BatchNorm on and off, pooling, the head split, bad input."""

import pytest
import torch
from torch import nn

from heldout.core.adapter import batchnorm_layers, split_head
from heldout.core.inputs import InputSpec
from heldout.registry import MODELS


@pytest.mark.parametrize("shape", [(64,), (8, 8), (3, 8, 8)])
def test_shapes(shape):
    net = MODELS.build("cnn2d", channels=(4, 6)).build(InputSpec("continuous", shape), 10)
    assert net(torch.randn(5, *shape)).shape == (5, 10)


def test_batch_norm_present_or_absent():
    spec = InputSpec("continuous", (64,))
    with_bn = MODELS.build("cnn2d").build(spec, 10)
    without = MODELS.build("cnn2d", batch_norm=False).build(spec, 10)
    norms = batchnorm_layers(with_bn)
    assert [type(m) for m in norms] == [nn.BatchNorm2d, nn.BatchNorm2d]
    assert [m.num_features for m in norms] == [16, 32]
    assert batchnorm_layers(without) == []
    assert with_bn.conv1.bias is None and without.conv1.bias is not None  # BN's β replaces it


def test_head_split_and_features():
    net = MODELS.build("cnn2d", channels=(4, 6)).build(InputSpec("continuous", (64,)), 3)
    features, head = split_head(net)
    assert head is net.head and head.in_features == 6
    x = torch.randn(2, 64)
    net.eval()
    assert torch.equal(head(features(x)), net(x))


def test_pooling_halves_the_resolution():
    net = MODELS.build("cnn2d", channels=(4, 4, 4), pool_every=1).build(
        InputSpec("continuous", (3, 8, 8)), 10)
    out = net[:-3](torch.randn(2, 3, 8, 8))  # the last feature map, before the global pool
    assert out.shape == (2, 4, 1, 1)
    assert [n for n, _ in net.named_children() if n.startswith("pool")] == \
        ["pool1", "pool2", "pool3", "pool"]


@pytest.mark.parametrize("spec, match", [
    (InputSpec("continuous", (40,)), "not a square"),
    (InputSpec("continuous", (2, 3, 4, 5)), "shape"),
])
def test_bad_input_is_refused_clearly(spec, match):
    with pytest.raises(ValueError, match=match):
        MODELS.build("cnn2d").build(spec, 10)
