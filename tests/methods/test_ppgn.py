"""PPGN (#46): the update against closed forms (a linear DAE's fixed point, the gradient of a
linear decoder and classifier by hand), and the sampler on digits."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.special import softmax
from sklearn.datasets import load_digits

from heldout.core.inputs import InputSpec
from heldout.methods.ppgn import (
    DenoisingAutoencoder,
    condition_gradient,
    fit_dae,
    fit_decoder,
    ppgn_sample,
    ppgn_step,
)
from heldout.models.generator import LatentAutoencoder
from heldout.models.mlp import mlp_network


def _linear(weight, bias):
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(weight))
        layer.bias.copy_(torch.as_tensor(bias))
    return layer.requires_grad_(False)


def test_without_condition_and_noise_the_chain_reaches_the_linear_daes_fixed_point():
    rng = np.random.default_rng(0)
    d = 5
    sym = rng.normal(size=(d, d))
    a = 0.5 * np.eye(d) + 0.1 * (sym + sym.T) / 2  # eigenvalues well inside (-1, 1)
    b = rng.normal(size=d)
    dae = _linear(a, b)
    fixed_point = np.linalg.solve(np.eye(d) - a, b)  # R(h*) = h*: (I − A) h* = b
    h0 = torch.as_tensor(rng.normal(size=(3, d)))
    h, _ = ppgn_sample(None, lambda h: h, dae, 0, steps=300, eps1=0.5, eps2=0.0, eps3=0.0,
                       h0=h0)
    np.testing.assert_allclose(h.numpy(), np.tile(fixed_point, (3, 1)), atol=1e-10)
    # one step is h + ε1 (A h + b − h) exactly
    one = ppgn_step(h0, None, None, dae, 0, eps1=0.3, eps2=0.0, eps3=0.0)
    np.testing.assert_allclose(one.numpy(), h0.numpy() + 0.3 * (h0.numpy() @ a.T + b
                                                                 - h0.numpy()), rtol=1e-12)


def test_without_prior_and_noise_a_step_is_gradient_ascent_on_log_p_y():
    rng = np.random.default_rng(1)
    latent, features, classes = 3, 6, 4
    w_g, b_g = rng.normal(size=(features, latent)), rng.normal(size=features)
    w_c, b_c = rng.normal(size=(classes, features)), rng.normal(size=classes)
    decoder, classifier = _linear(w_g, b_g), _linear(w_c, b_c)
    h = rng.normal(size=(2, latent))
    targets = np.array([1, 3])
    # by hand: ∂/∂h log softmax(W_c (W_g h + b_g) + b_c)_y = W_gᵀ W_cᵀ (e_y − p)
    p = softmax((h @ w_g.T + b_g) @ w_c.T + b_c, axis=1)
    grad = (np.eye(classes)[targets] - p) @ w_c @ w_g
    got = condition_gradient(torch.as_tensor(h), classifier, decoder, torch.as_tensor(targets))
    np.testing.assert_allclose(got.numpy(), grad, rtol=1e-10)
    step = ppgn_step(torch.as_tensor(h), classifier, decoder, None, torch.as_tensor(targets),
                     eps1=0.0, eps2=0.25, eps3=0.0)
    np.testing.assert_allclose(step.numpy(), h + 0.25 * grad, rtol=1e-10)


def test_the_noise_term_is_eps3_times_a_draw_of_the_generator():
    h = torch.zeros(4, 3)
    step = ppgn_step(h, None, None, None, 0, eps1=0.0, eps2=0.0, eps3=0.1,
                     generator=torch.Generator().manual_seed(7))
    expected = 0.1 * torch.randn(4, 3, generator=torch.Generator().manual_seed(7))
    assert torch.equal(step, expected)


def test_bad_input_raises_naming_the_parameter():
    h = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="eps2"):
        ppgn_step(h, None, None, None, 0, eps1=0.1, eps2=-1.0, eps3=0.0)
    with pytest.raises(ValueError, match="generator"):
        ppgn_step(h, None, None, None, 0, eps1=0.0, eps2=0.0, eps3=0.1)
    with pytest.raises(ValueError, match="latent"):
        ppgn_sample(None, None, None, 0, steps=1)
    with pytest.raises(ValueError, match="noise_std"):
        fit_dae(DenoisingAutoencoder(3), h, noise_std=0.0)
    with pytest.raises(ValueError, match="target"):
        condition_gradient(h, lambda x: x, lambda h: h, torch.tensor([0, 1, 2]))


def _train(net, x, y, steps=150):
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(net(x), y).backward()
        optimizer.step()
    return net.eval().requires_grad_(False)


def test_sampling_raises_the_target_class_probability_of_a_trained_digits_classifier():
    digits = load_digits()
    x = torch.tensor(digits.data[:800] / 16, dtype=torch.float32)
    y = torch.tensor(digits.target[:800])
    spec = InputSpec("continuous", (64,))
    torch.manual_seed(0)
    network = _train(LatentAutoencoder(hidden=64, latent=8).build(spec, 10), x, y)
    classifier = _train(mlp_network(spec, 10, hidden=(64,)), x, y)  # the condition net C
    network.decoder.requires_grad_(True)
    generator = torch.Generator().manual_seed(0)
    reconstruction = fit_decoder(network, x, steps=300, generator=generator)
    assert reconstruction < 0.03  # pixels in [0, 1]: G inverts E
    network.requires_grad_(False)
    codes = network.encode(x).detach()
    dae = DenoisingAutoencoder(8, hidden=64)
    fit_dae(dae, codes, noise_std=0.3 * float(codes.std()), steps=300, generator=generator)
    dae.requires_grad_(False)

    target = 3
    h0 = codes[y != target][:40]

    def target_probability(h):
        return classifier(network.decode(h)).softmax(1)[:, target]

    start = target_probability(h0).detach()
    h_mid, _ = ppgn_sample(classifier, network.decode, dae, target, steps=10, eps1=0.1,
                           eps2=1.0, eps3=0.01, h0=h0, generator=generator)
    h_end, images = ppgn_sample(classifier, network.decode, dae, target, steps=90, eps1=0.1,
                                eps2=1.0, eps3=0.01, h0=h_mid, generator=generator)
    assert float(start.mean()) < 0.05
    assert float(start.mean()) < float(target_probability(h_mid).mean()) < float(
        target_probability(h_end).mean())
    assert float(target_probability(h_end).mean()) > 0.8
    assert images.shape == (40, 64)
    # the prior term keeps the codes where the DAE has seen codes: a smaller residual
    # ‖R(h) − h‖ than plain gradient ascent from the same start
    h_ascent, _ = ppgn_sample(classifier, network.decode, dae, target, steps=100, eps1=0.0,
                              eps2=1.0, eps3=0.0, h0=h0)
    residual = (dae(h_end) - h_end).norm(dim=1).mean()
    assert residual < 0.5 * (dae(h_ascent) - h_ascent).norm(dim=1).mean()
