"""Per-example gradients and gradient coherence (#10) against independent oracles: a Python
loop of ``torch.autograd.grad`` (here only, as the oracle), orthogonal and identical gradients
built by hand, and the matrix formula."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from heldout.core.inputs import InputSpec
from heldout.core.per_example import iter_per_example_gradients, per_example_gradients
from heldout.measures import evaluate
from heldout.measures.coherence import (
    Coherence,
    GradientCoherence,
    coherence,
    layerwise_m_coherence,
    m_coherence,
)
from heldout.models.mlp import mlp_network


def _mlp(batch_norm: bool = False, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(6, 12)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(12))
    layers += [nn.Tanh(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 4)]
    return nn.Sequential(*layers)


def _data(n: int = 13, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(0, 4, (n,), generator=g)


def _loop_oracle(model, x, y, loss_fn=F.cross_entropy):
    """One autograd.grad per example, eval mode: the reference the vmap version must match."""
    was = model.training
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(len(x)):
        loss = loss_fn(model(x[i : i + 1]), y[i : i + 1])
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    model.train(was)
    return torch.stack(rows)


def _snapshot(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        [m.training for m in model.modules()],
    )


def _assert_unchanged(model, snap):
    state, grads, modes = snap
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    for p, g in zip(model.parameters(), grads, strict=True):
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)
    assert [m.training for m in model.modules()] == modes


# --- per-example gradients ----------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 4, 64])
def test_per_example_gradients_equal_an_autograd_loop(chunk_size):
    model, (x, y) = _mlp(), _data()
    got = per_example_gradients(model, x, y, chunk_size=chunk_size)
    assert got.shape == (13, sum(p.numel() for p in model.parameters()))
    torch.testing.assert_close(got, _loop_oracle(model, x, y), rtol=1e-5, atol=1e-6)


def test_per_example_gradients_with_batch_norm_use_running_statistics():
    model, (x, y) = _mlp(batch_norm=True), _data()
    model.train()
    with torch.no_grad():  # non-trivial running statistics
        for _ in range(3):
            model(torch.randn(32, 6) * 2 + 1)
    model[0].weight.grad = torch.ones_like(model[0].weight)  # a stale .grad must survive
    snap = _snapshot(model)
    got = per_example_gradients(model, x, y, chunk_size=5)
    _assert_unchanged(model, snap)  # still in train mode, same buffers, same .grad
    assert model.training
    torch.testing.assert_close(got, _loop_oracle(model, x, y), rtol=1e-5, atol=1e-6)
    # eval-mode BatchNorm: one example's gradient does not depend on its chunk-mates
    alone = per_example_gradients(model, x[3:4], y[3:4])
    torch.testing.assert_close(alone[0], got[3], rtol=1e-5, atol=1e-6)


def test_per_example_gradients_token_inputs_and_regression_targets():
    torch.manual_seed(0)
    net = mlp_network(InputSpec("tokens", (2,), vocab=7), 7, hidden=(8,))
    x = torch.randint(0, 7, (9, 2))
    y = (x.sum(1) % 7)
    torch.testing.assert_close(per_example_gradients(net, x, y, chunk_size=4),
                               _loop_oracle(net, x, y), rtol=1e-5, atol=1e-6)
    model, (xc, _) = _mlp(), _data()
    target = torch.randn(13, 4)
    torch.testing.assert_close(per_example_gradients(model, xc, target),  # auto: MSE
                               _loop_oracle(model, xc, target, F.mse_loss),
                               rtol=1e-5, atol=1e-6)


def test_iterator_yields_chunks_of_the_same_rows():
    model, (x, y) = _mlp(), _data()
    chunks = list(iter_per_example_gradients(model, x, y, chunk_size=5))
    assert [len(c) for c in chunks] == [5, 5, 3]
    torch.testing.assert_close(torch.cat(chunks), per_example_gradients(model, x, y))


def test_frozen_copy_differentiates_all_parameters():
    model, (x, y) = _mlp(), _data()
    frozen = copy.deepcopy(model).requires_grad_(False)
    torch.testing.assert_close(per_example_gradients(frozen, x, y),
                               per_example_gradients(model, x, y))
    assert not any(p.requires_grad for p in frozen.parameters())


def test_batch_norm_without_running_statistics_is_refused():
    model = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4, track_running_stats=False))
    with pytest.raises(ValueError, match="running statistics"):
        per_example_gradients(model, *_data())


# --- coherence ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_identical_gradients_have_coherence_one(dtype, tol):
    # chunks are reduced in the model's dtype: float64 is exact to rounding, float32 to ~1e-7
    model, (x, y) = _mlp().to(dtype), _data()
    xs, ys = x[:1].repeat(8, 1).to(dtype), y[:1].repeat(8)  # one example, duplicated
    c = m_coherence(model, xs, ys, chunk_size=3)
    assert c.m == 8
    assert c.alpha == pytest.approx(1.0, rel=tol)
    assert c.m_coherence == pytest.approx(8.0, rel=tol)
    assert c.off_diagonal == pytest.approx(1.0, rel=tol)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_orthogonal_gradients_have_coherence_one_over_m(dtype, tol):
    # f(x) = Wx with one-hot x = e_i: ∇_W ℓ_i = (p_i − e_{y_i}) e_iᵀ lives in column i only,
    # so the m per-example gradients are mutually orthogonal: α = 1/m, m-coherence = 1
    torch.manual_seed(0)
    m = 6
    model = nn.Linear(m, 3, bias=False).to(dtype)
    c = m_coherence(model, torch.eye(m, dtype=dtype), torch.randint(0, 3, (m,)), chunk_size=4)
    assert c.alpha == pytest.approx(1 / m, rel=tol)
    assert c.m_coherence == pytest.approx(1.0, rel=tol)
    assert c.off_diagonal == pytest.approx(0.0, abs=tol)


def test_streamed_coherence_equals_the_matrix_formula():
    model, (x, y) = _mlp(), _data(n=40)
    g = _loop_oracle(model, x, y).double()
    alpha = float(g.sum(0).square().sum() / (len(g) * g.square().sum()))
    got = m_coherence(model, x, y, chunk_size=7)
    assert got.alpha == pytest.approx(alpha, rel=1e-5)
    assert coherence(g).alpha == pytest.approx(alpha, rel=1e-12)
    assert 0 <= got.alpha <= 1  # below 1/m is possible: gradients can partly cancel


def test_float32_coherence_stays_precise_on_large_chunks():
    # near-orthogonal gradients (random labels) and 2M-entry chunks: the float32 reductions
    # must still agree with a float64 run of the same weights to ~1e-7
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(300, 64, generator=g), torch.randint(0, 10, (300,), generator=g)
    exact = m_coherence(copy.deepcopy(model).double(), x.double(), y, chunk_size=100)
    got = m_coherence(model, x, y, chunk_size=100)
    assert got.alpha < 0.05  # the gradients largely cancel
    assert got.alpha == pytest.approx(exact.alpha, rel=1e-6)


def test_layerwise_coherence_restricts_to_each_module():
    model, (x, y) = _mlp(), _data(n=20)
    g = _loop_oracle(model, x, y).double()
    layers = layerwise_m_coherence(model, x, y, chunk_size=6)
    assert list(layers) == ["0", "2", "4"]
    start = 0
    for index in (0, 2, 4):
        width = sum(p.numel() for p in model[index].parameters())
        expected = coherence(g[:, start : start + width])
        assert layers[str(index)].m_coherence == pytest.approx(expected.m_coherence, rel=1e-5)
        start += width


def test_zero_gradients_give_nan():
    assert math.isnan(coherence(torch.zeros(3, 4)).alpha)
    assert Coherence(0.5, 4).m_coherence == 2.0


# --- adapter --------------------------------------------------------------------------------


def test_adapter_through_evaluate_on_a_fixed_sample():
    model, (x, y) = _mlp(batch_norm=True), _data(n=50)
    data = {"train": (x, y), "test": _data(n=20, seed=5)}
    snap = _snapshot(model)
    measure = GradientCoherence(sample_size=16, chunk_size=5, per_layer=True)
    first = evaluate(model, data, [measure])
    _assert_unchanged(model, snap)
    assert evaluate(model, data, [measure]) == first  # same sample every time
    assert set(first) == {"train/gradient_coherence", "train/m_coherence",
                          "train/coherence_sample_size", "train/m_coherence.0",
                          "train/m_coherence.1", "train/m_coherence.3",
                          "train/m_coherence.5"}
    assert first["train/coherence_sample_size"] == 16
    assert first["train/m_coherence"] == pytest.approx(16 * first["train/gradient_coherence"])
    # the sample: 16 distinct rows of the split, a seeded permutation's first 16
    index = torch.randperm(50, generator=torch.Generator().manual_seed(0))[:16]
    assert first["train/m_coherence"] == pytest.approx(
        m_coherence(model, x[index], y[index]).m_coherence, rel=1e-6)
    other = evaluate(model, data, [GradientCoherence(sample_size=16, seed=1)])
    assert other["train/m_coherence"] != first["train/m_coherence"]


def test_adapter_uses_the_whole_split_when_smaller_than_the_sample():
    model, (x, y) = _mlp(), _data(n=10)
    out = evaluate(model, {"train": (x, y)}, [GradientCoherence()])
    assert out["train/coherence_sample_size"] == 10
    assert out["train/m_coherence"] == pytest.approx(m_coherence(model, x, y).m_coherence)


@pytest.mark.parametrize("bad", [{"sample_size": 1}, {"chunk_size": 0}, {"loss": "hinge"}])
def test_adapter_validates_its_fields(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        GradientCoherence(**bad)


# --- the per-layer norm path (MLPs) -----------------------------------------------------


def _no_vmap(monkeypatch):
    from heldout.measures import coherence as module

    def refuse(*args, **kwargs):
        raise AssertionError("the vmap path ran on an MLP")

    monkeypatch.setattr(module, "_chunk_sums", refuse)


@pytest.mark.parametrize("case", ["continuous", "bias_free", "tokens", "regression"])
def test_mlps_take_the_per_layer_norm_path_and_match_the_loop(case, monkeypatch):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(3)
    loss_fn = F.cross_entropy
    if case == "tokens":  # TokenLinear first layer: integer inputs
        model = mlp_network(InputSpec("tokens", (2,), vocab=7), 7, hidden=(9, 5),
                            activation="square")
        x, y = torch.randint(0, 7, (30, 2), generator=g), torch.randint(0, 7, (30,), generator=g)
    elif case == "regression":
        model = nn.Sequential(nn.Linear(5, 8), nn.GELU(), nn.Linear(8, 3))
        x, y = torch.randn(30, 5, generator=g), torch.randn(30, 3, generator=g)

        def loss_fn(output, target):
            return F.mse_loss(output.reshape(target.shape), target)
    else:
        model = mlp_network(InputSpec("continuous", (2, 3)), 4, hidden=(10, 6),
                            bias=case != "bias_free")
        x, y = torch.randn(30, 2, 3, generator=g), torch.randint(0, 4, (30,), generator=g)
    grads = _loop_oracle(model, x, y, loss_fn).double()
    snap = _snapshot(model)
    _no_vmap(monkeypatch)
    got = m_coherence(model, x, y, loss_fn=loss_fn)
    assert got.alpha == pytest.approx(coherence(grads).alpha, rel=1e-5)
    layers = layerwise_m_coherence(model, x, y, loss_fn=loss_fn)
    start = 0
    for name, module in model.named_children():
        width = sum(p.numel() for p in module.parameters())
        if width:
            assert layers[name].m_coherence == pytest.approx(
                coherence(grads[:, start : start + width]).m_coherence, rel=1e-5)
            start += width
    _assert_unchanged(model, snap)


def test_more_than_one_chunk_of_the_norm_path(monkeypatch):
    from heldout.measures import coherence as module

    model, (x, y) = _mlp(), _data(n=50)
    expected = m_coherence(model, x, y).alpha
    monkeypatch.setattr(module, "GHOST_CHUNK", 8)
    assert m_coherence(model, x, y).alpha == pytest.approx(expected, rel=1e-6)  # float32 sums


@pytest.mark.parametrize("case", ["batch_norm", "shared_layer", "frozen"])
def test_other_models_fall_back_to_vmap_and_still_match(case):
    from heldout.measures.coherence import _linear_sums

    x, y = _data(n=20)
    if case == "batch_norm":
        model = _mlp(batch_norm=True)
        model.eval()  # running statistics from init are fine for the comparison
    elif case == "shared_layer":
        torch.manual_seed(0)
        layer = nn.Linear(6, 6)
        model = nn.Sequential(layer, nn.Tanh(), layer, nn.Tanh(), nn.Linear(6, 4))
    else:
        model = _mlp()
        for p in model[0].parameters():
            p.requires_grad_(False)
    assert _linear_sums(model, x, y, F.cross_entropy) is None
    snap = _snapshot(model)
    got = m_coherence(model, x, y, chunk_size=6)
    _assert_unchanged(model, snap)
    # still the model's own Parameters (torch's functional_call with tied weights left a
    # plain tensor in a module registered twice)
    assert all(isinstance(p, nn.Parameter) for m in model.modules()
               for p in m.parameters(recurse=False))
    assert got.alpha == pytest.approx(coherence(_loop_oracle(model, x, y).double()).alpha,
                                      rel=1e-5)
