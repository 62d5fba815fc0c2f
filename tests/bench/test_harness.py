"""The pure parts of the bench scripts' timing harness (``bench/harness.py``), on a fake clock:
nothing real is timed."""

from __future__ import annotations

import copy
import importlib.util
import itertools
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "bench" / "harness.py").is_file())
_spec = importlib.util.spec_from_file_location("bench_harness", ROOT / "bench" / "harness.py")
harness = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)


class FakeClock:
    """perf_counter / process_time that only move when a side says so."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0

    def spend(self, wall: float, cpu: float | None = None) -> None:
        self.wall += wall
        self.cpu += wall if cpu is None else cpu


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    clock = FakeClock()
    monkeypatch.setattr(harness.time, "perf_counter", lambda: clock.wall)
    monkeypatch.setattr(harness.time, "process_time", lambda: clock.cpu)
    return clock


def test_two_sides_alternate_which_goes_first() -> None:
    orders = [order for _, order in harness.rotations(["heldout", "baseline"], 4)]
    assert orders == [["heldout", "baseline"], ["baseline", "heldout"]] * 2


def test_more_sides_rotate_by_one_each_round() -> None:
    orders = [order for _, order in harness.rotations("abc", 4)]
    assert orders == [list("abc"), list("bca"), list("cab"), list("abc")]
    assert harness.rotated(["a", "b", "c"], 5) == ["c", "a", "b"]


def test_interleave_runs_each_side_once_per_round_in_rotating_order() -> None:
    calls: list[str] = []
    counter = itertools.count()
    sides = {name: (lambda name=name: calls.append(name) or next(counter)) for name in "xyz"}
    rounds = list(harness.interleave(sides, 3))
    assert calls == list("xyz") + list("yzx") + list("zxy")
    assert [r for r, _ in rounds] == [0, 1, 2]
    # outputs come back keyed in the declared order, whatever order they ran in
    assert [list(out) for _, out in rounds] == [list("xyz")] * 3
    assert rounds[1][1] == {"y": 3, "z": 4, "x": 5}


def test_timed_and_elapsed_read_wall_and_cpu(fake_clock: FakeClock) -> None:
    spent, value = harness.timed(lambda: fake_clock.spend(2.0, cpu=0.5) or "done")
    assert spent == harness.Seconds(wall=2.0, cpu=0.5)
    assert value == "done"
    start = harness.clock()
    fake_clock.spend(1.5, cpu=1.0)
    assert harness.elapsed(start) == (1.5, 1.0)


def test_time_rounds_gives_each_sides_seconds_per_round(fake_clock: FakeClock) -> None:
    cost = {"loop": iter([4.0, 5.0, 6.0]), "func": iter([2.0, 2.5, 1.0])}
    sides = {name: (lambda name=name: fake_clock.spend(next(cost[name]))) for name in cost}
    times = harness.time_rounds(sides, 3)
    assert times == {"loop": [4.0, 5.0, 6.0], "func": [2.0, 2.5, 1.0]}
    assert harness.Spread.of(harness.ratios(times["loop"], times["func"])).median == 2.0


def test_interleave_steps_rotates_per_step_and_averages_per_round(fake_clock: FakeClock) -> None:
    calls: list[tuple[str, int]] = []
    per_call = {"plain": 1.0, "sam": 2.0, "floor": 1.5}

    def side(name: str):
        def step(batch_id: int) -> None:
            calls.append((name, batch_id))
            fake_clock.spend(per_call[name])

        return step

    batches = [(0,), (1,), (2,)]
    per_round = harness.interleave_steps({n: side(n) for n in per_call}, batches, steps=4,
                                         rounds=2, warmup=1)
    assert per_round == {"plain": [1.0, 1.0], "sam": [2.0, 2.0], "floor": [1.5, 1.5]}
    warmup, timed = calls[:3], calls[3:]
    assert warmup == [("plain", 0), ("sam", 0), ("floor", 0)]
    assert len(timed) == 2 * 4 * 3
    first_of_each_step = [name for name, _ in timed[::3]]
    assert first_of_each_step == ["plain", "sam", "floor", "plain"] * 2
    # the batch sequence is cycled across steps and rounds, the same batch for every side
    assert [batch for _, batch in timed[::3]] == [0, 1, 2, 0, 1, 2, 0, 1]
    assert all(len({b for _, b in timed[i:i + 3]}) == 1 for i in range(0, len(timed), 3))


def test_ratios_and_spread_of_known_timings() -> None:
    r = harness.ratios([2.0, 6.0, 3.0, 10.0], [1.0, 2.0, 3.0, 4.0])
    assert r == [2.0, 3.0, 1.0, 2.5]
    spread = harness.Spread.of(r)
    assert (spread.median, spread.low, spread.high) == (2.25, 1.0, 3.0)
    assert spread.text() == "median 2.250 (min 1.000, max 3.000)"
    assert spread.text(1) == "median 2.2 (min 1.0, max 3.0)"
    with pytest.raises(ValueError):
        harness.ratios([1.0, 2.0], [1.0])  # rounds must pair up


def test_ratio_table_prints_each_side_against_the_baseline(capsys) -> None:
    seconds = {"plain": [0.001, 0.002, 0.003], "sam": [0.002, 0.005, 0.006]}
    spreads = harness.ratio_table(seconds, seconds["plain"], width=6)
    assert spreads["plain"] == harness.Spread(1.0, 1.0, 1.0)
    assert spreads["sam"] == harness.Spread(2.0, 2.0, 2.5)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["side", "ms/step", "ratio", "median", "min", "max"]
    assert lines[2].split() == ["sam", "5.000", "2.000", "2.000", "2.500"]


def test_closure_step_runs_the_closure_once_or_twice() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    forwards: list[int] = []
    model.register_forward_hook(lambda *_: forwards.append(1))
    seen: list[torch.Tensor] = []
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 1, 0])
    before = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    harness.closure_step(model, opt, after_backward=lambda xb, yb: seen.append(xb))(x, y)
    assert len(forwards) == 1 and len(seen) == 1 and seen[0] is x
    assert not harness.same_weights(model, before)  # one SGD step moved the weights
    harness.closure_step(model, opt, two_passes=True)(x, y)
    assert len(forwards) == 3


def test_same_weights() -> None:
    torch.manual_seed(0)
    a = nn.Linear(3, 2)
    b = copy.deepcopy(a)
    assert harness.same_weights(a, b)
    with torch.no_grad():
        b.bias[0] += 1e-6
    assert not harness.same_weights(a, b)
    assert not harness.same_weights(a, nn.Sequential(a))  # other names


def test_shared_options_and_threads() -> None:
    threads = torch.get_num_threads()
    try:
        parser = harness.make_parser("Title line.\n\nDetails.", rounds=5, seed=True)
        args = harness.parse(parser, ["--rounds", "2", "--threads", "1"])
        assert (args.rounds, args.seed, args.threads) == (2, 0, 1)
        assert torch.get_num_threads() == 1
        assert parser.description == "Title line."
        bare = harness.parse(harness.make_parser("Doc.", threads=False), [])
        assert vars(bare) == {}
    finally:
        torch.set_num_threads(threads)
