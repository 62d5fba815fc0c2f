"""Entropy regularization, PS-KD and hard batches against hand-computed cases."""

import math
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F

from heldout.engine import Technique, Trainer
from heldout.methods import (
    PSKD,
    EntropyRegularization,
    HardBatches,
    entropy,
    entropy_regularization,
    pskd_alpha,
    pskd_targets,
    select_hard_batches,
    soft_cross_entropy,
)


def test_entropy_and_sign_convention():
    z = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])  # p = (1/2, 1/2) and (3/4, 1/4)
    h = entropy(z)
    assert h[0] == pytest.approx(math.log(2))
    assert h[1] == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)), abs=1e-6)
    mean = float(h.mean())
    assert float(entropy_regularization(z, 0.1, "bonus")) == pytest.approx(-0.1 * mean)
    assert float(entropy_regularization(z, 0.1, "penalty")) == pytest.approx(0.1 * mean)


def test_entropy_token_mean_respects_the_mask():
    logits = torch.zeros(1, 3, 4)  # three tokens, uniform over 4
    logits[0, 2] = torch.tensor([10.0, 0, 0, 0])  # a padding token with low entropy
    mask = torch.tensor([[1, 1, 0]])
    assert float(entropy_regularization(logits, 1.0, "penalty", mask)) == pytest.approx(
        math.log(4), abs=1e-6)


def test_entropy_bonus_raises_entropy_in_training():
    torch.manual_seed(0)
    x, y = torch.randn(64, 5), torch.randint(0, 3, (64,))

    def final_entropy(techniques):
        torch.manual_seed(1)
        model = torch.nn.Linear(5, 3)
        Trainer(model, torch.optim.SGD(model.parameters(), lr=0.5), (x, y), max_steps=50,
                techniques=techniques).fit()
        return float(entropy(model(x).detach()).mean())

    plain = final_entropy([])
    assert final_entropy([EntropyRegularization(coefficient=0.5, mode="bonus")]) > plain
    assert final_entropy([EntropyRegularization(coefficient=0.5, mode="penalty")]) < plain


def test_pskd_targets_and_schedule_by_hand():
    assert pskd_alpha(0, 4, 0.8) == pytest.approx(0.2)
    assert pskd_alpha(3, 4, 0.8) == pytest.approx(0.8)
    past = torch.tensor([[0.5, 0.3, 0.2]])
    targets = pskd_targets(torch.tensor([1]), past, 0.25)
    assert targets.tolist()[0] == pytest.approx([0.125, 0.75 + 0.075, 0.05])
    logits = torch.tensor([[1.0, 2.0, 0.5]])
    by_hand = -(targets * torch.log_softmax(logits, -1)).sum()
    assert float(soft_cross_entropy(logits, targets)) == pytest.approx(float(by_hand))


@dataclass
class Spy(Technique):
    """Records the loss PS-KD computed and the predictions it stored, each step."""

    pskd: PSKD
    losses: list = field(default_factory=list)

    def on_after_step(self, state):
        self.losses.append(float(state.loss))


