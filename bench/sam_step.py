"""SAM step cost: one SAM step (SAM around SGD, ``step(closure)``) against one plain SGD step with
the same closure.

Settings:
  (a) the grokking MLP: (a + b) mod 113, bias-free MLP 200-200 (heldout.models), full batch
      (5108 rows);
  (b) a small MLP 100-100 with BatchNorm1d on MNIST-1D-like random data (4000 x 40 features,
      10 classes), minibatches of 128, with SAM's BatchNorm handling on (``model=``).

SAM runs two forward-backward passes per step, so 2x is the floor; the table also shows that
floor measured directly (the closure called twice, then one SGD step) and, in (b), SAM with the
BatchNorm handling off, to separate the wrapper's own cost from the second pass.

Every side trains its own copy of the same initial model on the same batch sequence. Steps are
interleaved one by one (the order of the sides rotates each step) so that load from other
processes hits all sides alike; each round sums ``--steps-*`` steps per side. Ratio = SAM step
time / plain SGD step time (goal <= 2.1).

Run: ``PYTHONPATH=src .venv/bin/python bench/sam_step.py [--rounds 5]``
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heldout.core.inputs import InputSpec
from heldout.methods import SAM
from heldout.models import MLP
from heldout.tasks.modular import ModularArithmetic

GOAL = 2.1
Step = Callable[[Tensor, Tensor], None]


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def make_closure(model: nn.Module, opt: torch.optim.Optimizer, batch: list) -> Callable:
    def closure() -> Tensor:
        opt.zero_grad(set_to_none=True)
        x, y = batch[0]
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return closure


def plain_side(model: nn.Module) -> Step:
    opt = sgd(model)
    batch: list = [None]
    closure = make_closure(model, opt, batch)

    def step(x: Tensor, y: Tensor) -> None:
        batch[0] = (x, y)
        opt.step(closure)

    return step


def sam_side(model: nn.Module, bn_handling: bool, rho: float) -> Step:
    opt = SAM(sgd(model), rho=rho, model=model if bn_handling else None)
    batch: list = [None]
    closure = make_closure(model, opt, batch)

    def step(x: Tensor, y: Tensor) -> None:
        batch[0] = (x, y)
        opt.step(closure)

    return step


def floor_side(model: nn.Module) -> Step:
    """Two passes and one SGD step, no SAM arithmetic: the floor SAM is measured against."""
    opt = sgd(model)
    batch: list = [None]
    closure = make_closure(model, opt, batch)

    def step(x: Tensor, y: Tensor) -> None:
        batch[0] = (x, y)
        closure()
        closure()
        opt.step()

    return step


def bench_setting(
    label: str,
    model: nn.Module,
    batches: list[tuple[Tensor, Tensor]],
    steps: int,
    rounds: int,
    rho: float,
    extra_bn_off: bool,
) -> float:
    builders: dict[str, Callable[[nn.Module], Step]] = {
        "plain": plain_side,
        "sam": lambda m: sam_side(m, True, rho),
        "2 passes": floor_side,
    }
    if extra_bn_off:
        builders["sam, BN off"] = lambda m: sam_side(m, False, rho)
    sides = {name: build(copy.deepcopy(model)) for name, build in builders.items()}
    names = list(sides)
    for i in range(3):  # warm-up
        for name in names:
            sides[name](*batches[i % len(batches)])
    per_round: dict[str, list[float]] = {name: [] for name in names}
    cursor = 0
    for _ in range(rounds):
        totals = dict.fromkeys(names, 0.0)
        for i in range(steps):
            x, y = batches[cursor % len(batches)]
            cursor += 1
            shift = i % len(names)
            for name in names[shift:] + names[:shift]:
                start = time.perf_counter()
                sides[name](x, y)
                totals[name] += time.perf_counter() - start
        for name in names:
            per_round[name].append(totals[name] / steps)
    print(f"\n[{label}] {rounds} rounds x {steps} steps per side, batch {len(batches[0][1])}")
    print(f"{'side':>12} {'ms/step':>9} {'ratio median':>13} {'min':>7} {'max':>7}")
    ratios = {}
    for name in names:
        r = [a / b for a, b in zip(per_round[name], per_round["plain"], strict=True)]
        ratios[name] = r
        print(f"{name:>12} {1e3 * statistics.median(per_round[name]):>9.3f} "
              f"{statistics.median(r):>13.3f} {min(r):>7.3f} {max(r):>7.3f}")
    over_floor = statistics.median(
        a / b for a, b in zip(per_round["sam"], per_round["2 passes"], strict=True))
    print(f"[{label}] SAM / plain SGD: median {statistics.median(ratios['sam']):.3f} "
          f"(min {min(ratios['sam']):.3f}, max {max(ratios['sam']):.3f}); "
          f"SAM / two-pass floor: {over_floor:.3f}")
    return statistics.median(ratios["sam"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps-a", type=int, default=20, help="steps per side per round, (a)")
    parser.add_argument("--steps-b", type=int, default=300, help="steps per side per round, (b)")
    parser.add_argument("--p", type=int, default=113)
    parser.add_argument("--n", type=int, default=4000, help="(b) examples")
    parser.add_argument("--features", type=int, default=40, help="(b) input features")
    parser.add_argument("--batch-size", type=int, default=128, help="(b) minibatch")
    parser.add_argument("--rho", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: stable under load on a shared 2-core machine)")
    parser.add_argument("--setting", choices=["a", "b", "both"], default="both")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    results = {}

    if args.setting in ("a", "both"):
        splits = ModularArithmetic(p=args.p, train_fraction=0.4).splits(args.seed)
        torch.manual_seed(args.seed)
        model = MLP(hidden=(200, 200), bias=False).build(splits.input, splits.num_classes)
        batches = [(splits.train.x, splits.train.y)]
        results["a"] = bench_setting(f"(a) MLP 200-200, (a+b) mod {args.p}, full batch", model,
                                     batches, args.steps_a, args.rounds, args.rho, False)

    if args.setting in ("b", "both"):
        gen = torch.Generator().manual_seed(args.seed)
        x = torch.randn(args.n, args.features, generator=gen)
        y = torch.randint(0, 10, (args.n,), generator=gen)
        torch.manual_seed(args.seed)
        model = MLP(hidden=(100, 100), batch_norm=True).build(
            InputSpec("continuous", (args.features,)), 10)
        order = torch.randperm(args.n, generator=gen)
        batches = [(x[idx], y[idx]) for idx in order.split(args.batch_size)
                   if len(idx) == args.batch_size]
        results["b"] = bench_setting(
            f"(b) MLP 100-100 + BatchNorm, {args.n}x{args.features} random data", model,
            batches, args.steps_b, args.rounds, args.rho, True)

    worst = max(results, key=results.__getitem__)
    print("\nmedian SAM/SGD ratios: " + ", ".join(f"({k}) {v:.3f}" for k, v in results.items()))
    print(f"RESULT sam_step ratio={results[worst]:.2f} (goal <= {GOAL}) [worst: ({worst})]")


if __name__ == "__main__":
    main()
