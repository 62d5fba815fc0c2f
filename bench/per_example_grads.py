"""Per-example gradients: ``torch.func`` (heldout's ``per_example_gradients``: vmap(grad) over
``functional_call`` in chunks) against a Python loop of ``torch.autograd.grad``, one example at
a time.

Setting: heldout's MLP 40 -> 256 -> 256 -> 10 (78,858 parameters; MNIST-1D-sized inputs),
1,000 random examples, cross-entropy, eval mode. Both sides produce the same (1000, 78858)
float32 matrix; the script checks they agree (``torch.testing.assert_close``) before timing.

Time, each interleaved (the order alternates each round), ``--rounds`` times:
  full      the (n, P) matrix: ``per_example_gradients`` vs the loop writing rows in place;
            ratio = loop / torch.func, median (min-max): RESULT per_example_grads.
  streamed  no n x P matrix: the coherence α = ‖Σ g_i‖² / (m Σ ‖g_i‖²) from running sums of
            chunks of vmap(grad) gradients (the path every model can take) vs the loop
            accumulating the same sums.
  coherence heldout's ``m_coherence`` as it runs on this MLP: the per-layer norm path (one
            batched backward gives Σ g_i and each layer's output gradients δ_i; ‖g_i‖² =
            Σ_layers ‖δ_i‖²(‖a_i‖² + 1), no per-example gradient is formed) vs the same loop:
            RESULT coherence (the goal's "per-example gradients for coherence", >= 20).
The full pair includes allocating and first touching the 301 MiB result, which both sides pay
(page faults; printed separately). ``--huge-pages`` reruns with ``THP_MEM_ALLOC_ENABLE=1``,
which makes torch ask for transparent huge pages for large tensors, cutting that cost.

Why materializing per-example gradients stays near 2x here (measured 2026-11-28 on the
shared 2-core VM, 1 thread), while coherence itself runs ~36x faster (it needs no per-
example gradient, only their norms): 98% of the parameters sit in two weight matrices whose
per-example gradients are outer products, so every example costs 79k fresh numbers (308 KiB)
however it is computed, and the plain loop is already cheap (~0.2-0.5 ms per example). Under
vmap those outer products become ``bmm`` calls with an inner dimension of 1, which take ~80%
of the torch.func time (profiled) and run well below memory bandwidth; each chunk's
gradients also land in freshly mapped memory (glibc hands blocks this large back to the OS),
and page faults are slow in this VM. The script prints the bandwidth floor (writing n x P
floats once into a reused buffer) and the loop / floor ceiling for comparison. Taking the
page faults away (``--huge-pages`` plus ``MALLOC_MMAP_THRESHOLD_=4294967296
MALLOC_TRIM_THRESHOLD_=8589934592``) brought the ratio only to ~2.5x. The ratio grows when
per-example gradients are small next to the per-call overhead the loop pays (few parameters,
many layers).

Memory: peak resident set size (RSS), measured in a fresh subprocess per variant (so no memory
freed by another variant is reused). The child builds the model and data, runs the variant
once on 2 examples (so code pages and one-time state are resident and not counted), resets its
RSS high-water mark (``echo 5 > /proc/self/clear_refs``) and reads ``VmRSS``; the variant runs
once; peak extra memory = ``VmHWM`` − that baseline. RSS counts every page touched, so it
reflects the tensor storage torch's CPU allocator really obtained (freed at once to the OS for
large blocks); ``tracemalloc`` sees only Python objects, torch keeps no CPU allocator
statistics, and ``ru_maxrss`` is inherited across fork/exec from this (larger) parent. The
table shows peak, result size, and their difference ("transient").

Run: ``PYTHONPATH=src .venv/bin/python bench/per_example_grads.py [--rounds 5] [--threads 1]``
(Linux only, for ``/proc``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness import Spread, make_parser, parse, ratios, time_rounds, timed
from heldout.core.inputs import InputSpec
from heldout.core.per_example import per_example_gradients
from heldout.measures.coherence import _chunk_sums, m_coherence
from heldout.models.mlp import mlp_network

GOAL = 20.0


def build(examples: int) -> tuple[nn.Module, Tensor, Tensor]:
    torch.manual_seed(0)
    model = mlp_network(InputSpec("continuous", (40,)), 10, hidden=(256, 256)).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(examples, 40, generator=g)
    return model, x, torch.randint(0, 10, (examples,), generator=g)


# --------------------------------------------------------------------------- the variants


def loop_gradients(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """The baseline: one forward and one autograd.grad per example, rows written in place."""
    params = [p for p in model.parameters() if p.requires_grad]
    out = torch.empty(len(x), sum(p.numel() for p in params))
    for i in range(len(x)):
        loss = F.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        grads = torch.autograd.grad(loss, params)
        torch.cat([g.reshape(-1) for g in grads], out=out[i])
    return out


def loop_streamed(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """The baseline without the matrix: α = ‖Σ g_i‖² / (m Σ ‖g_i‖²), one example at a time."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = torch.zeros(sum(p.numel() for p in params), dtype=torch.float64)
    squares = 0.0
    for i in range(len(x)):
        loss = F.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss, params)])
        total += g
        squares += float(g.square().sum())
    return torch.tensor([float(total.square().sum()) / (len(x) * squares)])


