"""Trainer overhead: heldout's Trainer against a hand-written PyTorch loop doing the same work.

Setting: (a + b) mod p (ModularArithmetic, train fraction 0.4), bias-free MLP 200-200 built
by heldout.models with the same seed (so the same initialization), AdamW lr 0.01, float32
cross-entropy. Both loops evaluate accuracy and float64 loss on train and test at step 0, every
``--eval-every`` steps and at the last step (the Trainer with ``measures=[Accuracy(), Loss()]``,
the hand loop with plain torch under ``no_grad``). Two variants: full batch, and shuffled
minibatches (the hand loop draws the same per-epoch permutations as the Trainer's batch stream,
so both see the same batches).

The two loops must end with identical weights (``torch.equal``), else they did different work
and the timing is not a comparison; the check is printed. Rounds interleave the two sides,
alternating which goes first. Ratio = Trainer time / hand-loop time (goal <= 1.05).

Run: ``PYTHONPATH=src .venv/bin/python bench/trainer_overhead.py [--steps 300 --rounds 5]``
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F
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
    torch_setting,
)
from heldout.engine.trainer import Trainer
from heldout.measures import Accuracy, Loss
from heldout.models import MLP
from heldout.tasks.base import Splits
from heldout.tasks.modular import ModularArithmetic

GOAL = 1.05
LR = 0.01


def make_model(splits: Splits, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return MLP(hidden=(200, 200), bias=False).build(splits.input, splits.num_classes)


def run_trainer(
    splits: Splits, seed: int, steps: int, batch_size: int | None, eval_every: int
) -> tuple[Seconds, nn.Module, list[tuple[int, dict[str, float]]]]:
    model = make_model(splits, seed)
    start = clock()
    trainer = Trainer(
        model,
        lambda params: torch.optim.AdamW(params, lr=LR),
        splits.train,
        max_steps=steps,
        eval_data={"train": splits.train, "test": splits.test},
        measures=[Accuracy(), Loss()],
        batch_size=batch_size,
        eval_every=eval_every,
        seed=seed,
    )
    history = trainer.fit()
    return elapsed(start), model, history


def run_hand(
    splits: Splits, seed: int, steps: int, batch_size: int | None, eval_every: int
) -> tuple[Seconds, nn.Module, list[tuple[int, dict[str, float]]]]:
    model = make_model(splits, seed)
    start = clock()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    x, y = splits.train.x, splits.train.y
    eval_sets = {"train": (x, y), "test": (splits.test.x, splits.test.y)}
    n = len(y)
    history: list[tuple[int, dict[str, float]]] = []

    def evaluate(step: int) -> None:
        model.eval()
        metrics = {}
        with torch.no_grad():
            for name, (ex, ey) in eval_sets.items():
                logits = model(ex)
                metrics[f"{name}/accuracy"] = (logits.argmax(-1) == ey).double().mean().item()
                metrics[f"{name}/loss"] = F.cross_entropy(logits.double(), ey).item()
        model.train()
        history.append((step, metrics))

    def batches():
        epoch = 0
        while True:
            if batch_size is None or batch_size >= n:
                yield x, y
            else:  # the same per-epoch permutation as heldout's TensorBatches
                gen = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % 2**63)
                order = torch.randperm(n, generator=gen)
                for first in range(0, n, batch_size):
                    idx = order[first : first + batch_size]
                    yield x[idx], y[idx]
            epoch += 1

    evaluate(0)
    stream = batches()
    for step in range(1, steps + 1):
        xb, yb = next(stream)
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        optimizer.step()
        if step % eval_every == 0 or step == steps:
            evaluate(step)
    return elapsed(start), model, history


def same_metrics(h1: list, h2: list) -> bool:
    if [s for s, _ in h1] != [s for s, _ in h2]:
        return False
    return all(m1[k] == m2[k] for (_, m1), (_, m2) in zip(h1, h2, strict=True) for k in m2)


def bench_variant(
    label: str, splits: Splits, args: argparse.Namespace, batch_size: int | None
) -> float:
    kw = dict(seed=args.seed, steps=args.steps, batch_size=batch_size,
              eval_every=args.eval_every)
    warm = dict(kw, steps=min(20, args.steps))
    run_trainer(splits, **warm)
    run_hand(splits, **warm)
    sides = {"trainer": lambda: run_trainer(splits, **kw), "hand": lambda: run_hand(splits, **kw)}
    walls, cpus, checks = {"trainer": [], "hand": []}, {"trainer": [], "hand": []}, []
    print(f"\n[{label}] steps={args.steps} batch={batch_size or 'full'} "
          f"eval_every={args.eval_every}")
    print(f"{'round':>5} {'trainer s':>10} {'hand s':>10} {'ratio':>7} {'cpu ratio':>9}"
          "  weights  metrics")
    for r, out in interleave(sides, args.rounds):
        (t_tr, c_tr), m_tr, h_tr = out["trainer"]
        (t_hd, c_hd), m_hd, h_hd = out["hand"]
        w_ok, m_ok = same_weights(m_tr, m_hd), same_metrics(h_tr, h_hd)
        checks.append(w_ok)
        for name, ((wall, cpu), _, _) in out.items():
            walls[name].append(wall)
            cpus[name].append(cpu)
        print(f"{r:>5} {t_tr:>10.3f} {t_hd:>10.3f} {t_tr / t_hd:>7.3f} {c_tr / c_hd:>9.3f}  "
              f"{'equal' if w_ok else 'DIFFER':>7}  {'equal' if m_ok else 'differ'}")
    wall = Spread.of(ratios(walls["trainer"], walls["hand"]))
    per_step = {k: 1e3 * statistics.median(v) / args.steps for k, v in walls.items()}
    print(f"[{label}] identical weights in all rounds: {all(checks)}; per step (incl. eval): "
          f"trainer {per_step['trainer']:.2f} ms, hand {per_step['hand']:.2f} ms")
    best = min(walls["trainer"]) / min(walls["hand"])
    print(f"[{label}] ratio {wall.text()}; best-of-{args.rounds} times ratio {best:.3f}; "
          f"CPU-time ratio median {statistics.median(ratios(cpus['trainer'], cpus['hand'])):.3f}")
    if not all(checks):
        print(f"[{label}] WARNING: the loops did different work; the ratio is not a comparison")
    return wall.median


def main() -> None:
    parser = make_parser(__doc__, rounds=5, seed=True)
    parser.add_argument("--p", type=int, default=113)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=512, help="minibatch variant")
    parser.add_argument("--variant", choices=["full", "minibatch", "both"], default="both")
    args = parse(parser)
    splits = ModularArithmetic(p=args.p, train_fraction=0.4).splits(args.seed)
    print(f"{torch_setting()}; (a+b) mod {args.p}: "
          f"{len(splits.train)} train, {len(splits.test)} test")
    results = {}
    if args.variant in ("full", "both"):
        results["full"] = bench_variant("full batch", splits, args, None)
    if args.variant in ("minibatch", "both"):
        results[f"batch{args.batch_size}"] = bench_variant(
            f"minibatch {args.batch_size}", splits, args, args.batch_size)
    worst = max(results, key=results.__getitem__)
    print("\nmedian ratios: " + ", ".join(f"{k} {v:.3f}" for k, v in results.items()))
    print(f"RESULT trainer_overhead ratio={results[worst]:.2f} (goal <= {GOAL}) [worst: {worst}]")


if __name__ == "__main__":
    main()
