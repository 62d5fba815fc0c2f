"""Fake-quantized inference cost: a post-training fake-quantized model (per-channel symmetric
weights, per-tensor affine activations; :func:`heldout.methods.quantization.
post_training_quantize`) against the same float model, forward passes under ``no_grad`` in eval
mode, batch 256.

Settings:
  (a) cnn2d (16, 32) with BatchNorm2d on 8x8 digit-sized inputs (64 features);
  (b) MLP 256-256 with BatchNorm1d on 784 features.

Sides: float, W8A8 and W4A4 (the cost does not depend on the bit width: same ops). Calls are
interleaved one by one, the order rotating each call; each round sums ``--calls`` forward
passes per side. Ratio = fake-quantized time / float time (goal <= 2).

Run: ``PYTHONPATH=src .venv/bin/python bench/fake_quant.py [--rounds 7]``
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from harness import make_parser, parse, ratio_table, time_rounds, torch_setting
from heldout.core.inputs import InputSpec
from heldout.methods.quantization import post_training_quantize
from heldout.models import MLP
from heldout.models.cnn2d import CNN2D

GOAL = 2.0


def bench_setting(label: str, model: nn.Module, x: torch.Tensor, calls: int,
                  rounds: int) -> float:
    model.eval()
    sides_models = {"float": model,
                    "W8A8": post_training_quantize(model, x, 8, 8),
                    "W4A4": post_training_quantize(model, x, 4, 4)}

    def forward(m: nn.Module) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                for _ in range(calls):
                    m(x)
        return run

    seconds = time_rounds({k: forward(m) for k, m in sides_models.items()}, rounds)
    per_call = {k: [s / calls for s in v] for k, v in seconds.items()}
    print(f"\n[{label}] {rounds} rounds x {calls} calls per side, batch {len(x)}")
    table = ratio_table(per_call, per_call["float"], width=6, unit="ms/call")
    return max(table["W8A8"].median, table["W4A4"].median)


def main() -> None:
    parser = make_parser(__doc__, rounds=7, seed=True)
    parser.add_argument("--calls", type=int, default=20, help="forward passes per side per "
                        "round")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parse(parser)
    print(torch_setting())
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    results = {
        "a": bench_setting("(a) cnn2d (16, 32) + BatchNorm2d, 8x8 inputs",
                           CNN2D(channels=(16, 32)).build(InputSpec("continuous", (64,)), 10),
                           torch.rand(args.batch_size, 64, generator=gen), args.calls,
                           args.rounds),
        "b": bench_setting("(b) MLP 256-256 + BatchNorm1d, 784 features",
                           MLP(hidden=(256, 256), batch_norm=True).build(
                               InputSpec("continuous", (784,)), 10),
                           torch.rand(args.batch_size, 784, generator=gen), args.calls,
                           args.rounds),
    }
    worst = max(results, key=results.__getitem__)
    print("\nmedian fake-quant/float ratios (worse of W8A8, W4A4): "
          + ", ".join(f"({k}) {v:.3f}" for k, v in results.items()))
    print(f"RESULT fake_quant ratio={results[worst]:.2f} (goal <= {GOAL}) [worst: ({worst})]")


if __name__ == "__main__":
    main()
