"""α-BN's cost per test batch against a plain eval forward of the same model.

Settings (heldout.models.CNN2D with BatchNorm2d, random weights and non-trivial running
statistics, random inputs):
  (a) digits-sized: channels (16, 32) on 1x8x8 images (the corruption suite's model);
  (b) bigger: channels (32, 64, 128), a 2x2 max pool after each block, on 3x32x32 images.
Each at test batch 16 and 256.

Sides, each on its own copy of the model, on the same batch sequence:
  eval      the source model in eval mode under ``torch.no_grad()`` (the baseline);
  train_bn  the same forward with BatchNorm in train mode (batch statistics; momentum 0 so the
            running statistics stay put), the floor any statistics-based adapter pays;
  bn_adapt  the ``bn_adapt`` adapter (α = 1);
  alpha_bn  the ``alpha_bn`` adapter (α = 0.1).
Calls are interleaved one by one (the order rotates each call); each round averages
``--steps`` calls per side. Ratio = side time / eval time, median (min, max) over rounds.
Goal (issue 10): α-BN ≤ 1.1x a forward pass.

Run: ``PYTHONPATH=src .venv/bin/python bench/adapt_alpha_bn.py [--rounds 7 --steps 40
--steps-big 5]``
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

from harness import interleave_steps, make_parser, parse, ratio_table, torch_setting
from heldout.adapt.normalization import AlphaBN, BNAdapt
from heldout.core.adapter import batchnorm_layers
from heldout.core.inputs import InputSpec
from heldout.models.cnn2d import CNN2D

GOAL = 1.1


def source_model(channels: tuple[int, ...], pool_every: int, shape: tuple[int, ...]) -> nn.Module:
    """A cnn2d whose running statistics are not the defaults (as after training)."""
    model = CNN2D(channels=channels, pool_every=pool_every).build(
        InputSpec("continuous", shape), num_classes=10)
    for norm in batchnorm_layers(model):
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.5, 2.0)
    return model.eval()


def sides(model: nn.Module) -> dict[str, Callable[[Tensor], None]]:
    evaluated = copy.deepcopy(model).eval()
    train_bn = copy.deepcopy(model).eval()
    for norm in batchnorm_layers(train_bn):
        norm.train()
        norm.momentum = 0.0

    def no_grad(net: nn.Module) -> Callable[[Tensor], None]:
        def call(x: Tensor) -> None:
            with torch.no_grad():
                net(x)
        return call

    return {"eval": no_grad(evaluated), "train_bn": no_grad(train_bn),
            "bn_adapt": BNAdapt(model).__call__, "alpha_bn": AlphaBN(model, alpha=0.1).__call__}


def bench_setting(label: str, model: nn.Module, shape: tuple[int, ...], batch: int,
                  steps: int, rounds: int) -> float:
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(batch, *shape, generator=generator),) for _ in range(8)]
    per_round = interleave_steps(sides(model), batches, steps, rounds)
    print(f"\n[{label}, batch {batch}] {rounds} rounds x {steps} calls per side")
    spread = ratio_table(per_round, per_round["eval"], width=10, unit="ms/batch")["alpha_bn"]
    print(f"[{label}, batch {batch}] alpha_bn / eval: {spread.text()} (goal <= {GOAL})")
    return spread.median


def main() -> None:
    parser = make_parser(__doc__, rounds=7)
    parser.add_argument("--steps", type=int, default=40, help="calls per side per round, (a)")
    parser.add_argument("--steps-big", type=int, default=5, help="calls per side per round, (b)")
    args = parse(parser)
    print(torch_setting())
    settings = [("a: cnn2d (16, 32), 1x8x8", (16, 32), 0, (64,), args.steps),
                ("b: cnn2d (32, 64, 128) pooled, 3x32x32", (32, 64, 128), 1, (3, 32, 32),
                 args.steps_big)]
    medians = {}
    for label, channels, pool_every, shape, steps in settings:
        torch.manual_seed(0)
        model = source_model(channels, pool_every, shape)
        for batch in (16, 256):
            medians[f"{label[0]}{batch}"] = bench_setting(label, model, shape, batch, steps,
                                                          args.rounds)
    print("\nRESULT alpha_bn / eval medians: "
          + ", ".join(f"{k} {v:.3f}" for k, v in medians.items()))


if __name__ == "__main__":
    main()
