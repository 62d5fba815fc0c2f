"""µP (#54) against hand-written oracles.

The ``arch`` fixture (tests/conftest.py) gathers ``heldout.methods.mix_ln``,
``heldout.methods.mup`` and the ``heldout.callbacks.grad_norms`` callback.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from heldout.config import parse_overrides
from heldout.engine import Trainer
from heldout.run.execute import execute
from heldout.store import Store
from tests.conftest import assert_resume_is_exact, mlp, tiny_config, transformer

# ============================================================================ µP

BASE, WIDTH, LR = 64, 256, 0.01  # m = 4


def _lrs(optimizer):
    return {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}


# µP's per-parameter learning-rate factor, written out for base width 64 → hidden (256, 512):
# m = 4 for the first hidden width, 8 for the second. MuReadout head (the technique's form).
HAND_LR = {
    "adam": {"linear1.weight": 1, "linear1.bias": 1,     # input weight, vector: lr
             "linear2.weight": 1 / 4, "linear2.bias": 1,  # hidden: lr / m_in
             "head.weight": 1, "head.bias": 1},           # MuReadout: lr (effective lr/8)
    "sgd": {"linear1.weight": 4, "linear1.bias": 4,     # input, vector: lr · m
            "linear2.weight": 8 / 4, "linear2.bias": 8,  # hidden: lr · m_out / m_in
            "head.weight": 8, "head.bias": 1},           # MuReadout: lr · m_in; output bias
}


def test_mup_parameter_classes_and_multipliers(arch):
    net = mlp([WIDTH, 2 * WIDTH])
    info = arch.mup_parameters(net, arch.mlp_base_shapes(net, BASE))
    assert {n: i.kind for n, i in info.items()} == {
        "linear1.weight": "input", "linear1.bias": "vector", "linear2.weight": "hidden",
        "linear2.bias": "vector", "head.weight": "output", "head.bias": "fixed"}
    assert (info["linear2.weight"].fan_in_mult, info["linear2.weight"].fan_out_mult) == (4, 8)
    assert info["linear1.weight"].width_mult == 4 and info["head.weight"].width_mult == 8
    # the same classes from a base model (the mup package's base/target comparison)
    from_model = arch.mup_parameters(net, mlp([BASE, 2 * BASE]))
    assert {n: i.kind for n, i in from_model.items()} == {n: i.kind for n, i in info.items()}
    assert from_model["linear2.weight"].fan_in_mult == 4


@pytest.mark.parametrize("rule", ["adam", "sgd"])
def test_mup_param_groups_plain_readout_follow_table_3(arch, rule):
    """A plain Linear readout takes Table 3's output rule: lr / m_in for Adam and for SGD."""
    net = mlp([WIDTH, WIDTH])
    groups = arch.mup_param_groups(net, arch.mlp_base_shapes(net, BASE), LR, rule,
                                   weight_decay=0.1)
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    hand = {"adam": {"linear1.weight": 1, "linear1.bias": 1, "linear2.weight": 1 / 4,
                     "linear2.bias": 1, "head.weight": 1 / 4, "head.bias": 1},
            "sgd": {"linear1.weight": 4, "linear1.bias": 4, "linear2.weight": 1,
                    "linear2.bias": 4, "head.weight": 1 / 4, "head.bias": 1}}[rule]
    for name, p in net.named_parameters():
        lr, wd = lr_of[id(p)]
        assert lr == pytest.approx(LR * hand[name]), name
        assert wd == pytest.approx(0.1 / hand[name]), name  # lr·wd unchanged (mup's rule)
    assert sum(len(g["params"]) for g in groups) == 6


def test_mup_init_scales_by_hand(arch):
    net = mlp([WIDTH, WIDTH])
    shapes = arch.mlp_base_shapes(net, BASE)
    assert arch.mu_readout(net, shapes, output_mult=2.0) == 1
    arch.mup_init_(net, shapes, init_std=1.5)
    std = {n: float(p.detach().std()) for n, p in net.named_parameters()}
    assert std["linear1.weight"] == pytest.approx(1.5 / math.sqrt(16), rel=0.05)
    assert std["linear2.weight"] == pytest.approx(1.5 / math.sqrt(WIDTH), rel=0.02)
    assert std["head.weight"] == pytest.approx(1.5 / math.sqrt(BASE), rel=0.05)  # constant
    for layer in ("linear1", "linear2", "head"):
        assert float(net.get_submodule(layer).bias.detach().abs().max()) == 0
    head = net.head
    assert isinstance(head, arch.MuReadout) and head.width_mult == 4 and head.output_mult == 2
    h = torch.randn(3, WIDTH)
    torch.testing.assert_close(head(h), h @ head.weight.T * 2 / 4 + head.bias)
    # effective readout std σ·√base/fan_in ∝ 1/fan_in, as a plain head gets it directly
    plain = mlp([WIDTH, WIDTH])
    arch.mup_init_(plain, arch.mlp_base_shapes(plain, BASE), init_std=1.5)
    assert float(plain.head.weight.detach().std()) == pytest.approx(1.5 * 8 / WIDTH, rel=0.05)
    zero = mlp([WIDTH])
    arch.mup_init_(zero, arch.mlp_base_shapes(zero, BASE), readout_zero_init=True)
    assert float(zero.head.weight.detach().abs().max()) == 0


