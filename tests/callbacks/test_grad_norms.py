"""The per-layer gradient-norm report (the callback Mix-LN, #36, argues with) against
hand-written oracles.

The ``arch`` fixture (tests/conftest.py) gathers ``heldout.methods.mix_ln``,
``heldout.methods.mup`` and the ``heldout.callbacks.grad_norms`` callback.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from heldout.run.execute import execute
from heldout.store import Store
from tests.conftest import mlp, tiny_config, transformer


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


