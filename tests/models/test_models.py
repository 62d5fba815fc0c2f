"""Tests of the model zoo: TokenLinear against the one-hot Linear, shapes, block formulas."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from heldout.core.inputs import InputSpec
from heldout.models import (
    CNN1D,
    MLP,
    TokenLinear,
    Transformer,
    TransformerBlock,
)
from heldout.registry import MODELS

TOKENS = InputSpec("tokens", (2,), vocab=7)
SIGNAL = InputSpec("continuous", (16,))
CHANNELS = InputSpec("continuous", (3, 12))


def example_batch(spec: InputSpec, batch: int = 4) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    if spec.kind == "tokens":
        return torch.randint(0, spec.vocab, (batch, *spec.shape), generator=generator)
    return torch.randn(batch, *spec.shape, generator=generator)


# --- TokenLinear --------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
def test_token_linear_equals_one_hot_linear(bias):
    n_positions, vocab, out_features = 3, 11, 5
    torch.manual_seed(0)
    token_layer = TokenLinear(n_positions, vocab, out_features, bias=bias)
    after_token_layer = torch.rand(1)
    torch.manual_seed(0)
    linear = nn.Linear(n_positions * vocab, out_features, bias=bias)
    after_linear = torch.rand(1)
    assert torch.equal(token_layer.weight, linear.weight)  # identical draws ...
    assert torch.equal(after_token_layer, after_linear)  # ... and the same RNG consumption
    if bias:
        assert torch.equal(token_layer.bias, linear.bias)

    tokens = torch.randint(0, vocab, (64, n_positions), generator=torch.Generator().manual_seed(1))
    one_hot = F.one_hot(tokens, vocab).flatten(-2).float()
    upstream = torch.randn(64, out_features, generator=torch.Generator().manual_seed(2))
    token_out, linear_out = token_layer(tokens), linear(one_hot)
    assert torch.allclose(token_out, linear_out, atol=1e-6)
    (token_out * upstream).sum().backward()
    (linear_out * upstream).sum().backward()
    assert torch.allclose(token_layer.weight.grad, linear.weight.grad, atol=1e-6)
    if bias:
        assert torch.allclose(token_layer.bias.grad, linear.bias.grad, atol=1e-6)
    # A float input (the one-hot itself, or a relaxation of it) takes the plain linear path.
    assert torch.allclose(token_layer(one_hot), linear_out, atol=1e-6)


def test_token_linear_extra_batch_dims_and_bad_tokens():
    layer = TokenLinear(2, 5, 3)
    tokens = torch.randint(0, 5, (4, 6, 2), generator=torch.Generator().manual_seed(0))
    expected = layer(F.one_hot(tokens, 5).flatten(-2).float())
    assert torch.allclose(layer(tokens), expected, atol=1e-6)
    with pytest.raises(IndexError, match="out of range"):
        layer(torch.tensor([[0, 5]]))  # would silently read position 1's column 0 otherwise
    with pytest.raises(IndexError, match="out of range"):
        layer(torch.tensor([[-1, 0]]))
    with pytest.raises(ValueError, match="shape"):
        layer(torch.tensor([[0, 1, 2]]))
    assert isinstance(layer, nn.Linear) and layer.in_features == 10


def test_token_mlp_per_example_gradients_under_vmap():
    # No data-dependent Python branches in TokenLinear, so torch.func can batch over examples.
    torch.manual_seed(0)
    model = MLP(hidden=(8,)).build(TOKENS, num_classes=7)
    params = dict(model.named_parameters())
    tokens, labels = example_batch(TOKENS, batch=5), torch.arange(5)

    def loss(parameters, example, label):
        logits = torch.func.functional_call(model, parameters, (example[None],))
        return F.cross_entropy(logits, label[None])

    per_example = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(
        params, tokens, labels
    )
    for index in range(5):
        model.zero_grad()
        loss(params, tokens[index], labels[index]).backward()
        expected = model.linear1.weight.grad
        assert torch.allclose(per_example["linear1.weight"][index], expected, atol=1e-6)


# --- every model, every compatible input ---------------------------------------------------

CASES = [
    (MLP(hidden=(8, 8)), TOKENS),
    (MLP(hidden=(8,), batch_norm=True, activation="gelu"), SIGNAL),
    (MLP(hidden=(), bias=False), TOKENS),
    (MLP(hidden=(8,), activation="tanh"), CHANNELS),
    (CNN1D(channels=(4, 6)), SIGNAL),
    (CNN1D(channels=(4,), kernel_size=3, batch_norm=True, bias=False), CHANNELS),
    (Transformer(d_model=16, n_heads=2), TOKENS),
    (Transformer(d_model=16, n_heads=4, n_layers=2, norm="post", dropout=0.1), SIGNAL),
    (Transformer(d_model=8, n_heads=2, d_ff=12, causal=True, activation="gelu"), TOKENS),
]


@pytest.mark.parametrize(("spec", "input"), CASES, ids=lambda v: repr(v)[:48])
def test_models_build_and_give_logits(spec, input):
    torch.manual_seed(0)
    model = spec.build(input, num_classes=5)
    torch.manual_seed(0)
    again = spec.build(input, num_classes=5)
    for (name, p), (_, q) in zip(
        model.state_dict().items(), again.state_dict().items(), strict=True
    ):
        assert torch.equal(p, q), name  # same torch seed, same weights
    logits = model(example_batch(input))
    assert logits.shape == (4, 5)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    assert model(example_batch(input, batch=1)).shape == (1, 5)


# --- MLP ----------------------------------------------------------------------------------


def test_mlp_layer_names_and_batch_norm_placement():
    model = MLP(hidden=(6, 6), bias=False, batch_norm=True).build(TOKENS, num_classes=7)
    names = [name for name, _ in model.named_children()]
    assert names == ["linear1", "norm1", "act1", "linear2", "norm2", "act2", "head"]
    assert isinstance(model.linear1, TokenLinear)
    assert [n for n, _ in model.named_parameters() if n.endswith("weight")] == [
        "linear1.weight",
        "norm1.weight",
        "linear2.weight",
        "norm2.weight",
        "head.weight",
    ]
    assert model.linear1.bias is None and model.head.bias is None


def test_token_mlp_equals_one_hot_mlp_for_the_same_seed():
    torch.manual_seed(3)
    token_model = MLP(hidden=(10, 10)).build(TOKENS, num_classes=7)
    torch.manual_seed(3)
    one_hot_model = MLP(hidden=(10, 10)).build(InputSpec("continuous", (14,)), num_classes=7)
    assert token_model.state_dict().keys() == one_hot_model.state_dict().keys()
    tokens = example_batch(TOKENS, batch=32)
    one_hot = F.one_hot(tokens, 7).flatten(-2).float()
    assert torch.allclose(token_model(tokens), one_hot_model(one_hot), atol=1e-6)


def test_mlp_rejects_bad_parameters():
    with pytest.raises(ValueError, match="activation"):
        MLP(activation="swish")
    with pytest.raises(ValueError, match="hidden"):
        MLP(hidden=(4, 0))
    assert MLP(hidden=[3, 4]).hidden == (3, 4)  # a list from YAML becomes a tuple


# --- CNN ----------------------------------------------------------------------------------


def test_cnn_rejects_token_inputs_with_a_clear_message():
    with pytest.raises(ValueError, match="CNN1D needs continuous inputs"):
        CNN1D().build(TOKENS, num_classes=3)
    with pytest.raises(ValueError, match="kernel_size"):
        CNN1D(kernel_size=0)


def test_cnn_blocks_halve_the_length():
    model = CNN1D(channels=(4, 4, 4), kernel_size=5).build(InputSpec("continuous", (40,)), 10)
    features = model[:-3](torch.zeros(2, 40))  # everything before pool, flatten, head
    assert features.shape == (2, 4, 5)  # 40 -> 20 -> 10 -> 5
    assert model.conv1.stride == (2,) and model.conv1.padding == (2,)


# --- transformer --------------------------------------------------------------------------


def manual_attention(block: TransformerBlock, x: torch.Tensor, causal: bool) -> torch.Tensor:
    """softmax(Q Kᵀ / √d_head) V per head, written out with the block's own weights."""
    attention = block.attention
    n_heads, d_model = attention.n_heads, x.shape[-1]
    d_head = d_model // n_heads
    query, key, value = (x @ attention.qkv.weight.T + attention.qkv.bias).split(d_model, -1)
    heads = []
    for head in range(n_heads):
        columns = slice(head * d_head, (head + 1) * d_head)
        scores = query[..., columns] @ key[..., columns].transpose(-1, -2) / math.sqrt(d_head)
        if causal:
            length = x.shape[1]
            scores = scores.masked_fill(torch.ones(length, length).triu(1).bool(), -math.inf)
        heads.append(scores.softmax(-1) @ value[..., columns])
    return torch.cat(heads, -1) @ attention.output.weight.T + attention.output.bias


