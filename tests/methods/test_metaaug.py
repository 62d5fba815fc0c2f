"""MetaAug: with the transformation fixed at the identity it is plain PTQ with learned step
sizes; with a learning transformation it moves the data and keeps the quantized model sound."""

import pytest
import torch
from torch import nn

from heldout.methods.metaaug import MetaAug, ResidualTransform, metaaug_quantize
from heldout.methods.quantization import (
    learn_step_sizes,
    output_distance,
    post_training_quantize,
    step_sizes,
)


def _setup():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.randn(96, 6)
    return net, x, post_training_quantize(net, x, 3, 3)


def test_identity_transform_equals_plain_ptq():
    net, x, q = _setup()
    plain = learn_step_sizes(post_training_quantize(net, x, 3, 3), net, x, steps=15, lr=1e-2,
                             batch_size=32, generator=torch.Generator().manual_seed(1))
    meta, transform = metaaug_quantize(q, net, x, steps=15, lr=1e-2, transform_lr=0.0,
                                       batch_size=32, generator=torch.Generator().manual_seed(1),
                                       validation_generator=torch.Generator().manual_seed(2))
    assert torch.equal(transform(x), x)  # never moved
    a, b = step_sizes(plain), step_sizes(meta)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    # and the step sizes did move away from the calibrated ones
    start = step_sizes(post_training_quantize(net, x, 3, 3))
    assert any(not torch.equal(start[k], a[k]) for k in a)


def test_learned_transformation_moves_the_data_and_keeps_outputs_close():
    net, x, q = _setup()
    before = output_distance(q(x), net(x)).item()
    q, transform = metaaug_quantize(q, net, x, steps=30, lr=1e-2, transform_lr=1e-2,
                                    margin=0.05, batch_size=32,
                                    generator=torch.Generator().manual_seed(1),
                                    validation_generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (transform(x) - x).pow(2).mean() > 0  # the transformation learned something
        assert output_distance(q(x), net(x)).item() < before


def test_transform_starts_at_identity_and_bad_input():
    t = ResidualTransform((2, 3), hidden=4)
    x = torch.randn(5, 2, 3)
    assert torch.equal(t(x), x)
    net, x, q = _setup()
    with pytest.raises(ValueError, match="steps"):
        metaaug_quantize(q, net, x, steps=-1)

    class _State:
        model = net
        train_data = (torch.zeros(4, 2, dtype=torch.long), torch.zeros(4))
    with pytest.raises(ValueError, match="continuous"):
        MetaAug(steps=1).eval_model(_State())
