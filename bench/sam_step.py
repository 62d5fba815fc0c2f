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

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

from harness import (
    Spread,
    closure_step,
    interleave_steps,
    make_parser,
    parse,
    ratio_table,
    ratios,
    torch_setting,
)
from heldout.core.inputs import InputSpec
from heldout.methods import SAM
from heldout.models import MLP
from heldout.tasks.modular import ModularArithmetic

GOAL = 2.1
Step = Callable[[Tensor, Tensor], None]


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


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
        "plain": lambda m: closure_step(m, sgd(m)),
        "sam": lambda m: closure_step(m, SAM(sgd(m), rho=rho, model=m)),
        "2 passes": lambda m: closure_step(m, sgd(m), two_passes=True),
    }
    if extra_bn_off:
        builders["sam, BN off"] = lambda m: closure_step(m, SAM(sgd(m), rho=rho))
    sides = {name: build(copy.deepcopy(model)) for name, build in builders.items()}
    per_round = interleave_steps(sides, batches, steps, rounds)
    print(f"\n[{label}] {rounds} rounds x {steps} steps per side, batch {len(batches[0][1])}")
    sam = ratio_table(per_round, per_round["plain"], width=12)["sam"]
    over_floor = Spread.of(ratios(per_round["sam"], per_round["2 passes"])).median
    print(f"[{label}] SAM / plain SGD: {sam.text()}; SAM / two-pass floor: {over_floor:.3f}")
    return sam.median


def main() -> None:
    parser = make_parser(__doc__, rounds=5, seed=True)
    parser.add_argument("--steps-a", type=int, default=20, help="steps per side per round, (a)")
    parser.add_argument("--steps-b", type=int, default=300, help="steps per side per round, (b)")
    parser.add_argument("--p", type=int, default=113)
    parser.add_argument("--n", type=int, default=4000, help="(b) examples")
    parser.add_argument("--features", type=int, default=40, help="(b) input features")
    parser.add_argument("--batch-size", type=int, default=128, help="(b) minibatch")
    parser.add_argument("--rho", type=float, default=0.05)
    parser.add_argument("--setting", choices=["a", "b", "both"], default="both")
    args = parse(parser)
    print(torch_setting())
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