def func_gradients(model: nn.Module, x: Tensor, y: Tensor, chunk_size: int) -> Tensor:
    return per_example_gradients(model, x, y, chunk_size=chunk_size)


def func_streamed(model: nn.Module, x: Tensor, y: Tensor, chunk_size: int) -> Tensor:
    """The same α from chunks of vmap(grad) gradients and running sums (the general path)."""
    totals, squares = _chunk_sums(model, x, y, chunk_size, F.cross_entropy)
    return torch.tensor([float(sum(float(t.square().sum()) for t in totals.values()))
                         / (len(x) * sum(squares.values()))])


def coherence_path(model: nn.Module, x: Tensor, y: Tensor, chunk_size: int) -> Tensor:
    """heldout's m_coherence as it runs on an MLP (the per-layer norm path)."""
    return torch.tensor([m_coherence(model, x, y, chunk_size=chunk_size).alpha])


def variants(model: nn.Module, chunk_size: int) -> dict[str, Callable[[Tensor, Tensor], Tensor]]:
    return {
        "loop": lambda x, y: loop_gradients(model, x, y),
        "func": lambda x, y: func_gradients(model, x, y, chunk_size),
        "loop_streamed": lambda x, y: loop_streamed(model, x, y),
        "func_streamed": lambda x, y: func_streamed(model, x, y, chunk_size),
        "coherence": lambda x, y: coherence_path(model, x, y, chunk_size),
    }


# --------------------------------------------------------------------------- memory


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def child(variant: str, examples: int, chunk_size: int) -> None:
    """Run one variant once in this (fresh) process; print its peak extra RSS as JSON."""
    model, x, y = build(examples)
    run = variants(model, chunk_size)[variant]
    run(x[:2], y[:2])  # warm-up: code pages and one-time state are not the variant's memory
    with open("/proc/self/clear_refs", "w") as f:  # reset the high-water mark to the RSS now
        f.write("5")
    before = _status_kib("VmRSS")
    result = run(x, y)
    peak = _status_kib("VmHWM")
    print(json.dumps({"peak_mib": (peak - before) / 1024,
                      "result_mib": result.numel() * result.element_size() / 2**20}))


def peak_memory(variant: str, args: argparse.Namespace) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", variant, "--examples", str(args.examples),
               "--chunk-size", str(args.chunk_size), "--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- timing


def allocation_seconds(rows: int, cols: int, rounds: int) -> float:
    """Allocating and first touching an (rows, cols) float32 tensor: page-fault cost."""
    return statistics.median(timed(lambda: torch.empty(rows, cols).fill_(0.0))[0].wall
                             for _ in range(rounds))


def write_floor_seconds(rows: int, cols: int, chunk_size: int, rounds: int) -> float:
    """Writing rows x cols float32 numbers once, chunk by chunk, into one reused buffer: the
    least any method producing every per-example gradient must spend (no page faults)."""
    buffer = torch.empty(min(chunk_size, rows), cols)
    buffer.fill_(0.0)

    def write() -> None:
        for first in range(0, rows, chunk_size):
            buffer[: min(chunk_size, rows - first)].fill_(1.0)

    return statistics.median(timed(write)[0].wall for _ in range(rounds))