@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_the_formula(causal):
    torch.manual_seed(0)
    block = TransformerBlock(d_model=4, n_heads=2, d_ff=8, norm="pre", causal=causal)
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(block.attention(x), manual_attention(block, x, causal), atol=1e-6)


def test_pre_and_post_layer_norm_blocks_follow_their_formulas():
    torch.manual_seed(0)
    block = TransformerBlock(d_model=4, n_heads=2, d_ff=8, norm="pre")
    with torch.no_grad():  # move LayerNorm off its identity-affine init so placement matters
        for norm in (block.attention_norm, block.feedforward_norm):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(1))

    def layer_norm(module: nn.LayerNorm, h: torch.Tensor) -> torch.Tensor:
        centered = h - h.mean(-1, keepdim=True)
        scale = torch.sqrt(centered.pow(2).mean(-1, keepdim=True) + module.eps)
        return centered / scale * module.weight + module.bias

    def feedforward(h: torch.Tensor) -> torch.Tensor:
        first, _, second = block.feedforward
        return torch.relu(h @ first.weight.T + first.bias) @ second.weight.T + second.bias

    def attention(h: torch.Tensor) -> torch.Tensor:
        return manual_attention(block, h, causal=False)

    hidden = x + attention(layer_norm(block.attention_norm, x))
    pre = hidden + feedforward(layer_norm(block.feedforward_norm, hidden))
    assert torch.allclose(block(x), pre, atol=1e-5)

    block.norm = "post"  # same modules, other placement (what Mix-LN changes per block)
    hidden = layer_norm(block.attention_norm, x + attention(x))
    post = layer_norm(block.feedforward_norm, hidden + feedforward(hidden))
    assert torch.allclose(block(x), post, atol=1e-5)
    assert not torch.allclose(pre, post, atol=1e-3)


