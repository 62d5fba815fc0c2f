"""The Trainer: same numbers as a hand loop, events in order, conflicts refused, resume, NaN."""

import copy
import math
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from heldout.engine import CombinationError, NonFiniteLossError, Technique, Trainer
from heldout.measures import Accuracy, Loss
from heldout.methods import EMA, GhostBN, LabelSmoothing, SharpnessAware, StableMax


def _data(n=64, d=5, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, k, (n,), generator=g)


def _model(seed=0, d=5, k=3, bn=False):
    torch.manual_seed(seed)
    layers = [nn.Linear(d, 16)] + ([nn.BatchNorm1d(16)] if bn else []) + [nn.ReLU(),
                                                                          nn.Linear(16, k)]
    return nn.Sequential(*layers)


def test_trainer_matches_a_hand_loop_full_batch():
    x, y = _data()
    hand = _model()
    opt = torch.optim.AdamW(hand.parameters(), lr=0.01)
    for _ in range(7):
        opt.zero_grad()
        F.cross_entropy(hand(x), y).backward()
        opt.step()
    model = _model()
    Trainer(model, torch.optim.AdamW(model.parameters(), lr=0.01), (x, y), max_steps=7,
            eval_data={"train": (x, y)}).fit()
    for a, b in zip(model.parameters(), hand.parameters(), strict=True):
        assert torch.equal(a, b)


def test_trainer_matches_a_hand_loop_minibatches():
    x, y = _data(n=50)
    model = _model()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), (x, y), max_steps=9,
                      batch_size=16, seed=3)
    hand = _model()
    opt = torch.optim.SGD(hand.parameters(), lr=0.1)
    for epoch in range(3):  # 50 examples, batches 16/16/16/2: 4 per epoch, 9 steps
        gen = torch.Generator().manual_seed(3 * 1_000_003 + epoch)
        order = torch.randperm(50, generator=gen)
        for start in range(0, 50, 16):
            if epoch * 4 + start // 16 >= 9:
                break
            idx = order[start:start + 16]
            opt.zero_grad()
            F.cross_entropy(hand(x[idx]), y[idx]).backward()
            opt.step()
    trainer.fit()
    for a, b in zip(model.parameters(), hand.parameters(), strict=True):
        assert torch.equal(a, b)


@dataclass
class Recorder(Technique):
    tag: str = "r"
    log: list = field(default_factory=list)

    touches = frozenset({"after_step"})

    def on_fit_start(self, state):
        self.log.append(("fit_start", self.tag))

    def on_batch_start(self, state):
        self.log.append(("batch_start", self.tag))

    def on_after_backward(self, state):
        self.log.append(("after_backward", self.tag))

    def on_after_step(self, state):
        self.log.append(("after_step", self.tag))

    def on_eval(self, state, metrics):
        self.log.append(("eval", self.tag))

    def on_fit_end(self, state):
        self.log.append(("fit_end", self.tag))


def test_events_fire_in_documented_order():
    x, y = _data()
    log = []
    a, b = Recorder("a", log), Recorder("b", log)
    model = _model()
    Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), (x, y), max_steps=1,
            techniques=[a, b], eval_every=1, eval_data={"train": (x, y)}).fit()
    assert log == [
        ("fit_start", "a"), ("fit_start", "b"),
        ("eval", "b"), ("eval", "a"),  # the step-0 evaluation; "after" events run reversed
        ("batch_start", "a"), ("batch_start", "b"),
        ("after_backward", "a"), ("after_backward", "b"),
        ("after_step", "b"), ("after_step", "a"),
        ("eval", "b"), ("eval", "a"),
        ("fit_end", "b"), ("fit_end", "a"),
    ]


def test_sam_calls_the_closure_twice():
    x, y = _data()
    log = []
    model = _model()
    Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), (x, y), max_steps=1,
            techniques=[Recorder("a", log), SharpnessAware()]).fit()
    assert [e for e in log if e[0] == "after_backward"] == [("after_backward", "a")] * 2


@pytest.mark.parametrize("pair, part", [
    ((SharpnessAware(), SharpnessAware(rho=0.1)), "step"),
    ((StableMax(), LabelSmoothing()), "loss"),
    ((EMA(), EMA(decay=0.9)), "eval_model"),
])
def test_conflicting_techniques_are_refused_naming_both(pair, part):
    x, y = _data()
    model = _model()
    with pytest.raises(CombinationError) as err:
        Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), (x, y), max_steps=1,
                techniques=list(pair))
    message = str(err.value)
    assert pair[0].name in message and pair[1].name in message and part in message


