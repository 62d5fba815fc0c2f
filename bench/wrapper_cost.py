"""Per-step cost of ASAM, TRAM, UDIM and robust-mean gradients against a plain SGD step.

Setting: an MLP 40-256-256-10 (heldout.models.MLP, ReLU, no BatchNorm) on random data
(4000 x 40 features, 10 classes), minibatches of 128, SGD with momentum, one torch thread.

Sides (each trains its own copy of the same initial model on the same batch sequence):
  plain   the closure (forward, cross-entropy, backward), then SGD;
  asam    ASAM(rho=0.5, eta=0.01): two forward-backward passes;
  tram    TRAM(logit_scale=1, previous-iterate target): two passes + a no-grad target forward;
  udim    UDIM after its warm-up: a double-backward pass for the input perturbation and e, the
          SAM pass, a forward of 2 x 128 rows with per-example last-layer gradients and the
          penalty's backward;
  robust  robust-mean gradients (winsorized, c = 0.1): the closure plus per-example gradients
          of all 77k parameters (vmap(grad), chunks of 64) and the per-coordinate winsorized
          mean, as the Trainer runs it (on_after_backward).

Steps are interleaved one by one (the order of the sides rotates each step) so that load from
other processes hits all sides alike; each round sums ``--steps`` steps per side. Ratio = side
step time / plain step time, median over rounds.

Run: ``PYTHONPATH=src .venv/bin/python bench/wrapper_cost.py [--rounds 5 --steps 30]``
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from harness import closure_step, interleave_steps, make_parser, parse, ratio_table, torch_setting
from heldout.core.inputs import InputSpec
from heldout.methods.robust import RobustMeanGradients
from heldout.methods.sam import ASAM, TRAM, UDIM
from heldout.models import MLP

Step = Callable[[Tensor, Tensor], None]


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def side(model: nn.Module, wrap: Callable[[torch.optim.Optimizer, nn.Module], Any] | None,
         after_backward: Callable[[Any], None] | None = None) -> Step:
    opt = sgd(model) if wrap is None else wrap(sgd(model), model)
    hook = None if after_backward is None else (
        lambda x, y: after_backward(SimpleNamespace(model=model, batch=(x, y, None))))
    step = closure_step(model, opt, after_backward=hook)
    if not isinstance(opt, UDIM):
        return step

    def udim_step(x: Tensor, y: Tensor) -> None:
        opt.set_batch(x, y)
        step(x, y)

    return udim_step


def main() -> None:
    parser = make_parser(__doc__, rounds=5, seed=True)
    parser.add_argument("--steps", type=int, default=30, help="steps per side per round")
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--features", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parse(parser)
    print(torch_setting())

    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.n, args.features, generator=gen)
    y = torch.randint(0, 10, (args.n,), generator=gen)
    order = torch.randperm(args.n, generator=gen)
    batches = [(x[idx], y[idx]) for idx in order.split(args.batch_size)
               if len(idx) == args.batch_size]
    torch.manual_seed(args.seed)
    model = MLP(hidden=(256, 256)).build(InputSpec("continuous", (args.features,)), 10)
    print(f"MLP {args.features}-256-256-10: {sum(p.numel() for p in model.parameters())} "
          f"parameters, batch {args.batch_size}")

    robust = RobustMeanGradients(estimator="winsorized", clip_fraction=0.1)
    builders: dict[str, Callable[[nn.Module], Step]] = {
        "plain": lambda m: side(m, None),
        "asam": lambda m: side(m, lambda o, mm: ASAM(o, rho=0.5, eta=0.01, model=mm)),
        "tram": lambda m: side(m, lambda o, mm: TRAM(o, mm, logit_scale=1.0)),
        "udim": lambda m: side(m, lambda o, mm: UDIM(o, mm, rho=0.05, input_step=0.005)),
        "robust": lambda m: side(m, None, robust.on_after_backward),
    }
    sides = {name: build(copy.deepcopy(model)) for name, build in builders.items()}
    per_round = interleave_steps(sides, batches, args.steps, args.rounds)
    print(f"{args.rounds} rounds x {args.steps} steps per side")
    ratios = {name: spread.median
              for name, spread in ratio_table(per_round, per_round["plain"], width=8).items()}
    print("RESULT wrapper_cost " + " ".join(f"{name}={ratios[name]:.2f}"
                                            for name in sides if name != "plain"))


if __name__ == "__main__":
    main()