def test_causal_attention_ignores_later_positions():
    torch.manual_seed(0)
    model = Transformer(d_model=8, n_heads=2, n_layers=2, causal=True).build(
        InputSpec("continuous", (5,)), num_classes=3
    )
    x = torch.randn(2, 5)
    changed = x.clone()
    changed[:, 3:] += 1.0
    hidden = model.embedding(x.unsqueeze(-1)) + model.position_embedding(torch.arange(5))
    hidden_changed = model.embedding(changed.unsqueeze(-1)) + model.position_embedding(
        torch.arange(5)
    )
    for block in model.blocks:
        hidden, hidden_changed = block(hidden), block(hidden_changed)
    assert torch.allclose(hidden[:, :3], hidden_changed[:, :3], atol=1e-6)
    assert not torch.allclose(hidden[:, 3:], hidden_changed[:, 3:], atol=1e-3)


def test_transformer_structure_and_validation():
    pre = Transformer(d_model=16, n_heads=2, n_layers=3).build(TOKENS, num_classes=7)
    assert isinstance(pre.blocks, nn.ModuleList) and len(pre.blocks) == 3
    assert all(block.norm == "pre" for block in pre.blocks)
    assert isinstance(pre.final_norm, nn.LayerNorm)
    assert pre.blocks[0].feedforward[0].out_features == 64  # d_ff defaults to 4 * d_model
    post = Transformer(d_model=16, n_heads=2, norm="post").build(TOKENS, num_classes=7)
    assert isinstance(post.final_norm, nn.Identity)
    with pytest.raises(ValueError, match="n_heads"):
        Transformer(d_model=10, n_heads=4)
    with pytest.raises(ValueError, match="norm"):
        Transformer(norm="sandwich")
    with pytest.raises(ValueError, match="shape"):
        Transformer(d_model=8, n_heads=2).build(CHANNELS, num_classes=3)