def test_optimizer_factory_when_a_transform_replaces_parameters():
    @dataclass
    class Rebuild(Technique):
        touches = frozenset({"model"})

        def transform_model(self, model):
            return _model(seed=1)

    x, y = _data()
    model = _model()
    with pytest.raises(ValueError, match="optimizer factory"):
        Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), (x, y), max_steps=1,
                techniques=[Rebuild()])
    trainer = Trainer(model, lambda p: torch.optim.SGD(p, lr=0.1), (x, y), max_steps=2,
                      techniques=[Rebuild()])
    trainer.fit()
    assert trainer.state.step == 2


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path):
    x, y = _data()
    model = _model()
    ckpt = tmp_path / "ckpt.pt"

    class Poison(Technique):
        name = "poison"
        touches = frozenset({"loss"})

        def loss(self, logits, targets, state):
            loss = F.cross_entropy(logits, targets)
            return loss * math.nan if state.step == 5 else loss

    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), (x, y),
                      max_steps=10, techniques=[Poison()], checkpoint_every=2,
                      checkpoint_path=ckpt)
    with pytest.raises(NonFiniteLossError, match="at step 6"):
        trainer.fit()
    saved = torch.load(ckpt, weights_only=True)
    assert saved["step"] == 4
    assert all(torch.isfinite(v).all() for v in saved["model"].values())


def _fit_resumed(make, tmp_path, stop_at, total):
    """Train to ``stop_at`` (checkpointing), then resume in a fresh Trainer to ``total``."""
    first = make(tmp_path / "c.pt")
    first.state.max_steps = stop_at
    first.fit()
    second = make(tmp_path / "c.pt")
    assert second.resume() == stop_at
    second.fit()
    return second


@pytest.mark.parametrize("techniques", [
    [], [SharpnessAware()], [EMA(decay=0.9)], [GhostBN(ghost_batch_size=4)],
])
def test_resume_mid_run_matches_uninterrupted_with_tensor_minibatches(tmp_path, techniques):
    x, y = _data(n=40)

    def make(path):
        model = _model(bn=True)
        return Trainer(model, torch.optim.AdamW(model.parameters(), lr=0.01), (x, y),
                       max_steps=11, batch_size=8, eval_every=2, checkpoint_every=3,
                       checkpoint_path=path, techniques=copy.deepcopy(techniques),
                       eval_data={"train": (x, y)}, measures=[Accuracy(), Loss()], seed=5)

    straight = make(tmp_path / "straight.pt")
    straight.fit()
    resumed = _fit_resumed(make, tmp_path, 7, 11)  # mid-epoch: 5 batches per epoch
    assert resumed.history[-1] == straight.history[-1]
    for a, b in zip(resumed.model.state_dict().values(), straight.model.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)


def test_resume_with_a_shuffling_dataloader(tmp_path):
    x, y = _data(n=40)

    def make(path):
        torch.manual_seed(11)
        loader = DataLoader(TensorDataset(x, y), batch_size=6, shuffle=True)
        model = _model()
        return Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                       loader, max_steps=17, checkpoint_every=4, checkpoint_path=path)

    straight = make(tmp_path / "s.pt")
    straight.fit()
    resumed = _fit_resumed(make, tmp_path, 10, 17)  # 7 batches per epoch: mid second epoch
    for a, b in zip(resumed.model.parameters(), straight.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_checkpoint_loads_with_weights_only(tmp_path):
    x, y = _data()
    model = _model()
    trainer = Trainer(model, torch.optim.AdamW(model.parameters(), lr=0.01), (x, y),
                      max_steps=3, techniques=[SharpnessAware(), EMA()],
                      checkpoint_path=tmp_path / "c.pt")
    trainer.fit()
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    assert state["step"] == 3 and set(state["techniques"]) == {"sam", "ema"}
    assert state["optimizer"]["wrapper_type"] == "SAM"


def test_bad_training_data_is_refused_clearly():
    model = _model()
    with pytest.raises(TypeError, match="training data must be"):
        Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), "data.csv", max_steps=1)
    with pytest.raises(ValueError, match="same, non-zero number"):
        Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1),
                (torch.zeros(3, 5), torch.zeros(2)), max_steps=1)
