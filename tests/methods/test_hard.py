"""HARD (#32): oracles for the augmenter losses, its ascent step and bound, the reduction to
plain knowledge distillation, and the registry's contracts on a continuous task."""

import functools
import tempfile

import pytest
import torch
from scipy.special import rel_entr, softmax

import tests.test_contracts as contracts
from heldout.core.inputs import InputSpec
from heldout.engine.trainer import Trainer
from heldout.methods.distill import KnowledgeDistillation, distillation_loss
from heldout.methods.hard import (
    HardKD,
    PerturbationAugmenter,
    hard_augmenter_loss,
    hard_augmenter_step,
    teacher_student_kl,
)
from heldout.models.mlp import mlp_network
from heldout.run.execute import execute
from heldout.store import Store
from heldout.tasks.base import Split
from tests.conftest import tiny_config

SPEC = InputSpec("continuous", (16,))


def _net(seed, batch_norm=False):
    torch.manual_seed(seed)
    return mlp_network(SPEC, 4, hidden=(12,), batch_norm=batch_norm)


def _batch(seed=0, n=32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 16, generator=g), torch.randint(0, 4, (n,), generator=g)


def test_losses_match_a_hand_computation_with_scipy():
    g = torch.Generator().manual_seed(1)
    t_aug, s_aug, t_clean = (torch.randn(5, 3, generator=g, dtype=torch.float64)
                             for _ in range(3))
    temperature, weight = 2.0, 0.7

    def kl(p_logits, q_logits):
        p = softmax(p_logits.numpy() / temperature, axis=1)
        q = softmax(q_logits.numpy() / temperature, axis=1)
        return rel_entr(p, q).sum(axis=1).mean()

    assert float(teacher_student_kl(t_aug, s_aug, temperature)) == pytest.approx(
        kl(t_aug, s_aug), rel=1e-10)
    expected = -kl(t_aug, s_aug) + weight * kl(t_clean, t_aug)
    assert float(hard_augmenter_loss(t_aug, s_aug, t_clean, temperature, weight)) == (
        pytest.approx(expected, rel=1e-10))


def test_an_augmenter_step_increases_the_teacher_student_kl_on_a_fixed_batch():
    teacher, student = _net(0), _net(1)
    x, _ = _batch()
    g = torch.Generator().manual_seed(3)
    augmenter = PerturbationAugmenter(16, hidden=32, noise_dim=4, bound=0.5, generator=g)
    noise = torch.randn(len(x), 4, generator=g)
    optimizer = torch.optim.Adam(augmenter.parameters(), lr=1e-2)

    def disagreement():
        with torch.no_grad():
            x_aug = augmenter(x, noise)
            return float(teacher_student_kl(teacher(x_aug), student(x_aug), 4.0))

    before = disagreement()
    # λ = 0: the step's loss is −KL at the augmenter's (identity) start
    assert hard_augmenter_step(augmenter, optimizer, teacher, student, x, noise, 4.0,
                               0.0) == pytest.approx(-before, rel=1e-6)
    after_one = disagreement()
    for _ in range(20):
        hard_augmenter_step(augmenter, optimizer, teacher, student, x, noise, 4.0, 0.0)
    assert before < after_one < disagreement()


def test_the_teacher_penalty_keeps_the_teachers_prediction():
    teacher, student = _net(0), _net(1)
    x, _ = _batch()
    drifts = []
    for weight in (0.0, 50.0):
        g = torch.Generator().manual_seed(3)
        augmenter = PerturbationAugmenter(16, hidden=32, noise_dim=4, bound=1.0, generator=g)
        noise = torch.randn(len(x), 4, generator=g)
        optimizer = torch.optim.Adam(augmenter.parameters(), lr=1e-2)
        for _ in range(30):
            hard_augmenter_step(augmenter, optimizer, teacher, student, x, noise, 4.0, weight)
        with torch.no_grad():
            drifts.append(float(teacher_student_kl(teacher(x), teacher(augmenter(x, noise)))))
    assert drifts[1] < 0.5 * drifts[0]


def test_the_augmentation_respects_its_bound():
    teacher, student = _net(0), _net(1)
    x, _ = _batch()
    g = torch.Generator().manual_seed(0)
    bound = 0.2
    augmenter = PerturbationAugmenter(16, hidden=32, noise_dim=4, bound=bound, generator=g)
    noise = torch.randn(len(x), 4, generator=g)
    optimizer = torch.optim.SGD(augmenter.parameters(), lr=100.0)  # drive it to saturation
    for _ in range(10):
        hard_augmenter_step(augmenter, optimizer, teacher, student, x, noise, 1.0, 0.0)
    change = (augmenter(x, noise) - x).abs().detach()
    assert float(change.max()) <= bound + 1e-6
    assert float(change.max()) > 0.9 * bound  # the bound is reached, so the check bites


