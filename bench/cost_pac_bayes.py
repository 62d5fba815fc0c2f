"""PAC-Bayes flatness cost: the σ′ search of Jiang et al.
(heldout.measures.flatness.pac_bayes_sigma, paper defaults: bisection on [0, 2],
depth 15, 10 Monte-Carlo draws, target 0.1, tolerance 0.01)
and its magnitude-aware variant (ε = 1e-3), as a multiple of one full-batch forward pass.

Setting: an MLP 40 → 256 → 256 → 10 (ReLU, 78,858 parameters) trained briefly (Adam, full batch)
on 2,000 examples labelled by a random linear teacher, so that its train error is low and weight
noise raises it. The baseline is one forward pass over the 2,000 examples under ``no_grad`` in
eval mode, measured in the same run and interleaved with the searches (median of ``--repeats``
passes per round). Each search is timed whole; its forward passes are counted with a hook, so the
table also shows the time per pass relative to the baseline pass (the overhead of drawing noise
and copying weights; 1.0 is the floor). The worst-case sharpness radius α′ (20 ascent steps per
bisection step) is timed too, for information.

Ratio = search time / one forward pass, in wall time and in process CPU time (steadier on a
shared, loaded machine). The search's floor is its number of forward passes (1 + 15 × 10 = 151
when the bisection runs to full depth; fewer when it stops early at the tolerance); the goal is a
CPU time per pass of at most 1.25 forward passes.

Run: ``PYTHONPATH=src .venv/bin/python bench/cost_pac_bayes.py [--rounds 5] [--threads 1]``
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from harness import Seconds, make_parser, parse, rotations, timed
from heldout.measures.flatness import pac_bayes_sigma, sharpness_radius

GOAL_PER_PASS = 1.25


def build(seed: int, n: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 40, generator=g)
    teacher = torch.randn(40, 10, generator=g)
    y = (x @ teacher).argmax(dim=1)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(40, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                          nn.Linear(256, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), x, y


def forward_time(model: nn.Module, x: torch.Tensor, repeats: int) -> Seconds:
    """Median wall and CPU seconds of one forward pass."""
    with torch.no_grad():
        passes = [timed(lambda: model(x))[0] for _ in range(repeats)]
    return Seconds(statistics.median(p.wall for p in passes),
                   statistics.median(p.cpu for p in passes))


def main() -> None:
    parser = make_parser(__doc__, rounds=5)
    parser.add_argument("--repeats", type=int, default=50, help="baseline passes per round")
    parser.add_argument("--examples", type=int, default=2000)
    args = parse(parser)
    model, x, y = build(0, args.examples)
    with torch.no_grad():
        error = float((model(x).argmax(1) != y).double().mean())
    n_params = sum(p.numel() for p in model.parameters())
    print(f"MLP 40-256-256-10, {n_params} parameters, {len(y)} examples, train error "
          f"{error:.3f}, {args.threads} thread(s)")

    passes = [0]
    model.register_forward_pre_hook(lambda *_: passes.__setitem__(0, passes[0] + 1))
    sides: dict[str, Callable[[], float]] = {
        "sigma": lambda: pac_bayes_sigma(model, x, y),
        "sigma_magnitude_aware": lambda: pac_bayes_sigma(model, x, y, magnitude_eps=1e-3),
        "alpha_worst_case (info)": lambda: sharpness_radius(model, x, y),
    }
    # per round and side: wall ratio, CPU ratio, value, forward passes, baseline wall seconds
    rows: dict[str, list[tuple[float, float, float, int, float]]] = {n: [] for n in sides}
    for _, order in rotations(sides, args.rounds):
        for name in order:
            base_wall, base_cpu = forward_time(model, x, args.repeats)
            passes[0] = 0
            (wall, cpu), value = timed(sides[name])
            rows[name].append((wall / base_wall, cpu / base_cpu, value, passes[0], base_wall))

    print(f"{'search':24s} {'value':>7s} {'passes':>6s} {'wall ratio (min-max)':>23s} "
          f"{'cpu ratio':>9s} {'wall/pass':>9s} {'cpu/pass':>8s} {'fwd ms':>6s}")
    summary = {}
    for name, results in rows.items():
        wall = [r[0] for r in results]
        cpu = [r[1] for r in results]
        wall_pass = statistics.median(r[0] / r[3] for r in results)
        cpu_pass = statistics.median(r[1] / r[3] for r in results)
        summary[name] = (statistics.median(wall), statistics.median(cpu), wall_pass, cpu_pass)
        base_ms = 1e3 * statistics.median(r[4] for r in results)
        print(f"{name:24s} {results[0][2]:7.4f} {results[0][3]:6d} "
              f"{summary[name][0]:8.1f} ({min(wall):6.1f}-{max(wall):6.1f}) "
              f"{summary[name][1]:9.1f} {wall_pass:9.2f} {cpu_pass:8.2f} {base_ms:6.2f}")
    sigma, magnitude = summary["sigma"], summary["sigma_magnitude_aware"]
    per_pass = max(sigma[3], magnitude[3])
    print(f"RESULT cost_pac_bayes ratio={sigma[0]:.1f} magnitude_ratio={magnitude[0]:.1f} "
          f"cpu_ratio={sigma[1]:.1f} cpu_magnitude_ratio={magnitude[1]:.1f} "
          f"cpu_per_pass={per_pass:.2f} (goal cpu_per_pass <= {GOAL_PER_PASS})")


if __name__ == "__main__":
    main()
