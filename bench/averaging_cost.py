"""Per-step cost of the weight-averaging techniques against a plain Trainer step.

Setting: MLP 40-256-256-10 (ReLU, no BatchNorm), random inputs (2560 x 40, 10 classes),
minibatches of 128 (20 steps per epoch), SGD lr 0.05 with momentum 0.9, float32, one torch
thread. Each side is ``Trainer.fit()`` for ``--steps`` steps with no measures and no
evaluation data, so the timed work is the step plus the technique's hooks:

* ``plain``: no technique (the baseline, measured in the same run);
* ``swa/step``: SWA averaging after every step from the first (``start_fraction=0, every=1``),
  the worst case;
* ``swa/epoch``: SWA's default cadence, one point per epoch, from the first step;
* ``gaussian``: Gaussian averaging of every step (``every=1``, its default).

The techniques must not change training: every side must end with the raw weights of the
plain side (``torch.equal``); the check is printed. Rounds interleave the sides, rotating
which goes first. Ratio = side time / plain time in the same round; the table gives the
median over rounds (min and max too), for wall time and for process CPU time (with one thread
CPU time ignores the time the process waits for a shared core, so it is the steadier one).
The averaging update alone (``StochasticWeightAverage.update``,
``GaussianTrajectoryAverage.update`` on the same model) is also timed, as the floor of the
overhead. The RESULT line reports the worse of the two per-step averaging sides.

Run: ``PYTHONPATH=src .venv/bin/python bench/averaging_cost.py [--steps 300 --rounds 9]``
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from heldout.engine.trainer import Trainer
from heldout.methods.averaging import (
    SWA,
    GaussianAveraging,
    GaussianTrajectoryAverage,
    StochasticWeightAverage,
)

GOAL = 1.10  # "essentially no overhead" (Izmailov et al.): one in-place lerp per step


def make_data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(2560, 40, generator=gen), torch.randint(0, 10, (2560,), generator=gen)


def make_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(40, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                         nn.Linear(256, 10))


SIDES: dict[str, Callable[[], list]] = {
    "plain": lambda: [],
    "swa/step": lambda: [SWA(start_fraction=0.0, every=1)],
    "swa/epoch": lambda: [SWA(start_fraction=0.0)],
    "gaussian": lambda: [GaussianAveraging(every=1)],
}


def run(side: str, data: tuple[torch.Tensor, torch.Tensor], steps: int,
        seed: int) -> tuple[float, float, nn.Module]:
    model = make_model(seed)
    trainer = Trainer(model, lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9), data,
                      max_steps=steps, batch_size=128, eval_every=steps, eval_data={},
                      measures=[], techniques=SIDES[side](), seed=seed)
    wall, cpu = time.perf_counter(), time.process_time()
    trainer.fit()
    return time.perf_counter() - wall, time.process_time() - cpu, model


def update_cost(rounds: int, calls: int = 500) -> dict[str, float]:
    """Median CPU microseconds of one averaging update on the benchmark's model."""
    model = make_model(0)
    averages = {"swa": StochasticWeightAverage(model),
                "gaussian": GaussianTrajectoryAverage(model, num_points=10 * calls * rounds)}
    out = {}
    for name, average in averages.items():
        average.update(model)
        per_round = []
        for _ in range(rounds):
            start = time.process_time()
            for _ in range(calls):
                average.update(model)
            per_round.append((time.process_time() - start) / calls * 1e6)
        out[name] = statistics.median(per_round)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: stable under load on a shared 2-core machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = make_data(args.seed)
    names = list(SIDES)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); MLP 40-256-256-10, "
          f"batch 128, {args.steps} steps x {args.rounds} rounds")
    for name in names:  # warm-up
        run(name, data, min(30, args.steps), args.seed)
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    same = {n: True for n in names}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        models = {}
        for name in order:
            wall, proc, models[name] = run(name, data, args.steps, args.seed)
            times[name].append(wall)
            cpu[name].append(proc)
        reference = models["plain"].state_dict()
        for name in names:
            state = models[name].state_dict()
            same[name] &= all(torch.equal(state[k], reference[k]) for k in reference)
    print(f"{'side':>10} {'ms/step':>8} {'ratio med':>9} {'min':>6} {'max':>6} {'cpu ratio':>9}"
          "  raw weights")
    ratios = {}
    for name in names:
        per_round = [t / p for t, p in zip(times[name], times["plain"], strict=True)]
        cpu_round = [t / p for t, p in zip(cpu[name], cpu["plain"], strict=True)]
        ratios[name] = statistics.median(per_round)
        ms = 1e3 * statistics.median(times[name]) / args.steps
        print(f"{name:>10} {ms:>8.3f} {ratios[name]:>9.3f} {min(per_round):>6.3f} "
              f"{max(per_round):>6.3f} {statistics.median(cpu_round):>9.3f}  "
              f"{'equal' if same[name] else 'DIFFER'}")
    if not all(same.values()):
        print("WARNING: a technique changed the training trajectory")
    plain_ms = 1e3 * statistics.median(times["plain"]) / args.steps
    plain_cpu_us = 1e6 * statistics.median(cpu["plain"]) / args.steps
    updates = update_cost(args.rounds)
    print("averaging update alone: " + ", ".join(
        f"{k} {v:.0f} us ({100 * v / plain_cpu_us:.1f}% of a plain step's CPU time)"
        for k, v in updates.items()))
    cpu_ratios = {n: statistics.median([t / p for t, p in zip(cpu[n], cpu["plain"],
                                                               strict=True)]) for n in names}
    worst = max(("swa/step", "gaussian"), key=ratios.__getitem__)
    print(f"RESULT averaging_cost ratio={ratios[worst]:.2f} (goal <= {GOAL}) [worst: {worst}; "
          f"wall: swa/step {ratios['swa/step']:.3f}, swa/epoch {ratios['swa/epoch']:.3f}, "
          f"gaussian {ratios['gaussian']:.3f}; cpu: swa/step {cpu_ratios['swa/step']:.3f}, "
          f"gaussian {cpu_ratios['gaussian']:.3f}; plain {plain_ms:.3f} ms/step; update: "
          f"swa {updates['swa']:.0f} us, gaussian {updates['gaussian']:.0f} us]")


if __name__ == "__main__":
    main()
