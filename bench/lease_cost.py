"""Lease cost: training with the run lease's heartbeat against the same training without it.

Setting: the C1 grokking config (``grokking_config``: bias-free MLP 200-200, full-batch
AdamW lr 0.01, accuracy, loss, softmax collapse, NLM alignment and gap measured every 10
steps) on a tiny task, (a + b) mod 23, with a checkpoint every 50 steps, writing to a real
store as :func:`heldout.run.execute.execute` does: a :class:`~heldout.run.recorder.RunRecorder`
sends each evaluation's metrics (one transaction) and records each checkpoint's digest. The two
sides differ only in the lease:

- without: ``RunRecorder(store, run_id)``;
- with: the lease taken before ``fit()`` (timed), ``RunRecorder(store, run_id, lease)``,
  whose metric and checkpoint-digest transactions also refresh the heartbeat and check the
  lease, and ``finish_run(..., lease=lease)``, which gives it back in the same transaction.

Each round trains both sides from the same seed into fresh run ids (the two must end with
identical weights, printed), alternating which goes first; ratio = with / without. Then the
lease's own work is timed in isolation (the evaluation flush and the checkpoint-digest
transaction each with and without the lease, and the acquire) and charged per step: the
RESULT figure, since the lease's cost is far below the end-to-end ratio's noise on a shared
machine.

Run: ``PYTHONPATH=src .venv/bin/python bench/lease_cost.py [--steps 500 --rounds 5]``
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from harness import clock, elapsed, make_parser, parse, rotated, torch_setting
from heldout.claims.grokking import grokking_config
from heldout.run.assembly import build
from heldout.run.recorder import RunRecorder
from heldout.store import Store

GOAL = 0.01  # the lease's share of a training step


def train(store: Store, cfg, run_id: str, leased: bool) -> tuple[tuple[float, float], dict]:
    """Train ``cfg`` into run ``run_id``; time ``fit()`` (and the lease's acquire/release)."""
    store.create_run(run_id, {"bench": run_id}, cfg.seed)
    store.start_run(run_id, 0)
    start = clock()
    lease = store.acquire_lease(run_id) if leased else None
    trainer = build(cfg, checkpoint_path=store.checkpoint_path(run_id),
                    loggers=[RunRecorder(store, run_id, lease)])
    build_time = elapsed(start)
    trainer.fit()
    store.finish_run(run_id, status="done", seconds=trainer.seconds, step=trainer.state.step,
                     lease=lease)
    total = elapsed(start)
    fit_time = (total[0] - build_time[0], total[1] - build_time[1])
    return fit_time, trainer.model.state_dict()


def isolated(store: Store, repeats: int) -> dict[str, float]:
    """Milliseconds of the lease's own pieces, each the median of ``repeats``."""
    rows = [(10, "train", f"m{k}", float(k)) for k in range(12)]
    store.create_run("iso", {"bench": "iso"}, 0)
    lease = store.acquire_lease("iso")
    out: dict[str, list[float]] = {"flush": [], "flush+lease": [], "digest": [],
                                   "digest+lease": [], "acquire": []}
    for i in range(repeats):
        for key, args in (("flush", (rows,)), ("digest", (f"{i:064x}", i))):
            for leased in (False, True):
                write = store.log_metrics if key == "flush" else store.record_checkpoint
                t = time.perf_counter()
                write("iso", *args, lease=lease if leased else None)
                out[key + ("+lease" if leased else "")].append(time.perf_counter() - t)
    store.release_lease(lease)
    for _ in range(repeats):
        t = time.perf_counter()
        lease = store.acquire_lease("iso")
        out["acquire"].append(time.perf_counter() - t)
        store.release_lease(lease)
    return {k: 1e3 * statistics.median(v) for k, v in out.items()}


def main() -> None:
    parser = make_parser(__doc__, rounds=5)
    parser.add_argument("--p", type=int, default=23)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=200, help="isolated timings")
    args = parse(parser)
    cfg = replace(grokking_config(0, args.steps, p=args.p),
                  checkpoint_every=args.checkpoint_every)
    evals = args.steps // cfg.eval_every + 1
    checkpoints = args.steps // args.checkpoint_every
    print(f"{torch_setting()}; grokking config, "
          f"(a+b) mod {args.p}, {args.steps} steps, {evals} evaluations, {checkpoints} "
          "checkpoints")
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "home")
        train(store, grokking_config(0, 20, p=args.p), "warm-a", False)
        train(store, grokking_config(0, 20, p=args.p), "warm-b", True)
        ratios, cpu_ratios, times = [], [], {"with": [], "without": []}
        print(f"{'round':>5} {'without s':>10} {'with s':>10} {'ratio':>7} {'cpu ratio':>9}"
              "  weights")
        same = []
        for r in range(args.rounds):
            order = rotated(["without", "with"], r)
            out = {side: train(store, cfg, f"{side}-{r}", side == "with") for side in order}
            (w0, c0), s0 = out["without"]
            (w1, c1), s1 = out["with"]
            equal = all(torch.equal(s0[k], s1[k]) for k in s0)
            same.append(equal)
            times["without"].append(w0)
            times["with"].append(w1)
            ratios.append(w1 / w0)
            cpu_ratios.append(c1 / c0)
            print(f"{r:>5} {w0:>10.3f} {w1:>10.3f} {w1 / w0:>7.3f} {c1 / c0:>9.3f}  "
                  f"{'equal' if equal else 'DIFFER'}")
        step_ms = 1e3 * statistics.median(times["without"]) / args.steps
        iso = isolated(store, args.repeats)
    med = statistics.median(ratios)
    print(f"identical weights in all rounds: {all(same)}; per step (incl. evaluation, store "
          f"writes, checkpoints) {step_ms:.3f} ms")
    print(f"ratio median {med:.3f} (min {min(ratios):.3f}, max {max(ratios):.3f}); "
          f"CPU-time ratio median {statistics.median(cpu_ratios):.3f}")
    print("isolated, ms: " + ", ".join(f"{k} {v:.3f}" for k, v in iso.items()))
    lease_ms = (evals * max(0.0, iso["flush+lease"] - iso["flush"])
                + checkpoints * max(0.0, iso["digest+lease"] - iso["digest"]) + iso["acquire"])
    share = lease_ms / (args.steps * step_ms)
    print(f"the lease's own work: {lease_ms:.2f} ms per run = {1e3 * lease_ms / args.steps:.1f} "
          f"us per step = {100 * share:.3f}% of a step")
    print(f"RESULT lease_cost share={100 * share:.2f}% of a step (goal <= {GOAL:.0%}); "
          f"end-to-end ratio median {med:.3f}")


if __name__ == "__main__":
    main()
