"""LOOK step cost: one training step with LOOK's leave-one-out k-NN loss (heldout.methods.look)
against one cross-entropy step of the same MLP, at batch 256.

Both sides train their own copy of the same initial MLP (Adam) on the same batch sequence of
random data (digits-like: 64 features, 10 classes). The cross-entropy side back-propagates
the head's logits; the LOOK side runs the featurizer only (``LOOKNetwork`` in training mode),
then the B x B cosine-similarity matrix, its self-masked top-k and the vote. Steps are
interleaved one by one, the order rotating each step; each round sums ``--steps`` steps per
side. Ratio = LOOK step time / cross-entropy step time (goal <= 1.5).

Run: ``PYTHONPATH=src .venv/bin/python bench/look_loss.py [--rounds 7]``
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness import interleave_steps, make_parser, parse, ratio_table, torch_setting
from heldout.core.inputs import InputSpec
from heldout.methods.look import LOOKNetwork, look_loss
from heldout.models import MLP

GOAL = 1.5
Step = Callable[[Tensor, Tensor], None]


def step_with(model: nn.Module, loss_of: Callable[[Tensor, Tensor], Tensor]) -> Step:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()

    def step(x: Tensor, y: Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_of(model(x), y).backward()
        optimizer.step()

    return step


def main() -> None:
    parser = make_parser(__doc__, rounds=7, seed=True)
    parser.add_argument("--steps", type=int, default=100, help="steps per side per round")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 128])
    parser.add_argument("--k", type=int, default=10)
    args = parse(parser)
    print(torch_setting())
    gen = torch.Generator().manual_seed(args.seed)
    n, features = 16 * args.batch_size, 64
    x, y = torch.randn(n, features, generator=gen), torch.randint(0, 10, (n,), generator=gen)
    batches = [(x[i:i + args.batch_size], y[i:i + args.batch_size])
               for i in range(0, n, args.batch_size)]
    torch.manual_seed(args.seed)
    model = MLP(hidden=tuple(args.hidden)).build(InputSpec("continuous", (features,)), 10)
    sides = {
        "cross-entropy": step_with(copy.deepcopy(model), F.cross_entropy),
        "look": step_with(LOOKNetwork(copy.deepcopy(model)),
                          lambda z, t: look_loss(z, t, k=args.k)),
    }
    per_round = interleave_steps(sides, batches, args.steps, args.rounds)
    print(f"\nMLP {'-'.join(map(str, args.hidden))}, batch {args.batch_size}, k={args.k}: "
          f"{args.rounds} rounds x {args.steps} steps per side")
    look = ratio_table(per_round, per_round["cross-entropy"], width=14)["look"]
    print(f"RESULT look_loss ratio={look.median:.2f} (goal <= {GOAL}) {look.text()}")


if __name__ == "__main__":
    main()