# --- registry -----------------------------------------------------------------------------


def test_models_are_registered_frozen_dataclasses(monkeypatch):
    monkeypatch.setattr(MODELS, "_loaded", True)
    for name, cls in [("mlp", MLP), ("cnn1d", CNN1D), ("transformer", Transformer)]:
        entry = MODELS.get(name)
        assert entry.cls is cls and cls.registry_name == name
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen
        assert all(f.default is not dataclasses.MISSING for f in dataclasses.fields(cls))
    assert MODELS.get("mlp").papers == (9,)


def test_square_activation_and_normal_init():
    import math as _math

    from heldout.core.inputs import InputSpec
    from heldout.models import MLP

    torch.manual_seed(0)
    net = MLP(hidden=(400,), bias=False, activation="square", init_std=0.05).build(
        InputSpec("tokens", (2,), vocab=97), num_classes=97)
    weight = net.linear1.weight
    assert abs(float(weight.std()) - 0.05) < 0.002 and abs(float(weight.mean())) < 0.002
    tokens = torch.tensor([[3, 5]])
    hidden = weight[:, 3] + weight[:, 97 + 5]
    torch.testing.assert_close(net(tokens)[0], net.head.weight @ hidden.pow(2))
    assert _math.isclose(float(net.head.weight.std()), 0.05, rel_tol=0.1)


def test_mse_to_one_hot_by_hand():
    from heldout.engine.trainer import mse_to_one_hot

    logits = torch.tensor([[0.5, 0.0, 1.0], [0.0, 2.0, 0.0]])
    targets = torch.tensor([0, 1])
    # entries minus one-hot: (-0.5, 0, 1) and (0, 1, 0) -> mean of squares over 6 entries
    assert float(mse_to_one_hot(logits, targets)) == pytest.approx((0.25 + 1 + 1) / 6)


def test_token_linear_supports_double_backward():
    from heldout.models.layers import TokenLinear

    torch.manual_seed(0)
    layer = TokenLinear(2, 5, 3).double()
    tokens = torch.tensor([[1, 4], [0, 0], [2, 3]])
    one_hot = torch.nn.functional.one_hot(tokens, 5).reshape(3, 10).double()

    def loss(weight, use_tokens):
        out = (torch.nn.functional.linear(one_hot, weight, layer.bias) if not use_tokens
               else torch.func.functional_call(layer, {"weight": weight, "bias": layer.bias},
                                               (tokens,)))
        return out.pow(3).sum()

    w = layer.weight.detach().clone().requires_grad_(True)
    v = torch.randn_like(w)
    hvps = []
    for use_tokens in (True, False):
        g = torch.autograd.grad(loss(w, use_tokens), w, create_graph=True)[0]
        hvps.append(torch.autograd.grad((g * v).sum(), w)[0])
    torch.testing.assert_close(hvps[0], hvps[1])
