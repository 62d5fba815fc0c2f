"""LoRA, PEGO, SoMA, SaRA and LEVI on ``tiny_bert``: oracle checks, and the registry's
contract checks on a small stand-in text task (registered for this module only)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from heldout.core.inputs import InputSpec
from heldout.core.state import State
from heldout.methods.peft import (
    LEVI,
    PEGO,
    LoRA,
    LoRAGroupLinear,
    SaRA,
    SoMA,
    SparseDeltaLinear,
    SVDMinorLinear,
    nuclear_norm,
    pego_orthogonality,
    smallest_magnitude_indices,
    svd_split,
    trainable_parameter_count,
)
from heldout.registry import MODELS

pytest.importorskip("peft")

SPEC = InputSpec("tokens", (12,), vocab=30522)
HIDDEN, LAYERS = 32, 2


def tiny(seed: int = 0, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    model = MODELS.build("tiny_bert").build(SPEC, classes)
    return model.eval()


def tokens(seed: int = 1, n: int = 5) -> torch.Tensor:
    ids = torch.randint(1000, 2000, (n, 12), generator=torch.Generator().manual_seed(seed))
    ids[:, 9:] = 0
    return ids


def encoder_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.encoder.state_dict().items()
            if "lora_" not in k}


def train_steps(model: nn.Module, technique=None, steps: int = 3) -> None:
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    ids, y = tokens(2, 8), torch.arange(8) % 3
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(ids), y)
        if technique is not None and "loss_term" in technique.touches:
            loss = loss + technique.loss_term(None, y, State(model, optimizer, steps))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


# ------------------------------------------------------------------------------- LoRA


def test_lora_starts_as_the_pretrained_model_and_counts_its_parameters():
    ids = tokens()
    reference = tiny()(ids)
    model = LoRA(rank=4).transform_model(tiny())
    assert torch.equal(model(ids), reference)  # B = 0: exactly the un-adapted model
    # r·(in + out) per targeted matrix (query and value of 2 layers) + the head
    head = HIDDEN * 3 + 3
    assert trainable_parameter_count(model) == 4 * (HIDDEN + HIDDEN) * 2 * LAYERS + head
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all("lora_" in n or n.startswith("head.") for n in names)


def test_lora_trains_only_its_factors_and_the_head():
    model = LoRA(rank=2, target_modules=("query",)).transform_model(tiny())
    before, head = encoder_weights(model), model.head.weight.detach().clone()
    train_steps(model)
    after = encoder_weights(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(head, model.head.weight)
    assert not torch.equal(model(tokens()), tiny()(tokens()))


def test_peft_techniques_refuse_bad_input():
    with pytest.raises(ValueError, match="target_modules"):
        LoRA(target_modules=())
    with pytest.raises(ValueError, match="target_modules"):
        PEGO(target_modules=("nope",)).transform_model(tiny())
    with pytest.raises(TypeError, match="pre-trained text classifier"):
        SaRA().transform_model(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="fraction"):
        smallest_magnitude_indices(torch.ones(3), 0.0)
    with pytest.raises(ValueError, match="rank"):
        svd_split(torch.ones(3, 2), 3)


# ------------------------------------------------------------------------------- PEGO


def test_pego_orthogonality_hand_cases():
    orthogonal = torch.eye(6).reshape(3, 2, 6)  # three members on disjoint coordinates
    pretrained = torch.zeros(4, 6)
    pretrained[:, 0] = 0.0
    assert [float(t) for t in pego_orthogonality(orthogonal, pretrained)] == [0.0, 0.0]
    a = torch.tensor([[[1.0, 0.0, 0.0]], [[1.0, 1.0, 0.0]], [[0.0, 2.0, 1.0]]])
    w0 = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0]])
    among, against = pego_orthogonality(a, w0)
    # A1A2ᵀ = 1, A1A3ᵀ = 0, A2A3ᵀ = 2  →  1 + 0 + 4
    assert float(among) == 5.0
    # W0 A1ᵀ = (2, 0), W0 A2ᵀ = (2, 0), W0 A3ᵀ = (0, 3)  →  4 + 4 + 9
    assert float(against) == 17.0


def test_pego_regularizer_gradient_decorrelates_the_group():
    a = torch.randn(3, 2, 8, generator=torch.Generator().manual_seed(0), requires_grad=True)
    optimizer = torch.optim.SGD([a], lr=0.05)
    start = float(pego_orthogonality(a.detach())[0])
    for _ in range(50):
        optimizer.zero_grad()
        pego_orthogonality(a)[0].backward()
        optimizer.step()
    assert float(pego_orthogonality(a.detach())[0]) < 0.1 * start


def test_pego_with_one_member_and_no_regularizer_is_lora():
    lora = LoRA(rank=3, alpha=6).transform_model(tiny())
    pego = PEGO(group_size=1, rank=3, alpha=6, orthogonality=0.0,
                pretrained_orthogonality=0.0).transform_model(tiny())
    generator = torch.Generator().manual_seed(3)
    for name, module in lora.encoder.named_modules():
        if hasattr(module, "lora_A"):
            group = pego.encoder.get_submodule(name)
            assert isinstance(group, LoRAGroupLinear)
            up = torch.randn(module.lora_B["default"].weight.shape, generator=generator)
            with torch.no_grad():
                module.lora_B["default"].weight.copy_(up)
                group.up.copy_(up[None])
                group.down.copy_(module.lora_A["default"].weight[None])
    ids = tokens()
    torch.testing.assert_close(pego(ids), lora(ids), rtol=1e-5, atol=1e-6)
    assert trainable_parameter_count(pego) == trainable_parameter_count(lora)
    term = PEGO(group_size=1, orthogonality=0.0, pretrained_orthogonality=0.0)
    assert float(term.regularizer(pego).detach()) == 0.0


def test_pego_trains_the_group_and_its_loss_term():
    technique = PEGO(group_size=2, rank=2)
    model = technique.transform_model(tiny())
    before = float(technique.regularizer(model).detach())
    assert before > 0
    frozen = encoder_weights(model)
    train_steps(model, technique)
    groups = list(m for m in model.modules() if isinstance(m, LoRAGroupLinear))
    assert len(groups) == 2 * LAYERS and all(g.up.abs().sum() > 0 for g in groups)
    after = {k: v for k, v in model.encoder.state_dict().items() if k in frozen}
    changed = [k for k in frozen if not torch.equal(frozen[k], after[k])]
    assert all(k.endswith((".down", ".up")) for k in changed) and changed


# ------------------------------------------------------------------------------- SoMA


def test_svd_split_reconstructs_and_takes_the_smallest_components():
    w = torch.randn(7, 5, generator=torch.Generator().manual_seed(0))
    residual, u, s, vt = svd_split(w, 2)
    torch.testing.assert_close(residual + (u * s) @ vt, w, rtol=0, atol=1e-6)
    np.testing.assert_allclose(s.numpy(), np.linalg.svd(w.numpy())[1][-2:], rtol=1e-5)
    # the residual holds the 3 major components only: rank 3, and its singular values are
    # the 3 largest of w
    np.testing.assert_allclose(np.linalg.svd(residual.numpy())[1][:3],
                               np.linalg.svd(w.numpy())[1][:3], rtol=1e-5)
    assert np.linalg.matrix_rank(residual.numpy(), tol=1e-4) == 3


def test_soma_starts_as_the_model_and_trains_only_minor_components():
    ids = tokens()
    reference = tiny()(ids)
    model = SoMA(rank=4, frozen_blocks=1).transform_model(tiny())
    torch.testing.assert_close(model(ids), reference, rtol=1e-5, atol=1e-5)
    minor = [m for m in model.modules() if isinstance(m, SVDMinorLinear)]
    # block 0 is frozen whole: 4 targets (q, k, v, attention output) in block 1 only
    assert len(minor) == 4
    assert isinstance(model.encoder.encoder.layer[0].attention.self.query, nn.Linear)
    model.train()
    nn.functional.cross_entropy(model(ids), torch.zeros(5, dtype=torch.long)).backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad and all(n.endswith((".u", ".s", ".vt")) or n.startswith("head.")
                             for n in with_grad)
    assert all(not m.residual.requires_grad for m in minor)


def test_soma_annealed_weight_decay_shrinks_by_the_schedule():
    technique = SoMA(rank=2, frozen_blocks=0, weight_decay=0.1)
    model = technique.transform_model(tiny())
    module = next(m for m in model.modules() if isinstance(m, SVDMinorLinear))
    s = module.s.detach().clone()
    technique.on_after_step(State(model, None, max_steps=4, step=1))  # decay 0.1 · 3/4
    torch.testing.assert_close(module.s.detach(), s * (1 - 0.075))
    technique.on_after_step(State(model, None, max_steps=4, step=4))  # annealed to 0
    torch.testing.assert_close(module.s.detach(), s * (1 - 0.075))


# ------------------------------------------------------------------------------- SaRA


def test_smallest_magnitude_indices_match_numpy_argsort():
    w = torch.randn(9, 11, generator=torch.Generator().manual_seed(4))
    picked = smallest_magnitude_indices(w, 0.2)
    count = round(0.2 * 99)
    expected = np.sort(np.argsort(np.abs(w.numpy()).ravel(), kind="stable")[:count])
    assert picked.tolist() == expected.tolist()
    assert w.flatten().abs()[picked].max() <= np.sort(np.abs(w.numpy()).ravel())[count]


def test_nuclear_norm_hand_and_numpy():
    assert float(nuclear_norm(torch.ones(2, 2))) == pytest.approx(2.0)  # σ = (2, 0)
    m = torch.randn(4, 6, generator=torch.Generator().manual_seed(5))
    assert float(nuclear_norm(m)) == pytest.approx(
        float(np.linalg.norm(m.numpy(), ord="nuc")), rel=1e-5)


def test_sara_updates_only_the_selected_entries():
    technique = SaRA(fraction=0.1, nuclear=0.01)
    model = technique.transform_model(tiny())
    ids = tokens()
    assert torch.equal(model(ids), tiny()(ids))  # values = 0 at init
    sparse = [m for m in model.modules() if isinstance(m, SparseDeltaLinear)]
    initial = [m.base.weight.detach().clone() for m in sparse]
    assert float(technique.loss_term(None, None, State(model, None, 1)).detach()) == 0.0
    train_steps(model, technique)
    head = HIDDEN * 3 + 3
    assert trainable_parameter_count(model) == 4 * round(0.1 * HIDDEN * HIDDEN) + head
    for module, w0 in zip(sparse, initial, strict=True):
        effective = (module.base.weight + module.delta()).detach().flatten()
        selected = torch.zeros(w0.numel(), dtype=torch.bool)
        selected[module.indices] = True
        assert torch.equal(effective[~selected], w0.flatten()[~selected])
        assert (effective[selected] != w0.flatten()[selected]).any()
        assert torch.equal(module.base.weight, w0)
    # the penalty is the mean nuclear norm of the dense updates
    expected = 0.01 * np.mean([np.linalg.norm(m.delta().detach().numpy(), ord="nuc")
                               for m in sparse])
    assert float(technique.loss_term(None, None, State(model, None, 1)).detach()) == pytest.approx(
        expected, rel=1e-5)


# ------------------------------------------------------------------------------- LEVI


def test_levi_with_a_closed_gate_is_the_pretrained_classifier():
    ids = tokens()
    reference = tiny()(ids)
    model = LEVI(width=8, small_weight=0.0).transform_model(tiny()).eval()
    torch.testing.assert_close(model(ids), reference, rtol=1e-6, atol=1e-6)
    opened = LEVI(width=8, small_weight=1.0).transform_model(tiny()).eval()
    torch.testing.assert_close(opened(ids), reference + opened.small_logits(ids))


def test_levi_trains_the_gate_the_layer_weights_and_the_small_model():
    model = LEVI(width=8).transform_model(tiny())
    small = model.small_embedding.weight.detach().clone()
    train_steps(model, steps=4)
    assert float(model.gate.detach()) != 0.0
    assert not torch.equal(model.layer_weights, torch.tensor([0.0, 0.0, 1.0]))
    assert not torch.equal(small, model.small_embedding.weight)
