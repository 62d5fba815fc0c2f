"""LoRA step cost: one training step of MiniLM with LoRA (rank 8 on query and value, through
``heldout.methods.peft.LoRA``: only the LoRA factors and the head train) against one full
fine-tuning step of the same model, batch 32, sequence 64.

Both sides start from the same pre-trained all-MiniLM-L6-v2 and head, run AdamW (lr 1e-4) on
the same batches of random token ids (a few padded positions per row), forward, mean
cross-entropy, backward and step. Steps are interleaved one by one, the order rotating each
step; ratio = LoRA step time / full fine-tuning step time (goal <= 0.7). LoRA saves the
weight gradients of the frozen encoder and AdamW's update of its 22.7M parameters; it still
back-propagates through every layer to reach the LoRA factors of the first.

Run: ``PYTHONPATH=src:bench .venv/bin/python bench/lora_step.py [--rounds 5] [--steps 4]``
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from harness import closure_step, interleave_steps, make_parser, parse, ratio_table, torch_setting
from heldout.core.inputs import InputSpec
from heldout.methods.peft import LoRA, trainable_parameter_count
from heldout.models.pretrained import MiniLM

GOAL = 0.7


def adamw(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)


def main() -> None:
    parser = make_parser(__doc__, rounds=5, seed=True)
    parser.add_argument("--steps", type=int, default=4, help="steps per side per round")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--length", type=int, default=64, help="sequence length")
    parser.add_argument("--rank", type=int, default=8)
    args = parse(parser)
    print(torch_setting())
    spec = InputSpec("tokens", (args.length,), vocab=30522)
    torch.manual_seed(args.seed)
    full = MiniLM(mode="full").build(spec, 6)
    lora = LoRA(rank=args.rank).transform_model(copy.deepcopy(full))
    gen = torch.Generator().manual_seed(args.seed)
    batches = []
    for _ in range(8):
        x = torch.randint(1000, 30000, (args.batch_size, args.length), generator=gen)
        lengths = torch.randint(args.length // 2, args.length + 1, (args.batch_size,),
                                generator=gen)
        x[torch.arange(args.length)[None] >= lengths[:, None]] = 0
        batches.append((x, torch.randint(0, 6, (args.batch_size,), generator=gen)))
    sides = {"full": closure_step(full, adamw(full)), "lora": closure_step(lora, adamw(lora))}
    print(f"trainable parameters: full {trainable_parameter_count(full):,}, "
          f"LoRA r={args.rank} {trainable_parameter_count(lora):,}")
    per_round = interleave_steps(sides, batches, args.steps, args.rounds, warmup=2)
    print(f"\nMiniLM, batch {args.batch_size} x {args.length} tokens, {args.rounds} rounds x "
          f"{args.steps} steps per side")
    ratio = ratio_table(per_round, per_round["full"], width=8)["lora"]
    print(f"RESULT lora_step ratio={ratio.median:.2f} (goal <= {GOAL}) {ratio.text()}")


if __name__ == "__main__":
    main()
