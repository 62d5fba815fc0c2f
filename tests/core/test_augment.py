"""The augmentation extension point: applied after batch selection, seeded per step (a
resumed run is bit-identical), given each example's training domain, callable in a loop."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from heldout.core.augment import Augmentation, augmentation_generator
from heldout.core.technique import Technique
from heldout.engine.trainer import Trainer
from heldout.tasks.base import Split


@dataclass
class Jitter(Augmentation):
    """Adds Gaussian noise of std ``sigma``; records what it saw."""

    sigma: float = 0.5

    def __post_init__(self) -> None:
        self.seen: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def augment(self, x, y, generator, groups=None):
        self.seen.append((x.clone(), groups))
        return x + self.sigma * torch.randn(x.shape, generator=generator, device=x.device), y


@dataclass
class FirstFour(Technique):
    """Selects the first four examples of every batch (a batch-selecting technique)."""

    touches = frozenset({"batch"})

    def on_batch_start(self, state):
        x, y, index = state.batch
        state.batch = (x[:4], y[:4], index[:4])


def data(n: int = 40) -> Split:
    g = torch.Generator().manual_seed(0)
    return Split(torch.randn(n, 5, generator=g), torch.arange(n) % 3, groups=torch.arange(n) % 2)


def trainer(techniques, max_steps=10, path=None, checkpoint_every=None) -> Trainer:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    return Trainer(model, lambda p: torch.optim.SGD(p, lr=0.1), data(), max_steps=max_steps,
                   batch_size=8, techniques=techniques, measures=[], eval_every=100,
                   checkpoint_every=checkpoint_every, checkpoint_path=path, seed=3)


def test_augmentation_acts_after_batch_selection_and_sees_the_domains():
    jitter = Jitter()
    t = trainer([jitter, FirstFour()], max_steps=3)  # listed first, still applied last
    t.fit()
    assert len(jitter.seen) == 3
    for x, groups in jitter.seen:
        assert len(x) == 4 and groups is not None and len(groups) == 4
    # the groups are those of the batch's examples
    split = data()
    x0, groups0 = jitter.seen[0]
    rows = [int((split.x == row).all(dim=1).nonzero()) for row in x0]
    assert groups0.tolist() == split.groups[rows].tolist()


def test_a_resumed_run_draws_the_same_augmentations(tmp_path):
    straight = trainer([Jitter()], max_steps=10)
    straight.fit()
    path = tmp_path / "ckpt.pt"
    trainer([Jitter()], max_steps=5, path=path, checkpoint_every=5).fit()
    resumed = trainer([Jitter()], max_steps=10, path=path, checkpoint_every=5)
    assert resumed.resume() == 5
    resumed.fit()
    for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    # and the augmentation did change training
    plain = trainer([], max_steps=10)
    plain.fit()
    assert not torch.equal(next(plain.model.parameters()), next(straight.model.parameters()))


def test_plain_loop_call_is_seeded():
    x, y = torch.zeros(6, 5), torch.zeros(6, dtype=torch.long)
    jitter = Jitter(sigma=1.0)
    a, _ = jitter(x, y, seed=1)
    b, _ = jitter(x, y, seed=1)
    c, _ = jitter(x, y, generator=augmentation_generator(1, "x", 0))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.std() > 0.5