def test_pskd_in_the_trainer_matches_a_hand_loop():
    torch.manual_seed(0)
    x, y = torch.randn(12, 4), torch.randint(0, 3, (12,))
    steps, alpha_final = 6, 0.8  # full batch: one step per epoch, T = 6

    torch.manual_seed(1)
    hand = torch.nn.Linear(4, 3)
    opt = torch.optim.SGD(hand.parameters(), lr=0.3)
    memory = F.one_hot(y, 3).float()
    hand_losses = []
    for epoch in range(steps):
        logits = hand(x)
        alpha = alpha_final * (epoch + 1) / steps
        loss = soft_cross_entropy(logits, (1 - alpha) * F.one_hot(y, 3).float() + alpha * memory)
        opt.zero_grad()
        loss.backward()
        opt.step()
        memory = torch.softmax(logits.detach(), -1)
        hand_losses.append(float(loss))

    torch.manual_seed(1)
    model = torch.nn.Linear(4, 3)
    pskd = PSKD(alpha_final=alpha_final)
    spy = Spy(pskd)
    Trainer(model, torch.optim.SGD(model.parameters(), lr=0.3), (x, y), max_steps=steps,
            techniques=[pskd, spy]).fit()
    assert spy.losses == pytest.approx(hand_losses, rel=1e-6)
    for a, b in zip(model.parameters(), hand.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    stored = pskd.state_dict()["predictions"]
    torch.testing.assert_close(stored, memory)
    assert stored.nbytes == 12 * 3 * 4  # C float32 values per example
    assert pskd.state_dict()["visited"].all()


def test_select_hard_batches():
    losses = torch.tensor([0.5, 2.0, 1.0, 2.0, 0.1])
    assert select_hard_batches(losses, 0.4).tolist() == [1, 3]  # ties keep index order
    assert select_hard_batches(losses, 0.1).tolist() == [1]  # at least one
    assert select_hard_batches(losses, 1.0, "hardest_first").tolist() == [1, 3, 2, 0, 4]
    assert select_hard_batches(losses, 0.6).tolist() == [1, 2, 3]  # dataset order (default)


@dataclass
class BatchSpy(Technique):
    hard: HardBatches
    seen: list = field(default_factory=list)
    losses: list = field(default_factory=list)

    def on_batch_start(self, state):  # runs after HardBatches chose the batch
        self.seen.append(sorted(state.batch[2].tolist()))
        self.losses.append(self.hard.state_dict()["batch_losses"].clone())


def test_hard_batches_first_visit_all_then_the_hardest():
    torch.manual_seed(0)
    x, y = torch.randn(20, 3), torch.randint(0, 2, (20,))
    hard = HardBatches(fraction=0.5, seed=3, order="hardest_first")
    spy = BatchSpy(hard)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), (x, y), max_steps=9,
            batch_size=5, techniques=[hard, spy]).fit()
    partition = [sorted(b.tolist()) for b in torch.randperm(
        20, generator=torch.Generator().manual_seed(3)).split(5)]
    assert spy.seen[:4] == partition  # the first pass visits every fixed batch in order
    after_pass = spy.losses[4]  # every batch's loss is known from here on
    assert not torch.isnan(after_pass).any()
    first, second = torch.sort(after_pass, descending=True).indices[:2].tolist()
    assert spy.seen[4:6] == [partition[first], partition[second]]  # δ·b = 2 hardest
    # the next round re-ranks with the updated losses
    third, fourth = torch.sort(spy.losses[6], descending=True).indices[:2].tolist()
    assert spy.seen[6:8] == [partition[third], partition[fourth]]
    assert len(spy.seen) == 9  # the same update budget as plain training


def test_distillation_loss_by_hand():
    from heldout.methods import distillation_loss

    student = torch.tensor([[1.0, 0.0, -1.0]])
    teacher = torch.tensor([[0.0, 2.0, 0.0]])
    y = torch.tensor([2])
    t = 2.0
    p_t = torch.softmax(teacher / t, -1)
    log_p_s = torch.log_softmax(student / t, -1)
    kl = (p_t * (torch.log(p_t) - log_p_s)).sum()
    ce = -torch.log_softmax(student, -1)[0, 2]
    expected = 0.7 * t * t * kl + 0.3 * ce
    assert float(distillation_loss(student, teacher, y, t, 0.7)) == pytest.approx(float(expected))


def test_knowledge_distillation_from_a_teacher_run(tmp_path):
    from heldout.config import parse_overrides
    from heldout.methods import KnowledgeDistillation
    from heldout.run.assembly import build
    from heldout.run.execute import execute
    from heldout.store import Store
    from tests.conftest import tiny_config

    home = tmp_path / "home"
    teacher_cfg = tiny_config("steps=20")
    execute(teacher_cfg, Store(home))
    student_cfg = parse_overrides(tiny_config("model.hidden=[8]"), [
        "techniques=knowledge_distillation",
        f"techniques.knowledge_distillation.teacher_run={teacher_cfg.identity[:6]}",
        f"techniques.knowledge_distillation.home={home}",
    ])
    trainer = build(student_cfg)
    kd = trainer.techniques[0]
    assert isinstance(kd, KnowledgeDistillation)
    trainer.state.max_steps = 1
    trainer.fit()
    teacher = build(teacher_cfg, checkpoint_path=Store(home).run_dir(teacher_cfg.identity)
                    / "checkpoint.pt")
    teacher.resume()
    x, y, _ = trainer.state.batch
    torch.testing.assert_close(kd._teacher(x), teacher.model.eval()(x))
    with pytest.raises(ValueError, match="needs teacher_run"):
        KnowledgeDistillation().on_fit_start(trainer.state)
