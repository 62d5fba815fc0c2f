"""The timing plumbing every benchmark in ``bench/`` shares.

These machines are noisy (a shared 2-core CPU, other jobs running), so no benchmark reports an
absolute time: each measures its baseline in the same run, interleaves the sides, and reports
the ratio per round, then the median (with min and max) over rounds. The pieces:

* :func:`clock` / :func:`elapsed` / :func:`timed`: wall and process CPU seconds together (with
  one torch thread, CPU time ignores the time a process waits for a shared core);
* :func:`rotated` / :func:`rotations` / :func:`interleave`: each round runs every side once,
  the order rotated by one each round (with two sides: alternating which goes first);
* :func:`interleave_steps`: the same at the grain of single optimizer steps, with
  :func:`closure_step` as the step of an optimizer (or optimizer wrapper) side;
* :func:`ratios` and :class:`Spread`: per-round ratios and their median, min and max;
* :func:`ratio_table`: the table of sides against a baseline;
* :func:`make_parser` / :func:`parse`: the shared options (``--threads``, ``--rounds``, ``--seed``);
  parsing sets the torch thread count.

A script keeps only what it measures: its setting, its sides and its check that the sides did
the same work.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

T = TypeVar("T")
K = TypeVar("K")

THREADS_HELP = "torch threads (1: stable under load on a shared 2-core machine)"


# ----------------------------------------------------------------------------- clocks
class Seconds(NamedTuple):
    """Wall-clock and process CPU seconds: a clock reading or a duration."""

    wall: float
    cpu: float


def clock() -> Seconds:
    """(wall, process CPU) seconds now; with one torch thread CPU time ignores time
    descheduled."""
    return Seconds(time.perf_counter(), time.process_time())


def elapsed(start: Seconds) -> Seconds:
    """Wall and CPU seconds since ``start`` (a :func:`clock` reading)."""
    wall, cpu = clock()
    return Seconds(wall - start.wall, cpu - start.cpu)


def timed(fn: Callable[[], T]) -> tuple[Seconds, T]:
    """Call ``fn`` once; its wall and CPU seconds and its value."""
    start = clock()
    value = fn()
    return elapsed(start), value


# ----------------------------------------------------------------------------- order
def rotated(names: Sequence[K], shift: int) -> list[K]:
    """``names`` rotated left by ``shift`` (mod its length): who goes first in round ``shift``."""
    shift %= len(names)
    return [*names[shift:], *names[:shift]]


def rotations(names: Iterable[K], rounds: int) -> Iterator[tuple[int, list[K]]]:
    """(round index, order of the sides) for each round, the order rotating each round."""
    names = list(names)
    for r in range(rounds):
        yield r, rotated(names, r)


def interleave(
    sides: Mapping[str, Callable[[], T]], rounds: int
) -> Iterator[tuple[int, dict[str, T]]]:
    """Run every side once per round in rotating order; yield (round, outputs by side, in the
    order of ``sides``), so a script can print each round as it ends."""
    for r, order in rotations(sides, rounds):
        out = {name: sides[name]() for name in order}
        yield r, {name: out[name] for name in sides}


def time_rounds(sides: Mapping[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Wall seconds of each side, per round, the sides run in rotating order."""
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _, out in interleave({name: (lambda fn=fn: timed(fn)[0].wall)
                              for name, fn in sides.items()}, rounds):
        for name, seconds in out.items():
            times[name].append(seconds)
    return times


def interleave_steps(
    sides: Mapping[str, Callable[..., None]],
    batches: Sequence[tuple],
    steps: int,
    rounds: int,
    warmup: int = 3,
) -> dict[str, list[float]]:
    """Mean wall seconds per step of each side, per round, steps interleaved one by one.

    Each side is a step function called with the unpacked batch. After ``warmup`` untimed
    steps per side, every round runs ``steps`` steps per side on the batch sequence (cycled);
    the order of the sides rotates each step, so load from other processes hits all alike.
    """
    names = list(sides)
    for i in range(warmup):
        for name in names:
            sides[name](*batches[i % len(batches)])
    per_round: dict[str, list[float]] = {name: [] for name in names}
    cursor = 0
    for _ in range(rounds):
        totals = dict.fromkeys(names, 0.0)
        for _, order in rotations(names, steps):
            batch = batches[cursor % len(batches)]
            cursor += 1
            for name in order:
                start = time.perf_counter()
                sides[name](*batch)
                totals[name] += time.perf_counter() - start
        for name in names:
            per_round[name].append(totals[name] / steps)
    return per_round


