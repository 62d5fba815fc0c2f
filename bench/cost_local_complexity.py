"""Cost of local complexity and of the information plane, in full-batch forward passes.

Setting: heldout's MLP 40-256-256-10 (ReLU, ~79k parameters) on 2,000 random examples with
40 features (unit Gaussian) and 10 classes. Baseline: one full-batch forward pass of the 2,000
examples (eval mode, ``no_grad``), measured in the same run. Sides:

* ``local_complexity``: :func:`heldout.measures.complexity.local_complexity` on all 2,000
  points at the paper's defaults (50 vertices = 25 orthonormal directions, radius 0.5), i.e.
  100,000 vertex rows through the network; expected ~50 forwards plus the sign bookkeeping;
* ``information_plane``: ``InformationPlane()`` (adaptive binning, 30 bins) computed on the
  split, including its own forward pass with hooks;
* ``information_plane_kde``: the same with ``estimator="kde"`` (O(N²) pairwise distances).

Sides are interleaved (the order rotates each round), the forward baseline is averaged over
``--forwards`` calls per round, and each side's time is divided by that round's forward time.
Ratio: median over ``--rounds`` (min and max shown).

Run: ``PYTHONPATH=src .venv/bin/python bench/cost_local_complexity.py [--rounds 5]``
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch

from harness import make_parser, parse, ratio_table, rotations, timed, torch_setting
from heldout.core.inputs import InputSpec
from heldout.core.measure import EvalContext
from heldout.measures.complexity import local_complexity
from heldout.measures.information import InformationPlane
from heldout.models import MLP


def main() -> None:
    parser = make_parser(__doc__, rounds=5, seed=True)
    parser.add_argument("--forwards", type=int, default=20, help="forward calls per round")
    parser.add_argument("--n", type=int, default=2000, help="examples")
    parser.add_argument("--features", type=int, default=40)
    parser.add_argument("--radius", type=float, default=0.5)
    parser.add_argument("--n-vertices", type=int, default=50)
    args = parse(parser)

    gen = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.n, args.features, generator=gen)
    y = torch.randint(0, 10, (args.n,), generator=gen)
    torch.manual_seed(args.seed)
    model = MLP(hidden=(256, 256)).build(InputSpec("continuous", (args.features,)), 10)
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{torch_setting()}; MLP "
          f"{args.features}-256-256-10, {n_params:,} parameters; {args.n} examples")

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def lc() -> None:
        local_complexity(model, x, radius=args.radius, n_vertices=args.n_vertices,
                         generator=torch.Generator().manual_seed(args.seed))

    def plane(estimator: str) -> Callable[[], None]:
        measure = InformationPlane(estimator=estimator)
        return lambda: measure.compute(EvalContext(model, "train", (x, y)))

    sides: dict[str, Callable[[], None]] = {
        "local_complexity": lc,
        "information_plane": plane("binning"),
        "information_plane_kde": plane("kde"),
    }
    for fn in (forward, *sides.values()):  # warm-up
        fn()
    names = list(sides)
    seconds: dict[str, list[float]] = {name: [] for name in ["forward", *names]}
    for _, order in rotations(names, args.rounds):
        forwards, _ = timed(lambda: [forward() for _ in range(args.forwards)])
        seconds["forward"].append(forwards.wall / args.forwards)
        for name in order:
            seconds[name].append(timed(sides[name])[0].wall)

    print(f"\n{args.rounds} rounds; forward: median "
          f"{1e3 * statistics.median(seconds['forward']):.2f} ms")
    spreads = ratio_table({name: seconds[name] for name in names}, seconds["forward"], width=22,
                          unit="ms", digits=1, ms_digits=1)
    ratios = {name: spread.median for name, spread in spreads.items()}
    print(f"RESULT cost_local_complexity ratio={ratios['local_complexity']:.1f} "
          f"information_plane_ratio={ratios['information_plane']:.1f} "
          f"information_plane_kde_ratio={ratios['information_plane_kde']:.1f} "
          f"(x one full-batch forward of {args.n} examples; local complexity: "
          f"{args.n_vertices} vertices, r={args.radius})")


if __name__ == "__main__":
    main()