@pytest.mark.parametrize("rule", ["adam", "sgd"])
def test_mu_readout_form_equals_table_3_form(arch, rule):
    """MuReadout (W' stored, forward ×1/m, lr as the table's ``output (Mu)`` row) and a plain
    readout (W = W'/m, lr/m) are the same network before and after training steps."""
    torch.manual_seed(0)
    mu, plain = mlp([WIDTH]), mlp([WIDTH])
    shapes = arch.mlp_base_shapes(mu, BASE)
    arch.mu_readout(mu, shapes)
    for net in (mu, plain):
        torch.manual_seed(1)
        arch.mup_init_(net, shapes)
    torch.testing.assert_close(plain.head.weight, mu.head.weight / 4)
    x, y = torch.randn(32, 16), torch.randint(0, 10, (32,))
    optimizers = []
    for net in (mu, plain):
        groups = arch.mup_param_groups(net, shapes, 0.05, rule)
        cls = torch.optim.Adam if rule == "adam" else torch.optim.SGD
        optimizers.append(cls(groups, lr=0.05))
    for _ in range(3):
        for net, opt in zip((mu, plain), optimizers, strict=True):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    torch.testing.assert_close(mu(x), plain(x), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(mu.head.weight, plain.head.weight)


@pytest.mark.parametrize("rule,base_cls", [("adam", torch.optim.Adam), ("sgd", torch.optim.SGD)])
def test_mup_technique_builds_the_hand_written_groups_in_the_trainer(arch, rule, base_cls):
    net = mlp([WIDTH, 2 * WIDTH])
    names = {id(p): n for n, p in net.named_parameters()}
    x, y = torch.randn(8, 16), torch.randint(0, 10, (8,))
    trainer = Trainer(net, lambda params: base_cls(params, lr=LR), (x, y), max_steps=1,
                      eval_data={}, measures=[], techniques=[arch.MuP(base_width=BASE)])
    lrs = _lrs(trainer.optimizer)
    assert {names[i]: lr / LR for i, lr in lrs.items()} == pytest.approx(HAND_LR[rule])
    assert isinstance(trainer.model.head, arch.MuReadout) and trainer.model.head.width_mult == 8
    assert float(trainer.model.linear1.bias.detach().abs().max()) == 0  # re-initialized
    trainer.fit()  # and it trains
    explicit = arch.MuP(base_width=BASE, optimizer_rule="sgd")  # a rule overrides the class
    trainer = Trainer(mlp([WIDTH, 2 * WIDTH]), lambda params: torch.optim.Adam(params, lr=LR),
                      (x, y), max_steps=1, eval_data={}, measures=[], techniques=[explicit])
    got = {n: g["lr"] / LR for g in trainer.optimizer.param_groups for p in g["params"]
           for n, q in trainer.model.named_parameters() if q is p}
    assert got == pytest.approx(HAND_LR["sgd"])


def test_mup_refuses_unknown_optimizers_and_models(arch):
    with pytest.raises(TypeError, match="optimizer_rule"):
        arch.MuP().wrap_optimizer(torch.optim.LBFGS(mlp([8]).parameters()), mlp([8]))
    with pytest.raises(TypeError, match="MLP"):
        arch.MuP().transform_model(transformer(("pre",)))


def _coordinate_change(arch, width, mup, rule, lr, steps=3):
    """Mean |Δ logit| after ``steps`` steps on one fixed batch (the mup package's coordinate
    check records the mean |coordinate| of each layer over the first few steps)."""
    net = mlp([width, width])
    if mup:
        shapes = arch.mlp_base_shapes(net, BASE)
        arch.mu_readout(net, shapes)
        arch.mup_init_(net, shapes)
        groups = arch.mup_param_groups(net, shapes, lr, rule)
    else:
        groups = [{"params": list(net.parameters()), "lr": lr}]
    opt = torch.optim.Adam(groups) if rule == "adam" else torch.optim.SGD(groups, lr=lr)
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 16, generator=generator), torch.randint(0, 10, (32,),
                                                                    generator=generator)
    with torch.no_grad():
        before = net(x)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    with torch.no_grad():
        return float((net(x) - before).abs().mean())


@pytest.mark.parametrize("rule,lr", [("adam", 1e-2), ("sgd", 0.1)])
def test_coordinate_check_logit_updates_stay_order_one_under_mup_only(arch, rule, lr):
    """Widths 64, 256, 1024 (×4, ×16): under µP the logits move by the same order of
    magnitude at every width; under the standard parametrization (torch's init, one lr) the
    move grows with width (∝ width in the limit)."""
    mup = [_coordinate_change(arch, w, True, rule, lr) for w in (64, 256, 1024)]
    sp = [_coordinate_change(arch, w, False, rule, lr) for w in (64, 256, 1024)]
    assert all(0.5 < m / mup[0] < 2 for m in mup[1:]), mup
    assert sp[1] / sp[0] > 2 and sp[2] / sp[0] > 6, sp


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_mup_runs_in_heldout_and_resumes_exactly(arch, tmp_path, monkeypatch, optimizer):
    cfg = tiny_config("model=mlp", "model.hidden=[32,32]", f"optimizer.name={optimizer}",
                      "techniques=mup")
    cfg = parse_overrides(cfg, ["techniques.mup.base_width=16"])
    rows = assert_resume_is_exact(cfg, tmp_path, monkeypatch)
    assert all(math.isfinite(value) for _, _, value in rows)
    without = parse_overrides(cfg, ["techniques=[]"])
    standard = execute(without, Store(tmp_path / "sp")).metrics
    assert standard != Store(tmp_path / "straight").final_metrics(cfg.identity)
