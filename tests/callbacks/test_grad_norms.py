"""The per-layer gradient-norm report (the callback Mix-LN, #36, argues with) against
hand-written oracles.

The ``arch`` fixture gathers the three modules under test: ``heldout.methods.mix_ln``,
``heldout.methods.mup`` and the ``heldout.callbacks.grad_norms`` callback.
"""

from __future__ import annotations

import importlib
import math
import types

import pytest
import torch
import torch.nn.functional as F

from heldout.core.inputs import InputSpec
from heldout.models.mlp import mlp_network
from heldout.models.transformer import TransformerNetwork
from heldout.run.execute import execute
from heldout.store import Store
from tests.conftest import tiny_config


@pytest.fixture
def arch():
    names = {}
    for module in ("heldout.methods.mix_ln", "heldout.methods.mup",
                   "heldout.callbacks.grad_norms"):
        mod = importlib.import_module(module)
        names.update({name: getattr(mod, name) for name in mod.__all__})
    return types.SimpleNamespace(**names)


TOKENS = InputSpec("tokens", (3,), vocab=7)


def transformer(norms, d_model=16, seed=0):
    torch.manual_seed(seed)
    return TransformerNetwork(TOKENS, 7, norms=norms, d_model=d_model, n_heads=2)


def mlp(hidden, seed=0, in_dim=16, classes=10):
    torch.manual_seed(seed)
    return mlp_network(InputSpec("continuous", (in_dim,)), classes, hidden=tuple(hidden))


def _hand_norm(module):
    return math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in module.parameters()
                         if p.grad is not None))


def test_layer_gradient_norms_by_hand(arch):
    net = transformer(("post", "pre", "pre"))
    F.cross_entropy(net(torch.randint(0, 7, (8, 3))), torch.randint(0, 7, (8,))).backward()
    norms = arch.layer_gradient_norms(net)
    assert sorted(norms) == ["block0", "block1", "block2"]
    for i, block in enumerate(net.blocks):
        assert norms[f"block{i}"] == pytest.approx(_hand_norm(block), rel=1e-5)
    plain = mlp([8, 8])
    plain(torch.randn(4, 16)).sum().backward()
    assert set(arch.layer_gradient_norms(plain)) == {"linear1", "linear2", "head"}
    assert arch.layer_gradient_norms(plain)["head"] == pytest.approx(_hand_norm(plain.head))




def test_grad_norm_report_runs_on_an_mlp(arch, tmp_path):
    cfg = tiny_config("model.hidden=[16,16]", "callbacks=grad_norm_report", "steps=3")
    metrics = execute(cfg, Store(tmp_path)).metrics
    assert {"grad_norm/linear1", "grad_norm/linear2", "grad_norm/head"} <= set(metrics)