def main() -> None:
    parser = make_parser(__doc__, rounds=5)
    parser.add_argument("--examples", type=int, default=1000, help="examples (default 1000)")
    parser.add_argument("--chunk-size", type=int, default=64,
                        help="examples per vmap call (default 64, heldout's default)")
    parser.add_argument("--huge-pages", action="store_true",
                        help="rerun with THP_MEM_ALLOC_ENABLE=1 (huge pages for big tensors)")
    parser.add_argument("--child", choices=["loop", "func", "loop_streamed", "func_streamed",
                                            "coherence"],
                        help=argparse.SUPPRESS)
    args = parse(parser)
    if args.child:
        child(args.child, args.examples, args.chunk_size)
        return
    if args.huge_pages and os.environ.get("THP_MEM_ALLOC_ENABLE") != "1":
        os.execve(sys.executable, [sys.executable, *sys.argv],
                  {**os.environ, "THP_MEM_ALLOC_ENABLE": "1"})

    model, x, y = build(args.examples)
    n_params = sum(p.numel() for p in model.parameters())
    huge = os.environ.get("THP_MEM_ALLOC_ENABLE") == "1"
    print(f"MLP 40-256-256-10 ({n_params:,} parameters), {args.examples} examples, chunk "
          f"{args.chunk_size}, {args.threads} thread(s), torch {torch.__version__}"
          f"{', THP_MEM_ALLOC_ENABLE=1' if huge else ''}")

    run = variants(model, args.chunk_size)
    reference, fast = run["loop"](x, y), run["func"](x, y)  # also warms both up
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-6)
    diff = float((fast - reference).abs().max())
    alpha = run["func_streamed"](x, y)
    torch.testing.assert_close(alpha, run["loop_streamed"](x, y), rtol=1e-6, atol=0.0)
    torch.testing.assert_close(run["coherence"](x, y), alpha, rtol=1e-5, atol=0.0)
    print(f"same result: yes (max |difference| {diff:.1e} over {tuple(fast.shape)}; "
          f"coherence alpha {float(alpha):.6f} on both sides)")
    del reference, fast

    full = time_rounds({"loop": lambda: run["loop"](x, y),
                        "func": lambda: run["func"](x, y)}, args.rounds)
    streamed = time_rounds({"loop": lambda: run["loop_streamed"](x, y),
                            "func": lambda: run["func_streamed"](x, y)}, args.rounds)
    fast = time_rounds({"loop": lambda: run["loop_streamed"](x, y),
                        "func": lambda: run["coherence"](x, y)}, args.rounds)
    alloc = allocation_seconds(args.examples, n_params, args.rounds)
    floor = write_floor_seconds(args.examples, n_params, args.chunk_size, args.rounds)

    print(f"\n{'pair':<9} {'loop s':>8} {'func s':>8} {'ratio (min-max)':>20}")
    speedups = {}
    for label, times in (("full", full), ("streamed", streamed), ("coherence", fast)):
        ratio = Spread.of(ratios(times["loop"], times["func"]))
        speedups[label] = ratio.median
        print(f"{label:<9} {statistics.median(times['loop']):8.3f} "
              f"{statistics.median(times['func']):8.3f} "
              f"{ratio.median:9.1f} ({ratio.low:.1f}-{ratio.high:.1f})")
    print(f"allocating + first touching the {args.examples} x {n_params} result: {alloc:.3f} s "
          "(in both sides of 'full')")
    loop_streamed_s = statistics.median(streamed["loop"])
    print(f"floor: writing {args.examples} x {n_params} floats once into a reused buffer "
          f"{floor:.3f} s; ceiling on the streamed speedup = loop / floor = "
          f"{loop_streamed_s / floor:.1f}x; per example: loop "
          f"{1000 * loop_streamed_s / args.examples:.3f} ms, torch.func "
          f"{1000 * statistics.median(streamed['func']) / args.examples:.3f} ms")

    print(f"\n{'variant (peak extra RSS)':<32} {'peak':>10} {'result':>10} {'transient':>10}")
    labels = {"loop": "loop, full matrix", "func": "torch.func, full matrix",
              "loop_streamed": "loop, streamed", "func_streamed": "torch.func, streamed",
              "coherence": "per-layer norms (m_coherence)"}
    for variant, label in labels.items():
        mem = peak_memory(variant, args)
        print(f"{label:<32} {mem['peak_mib']:>6.1f} MiB {mem['result_mib']:>6.1f} MiB "
              f"{mem['peak_mib'] - mem['result_mib']:>6.1f} MiB")
    print(f"RESULT per_example_grads speedup={speedups['full']:.1f} (the full matrix)")
    print(f"RESULT coherence speedup={speedups['coherence']:.1f} (goal >= {GOAL:g}; "
          f"vmap chunks {speedups['streamed']:.1f})")


if __name__ == "__main__":
    main()