def closure_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    *,
    two_passes: bool = False,
    after_backward: Callable[[Tensor, Tensor], None] | None = None,
) -> Callable[[Tensor, Tensor], None]:
    """A step function for :func:`interleave_steps`: ``opt.step(closure)`` with a closure that
    zeroes the gradients, back-propagates the batch's mean cross-entropy and then calls
    ``after_backward(x, y)`` if given. ``two_passes``: the closure twice, then a plain
    ``opt.step()`` (the floor of a two-pass wrapper such as SAM, without its arithmetic)."""
    batch: list = [None]  # the current (x, y)

    def closure() -> Tensor:
        opt.zero_grad(set_to_none=True)
        x, y = batch[0]
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        if after_backward is not None:
            after_backward(x, y)
        return loss

    def step(x: Tensor, y: Tensor) -> None:
        batch[0] = (x, y)
        if two_passes:
            closure()
            closure()
            opt.step()
        else:
            opt.step(closure)

    return step


# ----------------------------------------------------------------------------- figures
def ratios(numerator: Sequence[float], denominator: Sequence[float]) -> list[float]:
    """Round-by-round ratios of two sides' figures (same number of rounds)."""
    return [a / b for a, b in zip(numerator, denominator, strict=True)]


@dataclass(frozen=True)
class Spread:
    """Median, min and max of per-round figures."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread:
        values = list(values)
        return cls(statistics.median(values), min(values), max(values))

    def text(self, digits: int = 3) -> str:
        """``median M (min A, max B)``."""
        return (f"median {self.median:.{digits}f} (min {self.low:.{digits}f}, "
                f"max {self.high:.{digits}f})")


def ratio_table(
    seconds: Mapping[str, Sequence[float]],
    baseline: Sequence[float],
    *,
    width: int,
    unit: str = "ms/step",
    digits: int = 3,
    ms_digits: int = 3,
) -> dict[str, Spread]:
    """Print one row per side: its median milliseconds and its ratio to ``baseline`` round by
    round (median, min, max); return the ratios' spreads."""
    print(f"{'side':>{width}} {unit:>9} {'ratio median':>13} {'min':>7} {'max':>7}")
    spreads = {}
    for name, per_round in seconds.items():
        spread = spreads[name] = Spread.of(ratios(per_round, baseline))
        print(f"{name:>{width}} {1e3 * statistics.median(per_round):>9.{ms_digits}f} "
              f"{spread.median:>13.{digits}f} {spread.low:>7.{digits}f} "
              f"{spread.high:>7.{digits}f}")
    return spreads


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    """Whether two models hold identical tensors (``torch.equal``) under the same names."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ----------------------------------------------------------------------------- command line
def make_parser(doc: str, *, rounds: int | None = None, seed: bool = False,
           threads: bool = True) -> argparse.ArgumentParser:
    """An argument parser described by the first paragraph of ``doc``, with ``--threads``
    (default 1), ``--rounds`` when a default is given and ``--seed`` (default 0) if asked."""
    out = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    if rounds is not None:
        out.add_argument("--rounds", type=int, default=rounds,
                         help=f"rounds, sides interleaved; medians over them (default {rounds})")
    if seed:
        out.add_argument("--seed", type=int, default=0)
    if threads:
        out.add_argument("--threads", type=int, default=1, help=THREADS_HELP)
    return out


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line and set torch's thread count from ``--threads`` if present."""
    args = parser.parse_args(argv)
    if hasattr(args, "threads"):
        torch.set_num_threads(args.threads)
    return args


def torch_setting() -> str:
    """``torch <version>, <n> threads``: the line each script starts its output with."""
    return f"torch {torch.__version__}, {torch.get_num_threads()} threads"
