"""Sweep executors: the local process pool with 2 workers against 1 worker (goal >= 1.8x), and
the Ray executor's overhead per run against the local executor, on the same sweep of small
runs (one process per run: vectorized seeds are off), each executor writing a fresh store.
Workers use 1 torch thread each.

    PYTHONPATH=src .venv/bin/python bench/executors.py [--runs 24] [--steps 1500] [--no-ray]
"""

from __future__ import annotations

import tempfile

from harness import make_parser, parse, timed
from heldout.experiments.sweep import expand, run_sweep, sweep_from_dict
from heldout.store import Store


def spec(runs: int, steps: int):
    return sweep_from_dict({
        "name": "bench-executors",
        "base": {"model": {"name": "mlp", "hidden": [64]}, "optimizer": {"name": "adam"},
                 "steps": steps, "eval_every": steps // 3, "checkpoint_every": steps},
        "tasks": [{"name": "modular", "p": 23}],
        "techniques": ["erm"], "hparams": 1, "seeds": list(range(runs)),
    })


def sweep_seconds(executor: str, workers: int, runs: int, steps: int) -> float:
    store = Store(tempfile.mkdtemp(prefix=f"bench-{executor}{workers}-"))
    elapsed, outcomes = timed(lambda: run_sweep(
        spec(runs, steps), store, executor=executor, workers=workers,
        vectorize=1))  # one process per run: the executors, not vectorization
    assert len(outcomes) == runs and all(o.status == "done" for o in outcomes), outcomes
    return elapsed.wall


def main() -> None:
    parser = make_parser(__doc__, threads=False)
    parser.add_argument("--runs", type=int, default=24)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--no-ray", action="store_true")
    args = parse(parser)
    assert len(expand(spec(args.runs, args.steps))) == args.runs
    one = sweep_seconds("local", 1, args.runs, args.steps)
    two = sweep_seconds("local", 2, args.runs, args.steps)
    print(f"local, 1 worker : {one:7.2f} s  ({one / args.runs:.2f} s/run)")
    print(f"local, 2 workers: {two:7.2f} s  ({two / args.runs:.2f} s/run)")
    print(f"RESULT executors_local speedup={one / two:.2f} (goal >= 1.8)")
    if not args.no_ray:
        ray_time = sweep_seconds("ray", 2, args.runs, args.steps)
        print(f"ray, 2 CPUs     : {ray_time:7.2f} s  (incl. starting Ray)")
        print(f"RESULT executors_ray overhead_per_run={(ray_time - two) / args.runs:+.2f}s "
              f"ratio={ray_time / two:.2f} vs local 2 workers")


if __name__ == "__main__":
    main()
