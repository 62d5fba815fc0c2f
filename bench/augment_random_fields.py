"""Random-field augmentation's cost against the training step of the small CNN it feeds.

Setting: a batch of 256 images of 1x28x28 (uniform random pixels), 10 classes; the CNN is
heldout's ``cnn2d`` with BatchNorm2d, channels (16, 32), (a) with a 2x2 max pool after each
block (the cheaper step, so the harder ratio) and (b) without pooling.

Sides, on the same batch sequence:
  train_step     forward + cross-entropy backward + one SGD step (lr 0.01, momentum 0.9) of
                 the CNN on the batch (the baseline);
  random_fields  :func:`random_field_augment` of the batch, every kind on (translation 1 px,
                 rotation 10°, log-scale 0.1, brightness 0.1, log-contrast 0.1, gain 0.1),
                 length scale 4 px: 7 fields of 28x28 per image, synthesized on a 44x44 grid;
  global_affine  the same transforms with one value per image (ℓ = ∞), for reference.
Calls are interleaved one by one (the order rotates each call); each round averages
``--steps`` calls per side. Ratio = side time / train_step time, median (min, max) over rounds.
Goal (issue 11): random_fields ≤ 0.3x the training step.

Run: ``PYTHONPATH=src .venv/bin/python bench/augment_random_fields.py [--rounds 7 --steps 10]``
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from harness import interleave_steps, make_parser, parse, ratio_table, torch_setting
from heldout.core.inputs import InputSpec
from heldout.methods.augment.random_fields import random_field_augment
from heldout.models.cnn2d import CNN2D

GOAL = 0.3
AMPLITUDES = {"translation": 1.0, "rotation": 10.0, "scale": 0.1, "brightness": 0.1,
              "contrast": 0.1, "gain": 0.1}
LENGTH_SCALE = 4.0


def train_step(pool_every: int) -> Callable[[Tensor, Tensor], None]:
    torch.manual_seed(0)
    model = CNN2D(channels=(16, 32), pool_every=pool_every).build(
        InputSpec("continuous", (1, 28, 28)), num_classes=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(x: Tensor, y: Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step


def augmentation(length_scale: float | None) -> Callable[[Tensor, Tensor], None]:
    generator = torch.Generator().manual_seed(0)

    def augment(x: Tensor, y: Tensor) -> None:
        random_field_augment(x, generator, length_scale=length_scale, **AMPLITUDES)

    return augment


def main() -> None:
    parser = make_parser(__doc__, rounds=7)
    parser.add_argument("--steps", type=int, default=10, help="calls per side per round")
    args = parse(parser)
    print(torch_setting())
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.rand(256, 1, 28, 28, generator=generator),
                torch.randint(0, 10, (256,), generator=generator)) for _ in range(4)]
    medians = {}
    for label, pool_every in (("a: cnn2d (16, 32) pooled", 1), ("b: cnn2d (16, 32)", 0)):
        sides = {"train_step": train_step(pool_every),
                 "random_fields": augmentation(LENGTH_SCALE),
                 "global_affine": augmentation(None)}
        per_round = interleave_steps(sides, batches, args.steps, args.rounds)
        print(f"\n[{label}, batch 256, 1x28x28] {args.rounds} rounds x {args.steps} calls")
        spreads = ratio_table(per_round, per_round["train_step"], width=14, unit="ms/call")
        print(f"[{label}] random_fields / train_step: {spreads['random_fields'].text()} "
              f"(goal <= {GOAL})")
        medians[label[0]] = spreads["random_fields"].median
    print("\nRESULT random_fields / train_step medians: "
          + ", ".join(f"{k} {v:.3f}" for k, v in medians.items()))


if __name__ == "__main__":
    main()