def test_the_step_writes_only_augmenter_gradients_and_keeps_batchnorm_statistics():
    teacher, student = _net(0), _net(1, batch_norm=True)
    student.train()
    x, _ = _batch()
    running = student.norm1.running_mean.clone()
    g = torch.Generator().manual_seed(0)
    augmenter = PerturbationAugmenter(16, noise_dim=2, generator=g)
    hard_augmenter_step(augmenter, torch.optim.SGD(augmenter.parameters(), lr=0.1), teacher,
                        student, x, torch.randn(len(x), 2, generator=g))
    assert student.training
    assert torch.equal(student.norm1.running_mean, running)
    assert all(p.grad is None for p in [*student.parameters(), *teacher.parameters()])
    assert augmenter.out_weight.abs().sum() > 0  # the augmenter did move


def _trainer(technique, steps=6, seed=0):
    x, y = _batch(0, n=64)
    return Trainer(_net(5, batch_norm=True), lambda p: torch.optim.SGD(p, lr=0.1),
                   Split(x, y), max_steps=steps, batch_size=16, techniques=[technique],
                   measures=[], eval_every=100, seed=seed)


@pytest.mark.parametrize("degenerate", [{"augmenter_steps": 0}, {"bound": 0.0},
                                        {"augment_probability": 0.0}])
def test_a_degenerate_augmenter_is_plain_knowledge_distillation_exactly(degenerate):
    teacher = _net(0)
    runs = []
    for technique in (KnowledgeDistillation(temperature=2.0, alpha=0.8),
                      HardKD(temperature=2.0, alpha=0.8, **degenerate)):
        technique.set_teacher(teacher)
        trainer = _trainer(technique)
        trainer.fit()
        runs.append(trainer.model.state_dict())
    for key, value in runs[0].items():
        assert torch.equal(value, runs[1][key]), key


def test_augmented_batch_and_loss_in_a_plain_loop():
    teacher, student = _net(0), _net(1)
    x, y = _batch()
    hard = HardKD(temperature=2.0, alpha=0.8, augment_probability=1.0, bound=0.25)
    hard.set_teacher(teacher)
    hard.set_student(student, seed=0)
    state = torch.get_rng_state()
    x_aug, y_aug = hard(x, y, seed=4)
    again = HardKD(temperature=2.0, alpha=0.8, augment_probability=1.0, bound=0.25)
    again.set_teacher(teacher)
    again.set_student(student, seed=0)
    assert torch.equal(again(x, y, seed=4)[0], x_aug)  # seeded: the same draw
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG untouched
    assert torch.equal(y_aug, y) and not torch.equal(x_aug, x)
    assert float((x_aug - x).abs().max()) <= 0.25 + 1e-6
    # the student's loss is the distillation loss on the augmented batch
    logits = student(x_aug)
    batch_state = type("S", (), {"batch": (x_aug, y, None)})()
    assert torch.equal(hard.loss(logits, y, batch_state),
                       distillation_loss(logits, teacher(x_aug), y, 2.0, 0.8))


def test_bad_input_raises_naming_the_parameter():
    with pytest.raises(ValueError, match="bound"):
        HardKD(bound=-0.1)
    with pytest.raises(ValueError, match="augment_probability"):
        HardKD(augment_probability=1.5)
    with pytest.raises(ValueError, match="teacher_weight"):
        hard_augmenter_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2),
                            teacher_weight=-1.0)
    hard = HardKD()
    with pytest.raises(ValueError, match="needs a teacher"):
        hard(torch.rand(2, 16), torch.zeros(2, dtype=torch.long))
    hard.set_teacher(_net(0))
    hard.set_student(_net(1))
    with pytest.raises(ValueError, match="continuous inputs"):
        hard(torch.zeros(2, 16, dtype=torch.long), torch.zeros(2, dtype=torch.long))


SETTING = ["task=digits_shift"]


@functools.cache
def _digits_teacher() -> dict:
    home = tempfile.mkdtemp(prefix="heldout-hard-teacher-")
    cfg = tiny_config(*SETTING, "steps=6")
    execute(cfg, Store(home))
    return {"teacher_run": cfg.identity, "home": home}


def test_registry_contracts_on_a_continuous_task(tmp_path, monkeypatch):
    """The contract tests' checks, in the setting hard_kd needs: a continuous task and a
    teacher trained on it."""
    monkeypatch.setitem(contracts.TECHNIQUE_SETTING, "hard_kd", SETTING)
    monkeypatch.setitem(contracts.TECHNIQUE_PARAMS, "hard_kd", _digits_teacher())
    contracts.test_technique_runs_and_is_deterministic("hard_kd", tmp_path / "run")
    contracts.test_technique_state_round_trips("hard_kd")
    contracts.test_technique_resume_is_exact("hard_kd", tmp_path / "resume", monkeypatch)
