"""Mix-LN (#36) against hand-written oracles.

The ``arch`` fixture (tests/conftest.py) gathers ``heldout.methods.mix_ln``,
``heldout.methods.mup`` and the ``heldout.callbacks.grad_norms`` callback.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from heldout.engine import Technique, Trainer
from tests.conftest import assert_resume_is_exact, mlp, tiny_config, transformer

# ============================================================================ Mix-LN


def test_mix_ln_norms_by_hand(arch):
    assert arch.mix_ln_norms(4) == ("post", "pre", "pre", "pre")
    assert arch.mix_ln_norms(8) == ("post", "post", "pre", "pre", "pre", "pre", "pre", "pre")
    assert arch.mix_ln_norms(12) == ("post",) * 3 + ("pre",) * 9  # the paper's 3 of 12
    assert arch.mix_ln_norms(24, 0.25).count("post") == 6  # and 6 of 24
    assert arch.mix_ln_norms(6, 0.25) == ("post", "pre", "pre", "pre", "pre", "pre")  # ⌊1.5⌋
    assert arch.mix_ln_norms(3, 0.0) == ("pre",) * 3
    assert arch.mix_ln_norms(3, 1.0) == ("post",) * 3
    assert arch.mix_ln_norms(100, 0.29).count("post") == 29  # 0.29·100 = 28.999… in floats
    with pytest.raises(ValueError, match="post_ln_ratio"):
        arch.mix_ln_norms(4, 1.5)


def _post(block, x):
    h = block.attention_norm(x + block.attention(x))
    return block.feedforward_norm(h + block.feedforward(h))


def _pre(block, x):
    h = x + block.attention(block.attention_norm(x))
    return h + block.feedforward(block.feedforward_norm(h))


def test_apply_mix_ln_blocks_compute_post_then_pre(arch):
    net = arch.apply_mix_ln(transformer(("pre",) * 8), 0.25)
    assert [b.norm for b in net.blocks] == ["post"] * 2 + ["pre"] * 6
    x = torch.randn(5, 3, 16)
    with torch.no_grad():
        for block, expected in zip(net.blocks, ["post"] * 2 + ["pre"] * 6, strict=True):
            own, other = (_post, _pre) if expected == "post" else (_pre, _post)
            torch.testing.assert_close(block(x), own(block, x))
            assert not torch.allclose(block(x), other(block, x), atol=1e-3)


@pytest.mark.parametrize("start", ["pre", "post"])
def test_apply_mix_ln_matches_a_network_built_with_those_norms(arch, start):
    built = transformer(arch.mix_ln_norms(4))  # post, pre, pre, pre: final LayerNorm kept
    net = arch.apply_mix_ln(transformer((start,) * 4), 0.25)
    assert isinstance(net.final_norm, nn.LayerNorm)
    assert net.state_dict().keys() == built.state_dict().keys()
    net.load_state_dict(built.state_dict())
    x = torch.randint(0, 7, (6, 3))
    with torch.no_grad():
        torch.testing.assert_close(net(x), built(x))
    all_post = arch.apply_mix_ln(transformer(("pre",) * 2), 1.0)
    assert isinstance(all_post.final_norm, nn.Identity)  # a post-LN block ends in a norm


def test_mix_ln_refuses_models_without_transformer_blocks(arch):
    with pytest.raises(TypeError, match="TransformerBlock"):
        arch.apply_mix_ln(mlp([8]))
    with pytest.raises(TypeError, match="model=transformer"):
        arch.MixLN().transform_model(nn.Linear(2, 2))


def _hand_norm(module):
    return math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in module.parameters()
                         if p.grad is not None))


class _Probe(Technique):
    """Records hand-computed block gradient norms after every backward pass."""

    def __init__(self):
        self.seen = []

    def on_after_backward(self, state):
        self.seen.append((state.step, [_hand_norm(b) for b in state.model.blocks]))


def test_mix_ln_reports_grad_norms_at_each_evaluation(arch):
    torch.manual_seed(0)
    x, y = torch.randint(0, 7, (16, 3)), torch.randint(0, 7, (16,))
    probe = _Probe()
    net = transformer(("pre",) * 4)

    def adam(params):
        return torch.optim.Adam(params, lr=1e-3)

    trainer = Trainer(net, adam, (x, y), max_steps=4, eval_every=2,
                      eval_data={"train": (x, y)}, techniques=[arch.MixLN(), probe])
    history = trainer.fit()
    assert [b.norm for b in net.blocks] == ["post", "pre", "pre", "pre"]
    steps = dict(history)
    assert not any(k.startswith("grad_norm/") for k in steps[0])  # no gradient yet
    for step in (2, 4):
        hand = dict(probe.seen)[step - 1]  # the backward of the step before the evaluation
        for i in range(4):
            assert steps[step][f"grad_norm/block{i}"] == pytest.approx(hand[i], rel=1e-5)
    # SAM calls the closure twice per step: the report keeps the first (unperturbed) gradient
    from heldout.methods.sam import SharpnessAware

    probe = _Probe()
    history = Trainer(transformer(("pre",) * 2), adam, (x, y), max_steps=2, eval_every=2,
                      eval_data={"train": (x, y)}, callbacks=[arch.GradNormReport()],
                      techniques=[probe, SharpnessAware(rho=0.5)]).fit()
    first, second = [norms for step, norms in probe.seen if step == 1]
    assert history[-1][1]["grad_norm/block1"] == pytest.approx(first[1], rel=1e-5)
    assert first[1] != pytest.approx(second[1], rel=1e-3)
    quiet = arch.MixLN(report_grad_norms=False)
    history = Trainer(transformer(("pre",) * 2), adam, (x, y), max_steps=2, eval_every=2,
                      eval_data={"train": (x, y)}, techniques=[quiet]).fit()
    assert not any(k.startswith("grad_norm/") for k in history[-1][1])


# ============================================================================ heldout runs


def test_mix_ln_runs_in_heldout_and_resumes_exactly(arch, tmp_path, monkeypatch):
    cfg = tiny_config("model=transformer", "task.p=11", "model.d_model=16", "model.n_heads=2",
                      "model.n_layers=4", "techniques=mix_ln")
    rows = assert_resume_is_exact(cfg, tmp_path, monkeypatch)
    keys = {key for step, key, _ in rows if step == 12}
    assert {f"grad_norm/block{i}" for i in range(4)} <= keys
    assert all(math.isfinite(value) for _, _, value in rows)


