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

import statistics
from collections.abc import Callable

import torch
from torch import nn

from harness import (
    Seconds,
    Spread,
    clock,
    elapsed,
    interleave,
    make_parser,
    parse,
    ratios,
    same_weights,
    timed,
    torch_setting,
)
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
        seed: int) -> tuple[Seconds, nn.Module]:
    model = make_model(seed)
    trainer = Trainer(model, lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9), data,
                      max_steps=steps, batch_size=128, eval_every=steps, eval_data={},
                      measures=[], techniques=SIDES[side](), seed=seed)
    return timed(trainer.fit)[0], model


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
            start = clock()
            for _ in range(calls):
                average.update(model)
            per_round.append(elapsed(start).cpu / calls * 1e6)
        out[name] = statistics.median(per_round)
    return out


def main() -> None:
    parser = make_parser(__doc__, rounds=9, seed=True)
    parser.add_argument("--steps", type=int, default=300)
    args = parse(parser)
    data = make_data(args.seed)
    names = list(SIDES)
    print(f"{torch_setting()}; MLP 40-256-256-10, batch 128, {args.steps} steps x "
          f"{args.rounds} rounds")
    for name in names:  # warm-up
        run(name, data, min(30, args.steps), args.seed)
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    same = {n: True for n in names}
    sides = {name: (lambda name=name: run(name, data, args.steps, args.seed)) for name in names}
    for _, out in interleave(sides, args.rounds):
        for name, ((wall, proc), model) in out.items():
            times[name].append(wall)
            cpu[name].append(proc)
            same[name] &= same_weights(model, out["plain"][1])
    print(f"{'side':>10} {'ms/step':>8} {'ratio med':>9} {'min':>6} {'max':>6} {'cpu ratio':>9}"
          "  raw weights")
    wall_ratios = {n: Spread.of(ratios(times[n], times["plain"])) for n in names}
    cpu_ratios = {n: statistics.median(ratios(cpu[n], cpu["plain"])) for n in names}
    for name, spread in wall_ratios.items():
        ms = 1e3 * statistics.median(times[name]) / args.steps
        print(f"{name:>10} {ms:>8.3f} {spread.median:>9.3f} {spread.low:>6.3f} "
              f"{spread.high:>6.3f} {cpu_ratios[name]:>9.3f}  "
              f"{'equal' if same[name] else 'DIFFER'}")
    if not all(same.values()):
        print("WARNING: a technique changed the training trajectory")
    ratio = {n: spread.median for n, spread in wall_ratios.items()}
    plain_ms = 1e3 * statistics.median(times["plain"]) / args.steps
    plain_cpu_us = 1e6 * statistics.median(cpu["plain"]) / args.steps
    updates = update_cost(args.rounds)
    print("averaging update alone: " + ", ".join(
        f"{k} {v:.0f} us ({100 * v / plain_cpu_us:.1f}% of a plain step's CPU time)"
        for k, v in updates.items()))
    worst = max(("swa/step", "gaussian"), key=ratio.__getitem__)
    print(f"RESULT averaging_cost ratio={ratio[worst]:.2f} (goal <= {GOAL}) [worst: {worst}; "
          f"wall: swa/step {ratio['swa/step']:.3f}, swa/epoch {ratio['swa/epoch']:.3f}, "
          f"gaussian {ratio['gaussian']:.3f}; cpu: swa/step {cpu_ratios['swa/step']:.3f}, "
          f"gaussian {cpu_ratios['gaussian']:.3f}; plain {plain_ms:.3f} ms/step; update: "
          f"swa {updates['swa']:.0f} us, gaussian {updates['gaussian']:.0f} us]")


if __name__ == "__main__":
    main()
