"""Vectorized seeds: K seeds trained together by ``train_vectorized`` against K ``execute`` runs.

Setting: (a + b) mod p (p=23, train fraction 0.5, val 0.1), heldout MLP with one hidden layer
of 64, AdamW lr 0.01, the default measures (accuracy, loss, ECE on train/val/test, the gaps) at
step 0, every ``--eval-every`` steps and the last step, one checkpoint per run (at the end).
K = 32 configs that differ only in the seed (``--techniques ema``, say, adds techniques to
all of them). Two variants: minibatches of ``--batch-size``
(the headline) and full batch (264 examples per step).

Both sides write to a fresh store each round (runs, metrics, checkpoint files, artifacts): the
separate side runs ``heldout.run.execute.execute`` for each config in sequence, the vectorized side
one ``heldout.vectorize.trainer.train_vectorized`` call. Both do the same steps, the same
evaluations and write the same runs; after each round the final metrics of every run are
compared between the two stores (the largest relative difference is printed; it must be float
rounding, else the timing is not a comparison). Rounds alternate which side goes first;
the speedup is separate time / vectorized time, median over rounds (wall clock; the CPU-time
ratio is printed beside it). One torch thread by default.

Run: ``PYTHONPATH=src .venv/bin/python bench/vectorized_seeds.py [--steps 2000 --rounds 3]``
(about 2 minutes per round for both variants on a 2-core CPU).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from harness import Seconds, Spread, make_parser, parse, ratios, rotations, timed, torch_setting
from heldout.config import RunConfig, parse_overrides
from heldout.run.execute import execute
from heldout.store import Store
from heldout.vectorize.trainer import can_vectorize, train_vectorized

GOAL = 8.0


def configs(args: argparse.Namespace, batch_size: int | None, steps: int) -> list[RunConfig]:
    base = parse_overrides(RunConfig(), [
        "task=modular", f"task.p={args.p}", "task.train_fraction=0.5", "task.val_fraction=0.1",
        "model=mlp", f"model.hidden=[{args.hidden}]", "optimizer.name=adamw",
        "optimizer.lr=0.01", f"steps={steps}", f"eval_every={args.eval_every}",
        f"checkpoint_every={steps}", f"batch_size={batch_size or 'null'}",
    ] + ([f"techniques={args.techniques}"] if args.techniques else []))
    return [parse_overrides(base, [f"seed={seed}"]) for seed in range(args.k)]


def run_separate(cfgs: list[RunConfig], home: Path) -> tuple[Seconds, Store]:
    store = Store(home)
    return timed(lambda: [execute(cfg, store) for cfg in cfgs])[0], store


def run_vectorized(cfgs: list[RunConfig], home: Path) -> tuple[Seconds, Store]:
    store = Store(home)
    return timed(lambda: train_vectorized(cfgs, store))[0], store


def largest_difference(a: Store, b: Store, cfgs: list[RunConfig]) -> float:
    worst = 0.0
    for cfg in cfgs:
        x, y = a.final_metrics(cfg.identity), b.final_metrics(cfg.identity)
        if x.keys() != y.keys():
            return float("inf")
        for key in x:
            worst = max(worst, abs(x[key] - y[key]) / max(abs(y[key]), 1e-12))
    return worst


def bench_variant(label: str, args: argparse.Namespace, batch_size: int | None) -> float:
    cfgs = configs(args, batch_size, args.steps)
    ok, reason = can_vectorize(cfgs)
    if not ok:
        raise SystemExit(f"cannot vectorize: {reason}")
    with tempfile.TemporaryDirectory() as tmp:  # warm-up: imports, first-call costs
        warm = configs(args, batch_size, 5)[:2]
        run_separate(warm, Path(tmp) / "s")
        run_vectorized(warm, Path(tmp) / "v")
    print(f"\n[{label}] K={args.k} techniques={args.techniques or 'none'} steps={args.steps} "
          f"batch={batch_size or 'full'} eval_every={args.eval_every} "
          f"({len(range(0, args.steps, args.eval_every)) + 1} evaluations per run)")
    print(f"{'round':>5} {'separate s':>11} {'vectorized s':>13} {'speedup':>8} {'cpu':>6} "
          f"{'max rel diff':>13}")
    runners = {"separate": run_separate, "vectorized": run_vectorized}
    walls, cpus = {"separate": [], "vectorized": []}, {"separate": [], "vectorized": []}
    for r, order in rotations(runners, args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            out = {side: runners[side](cfgs, Path(tmp) / side) for side in order}
            (wall_s, cpu_s), store_s = out["separate"]
            (wall_v, cpu_v), store_v = out["vectorized"]
            diff = largest_difference(store_v, store_s, cfgs)
        for side, ((wall, cpu), _) in out.items():
            walls[side].append(wall)
            cpus[side].append(cpu)
        print(f"{r:>5} {wall_s:>11.2f} {wall_v:>13.2f} {wall_s / wall_v:>8.2f} "
              f"{cpu_s / cpu_v:>6.2f} {diff:>13.2e}")
    speedup = Spread.of(ratios(walls["separate"], walls["vectorized"]))
    cpu_speedup = statistics.median(ratios(cpus["separate"], cpus["vectorized"]))
    per_run = {k: 1e3 * statistics.median(v) / args.k for k, v in walls.items()}
    print(f"[{label}] speedup {speedup.text(2)}; CPU-time ratio median {cpu_speedup:.2f}; "
          f"per run: separate {per_run['separate']:.0f} ms, vectorized "
          f"{per_run['vectorized']:.0f} ms")
    return speedup.median


def main() -> None:
    parser = make_parser(__doc__, rounds=3)
    parser.add_argument("--k", type=int, default=32, help="seeds")
    parser.add_argument("--p", type=int, default=23)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32, help="minibatch variant")
    parser.add_argument("--variant", choices=["minibatch", "full", "both"], default="both")
    parser.add_argument("--techniques", default="",
                        help="techniques of every run, e.g. ema or sam,ema (default: none)")
    args = parse(parser)
    print(f"{torch_setting()}; both sides write to "
          "fresh stores")
    results = {}
    if args.variant in ("minibatch", "both"):
        results["minibatch"] = bench_variant(f"minibatch {args.batch_size}", args,
                                             args.batch_size)
    if args.variant in ("full", "both"):
        results["full"] = bench_variant("full batch", args, None)
    headline = "minibatch" if "minibatch" in results else "full"
    others = "; ".join(f"{k} {v:.2f}" for k, v in results.items() if k != headline)
    print(f"\nRESULT vectorized_seeds speedup={results[headline]:.2f} (goal >= {GOAL}) "
          f"[{headline}{f'; {others}' if others else ''}]")


if __name__ == "__main__":
    main()
