"""The latent autoencoder (PPGN's generator, #46): shapes, the classifier path, and the
decoder fit that leaves the encoder unchanged."""

import pytest
import torch
import torch.nn.functional as F

from heldout.core.inputs import InputSpec
from heldout.methods.ppgn import fit_decoder
from heldout.models.generator import LatentAutoencoder
from heldout.run.execute import execute
from heldout.store import Store
from tests.conftest import tiny_config


def test_forward_is_the_classifier_on_the_code_and_decode_keeps_the_input_shape():
    torch.manual_seed(0)
    net = LatentAutoencoder(hidden=8, latent=3).build(InputSpec("continuous", (1, 4, 4)), 5)
    x = torch.rand(6, 1, 4, 4)
    h = net.encode(x)
    assert h.shape == (6, 3)
    assert torch.equal(net(x), net.head(h))
    decoded = net.decode(h).detach()
    assert decoded.shape == x.shape and float(decoded.min()) >= 0 and float(decoded.max()) <= 1
    with pytest.raises(ValueError, match="autoencoder"):
        LatentAutoencoder().build(InputSpec("tokens", (2,), vocab=5), 5)
    with pytest.raises(ValueError, match="latent"):
        LatentAutoencoder(latent=0)


def test_fit_decoder_lowers_the_reconstruction_error_and_leaves_the_encoder():
    torch.manual_seed(0)
    net = LatentAutoencoder(hidden=32, latent=6).build(InputSpec("continuous", (16,)), 3)
    g = torch.Generator().manual_seed(1)
    # data on a 3-dimensional manifold, so a 6-dimensional code can hold it
    x = torch.sigmoid(torch.randn(200, 3, generator=g) @ torch.randn(3, 16, generator=g))
    encoder = {k: v.clone() for k, v in net.encoder.state_dict().items()}

    def reconstruction_error():
        with torch.no_grad():
            return float(F.mse_loss(net.decode(net.encode(x)), x))

    before = reconstruction_error()
    fit_decoder(net, x, steps=200, generator=torch.Generator().manual_seed(0))
    after = reconstruction_error()
    assert after < 0.25 * before
    assert all(torch.equal(v, net.encoder.state_dict()[k]) for k, v in encoder.items())


def test_a_run_trains_it_as_a_classifier(tmp_path):
    cfg = tiny_config("task=digits_shift", "model=autoencoder", "model.hidden=16",
                      "model.latent=4", "steps=6")
    result = execute(cfg, Store(tmp_path))
    assert result.status == "done" and 0 <= result.metrics["test/accuracy"] <= 1
