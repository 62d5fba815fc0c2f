"""Cost of the sharpness and Hessian measures, in units of one full-batch forward+backward pass.

Setting: an MLP 40-256-256-10 (ReLU, 78,858 parameters) on random MNIST-1D-sized data
(``--n`` = 2,000 examples x 40 features, 10 classes). Baseline: one forward+backward pass of the
mean cross-entropy over all examples (``loss.backward()``), timed in the same run. Measured, each
over the same examples, with the defaults of the registered measures:

* worst-case sharpness (``sharpness()`` defaults: adaptive l-inf, rho 0.002, logit
  normalization, m = 128, 20 APGD steps): 16 batches x (20 forward+backward + 1 forward) of 128,
  so about 20x is the floor (more, as 16 passes over batches of 128 cost more than one pass over
  2,000 rows; plus O(#parameters) vector work per step);
* average-case sharpness (adaptive l2, rho 0.1, m = 128, 20 noise draws): 21 forward passes;
* Hessian top eigenvalue (power iteration, at most 100 Hessian-vector products, tol 1e-3);
* Hessian trace (Hutchinson, 100 Rademacher vectors): 100 Hessian-vector products, each a
  forward, a backward with graph and a double backward.

Ratio = measure time / baseline time, the baseline (median of 10 passes) re-measured right
before each measure run; each figure is the median ratio over ``--repeats`` runs.

Run: ``PYTHONPATH=src .venv/bin/python bench/cost_sharpness.py [--repeats 3] [--threads 1]``
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from harness import Spread, make_parser, parse, timed
from heldout.measures.sharpness import hessian_top_eigenvalue, hessian_trace, sharpness


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(40, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                         nn.Linear(256, 10))


def main() -> None:
    parser = make_parser(__doc__)
    parser.add_argument("--n", type=int, default=2000, help="examples (default 2000)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats per measure (default 3)")
    args = parse(parser)

    torch.manual_seed(0)
    model = mlp()
    x, y = torch.randn(args.n, 40), torch.randint(0, 10, (args.n,))
    # a few steps of training so that the weights are not at their initialization
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(50):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    n_params = sum(p.numel() for p in model.parameters())

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    data = (x, y)
    measures: dict[str, Callable[[], float]] = {
        "worst": lambda: sharpness(model, data),
        "average": lambda: sharpness(model, data, 0.1, kind="average", norm="l2"),
        "top_eigenvalue": lambda: hessian_top_eigenvalue(model, data),
        "trace": lambda: hessian_trace(model, data),
    }
    for _ in range(3):  # warm-up
        forward_backward()
    # The baseline is re-measured right before every measure run and each run is divided by its
    # own baseline, so that load from other processes drifting over the run hits both alike.
    ratios: dict[str, list[float]] = {name: [] for name in measures}
    times: dict[str, list[float]] = {name: [] for name in measures}
    baselines: list[float] = []
    values: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, fn in measures.items():
            base = statistics.median(timed(forward_backward)[0].wall for _ in range(10))
            (spent, _), values[name] = timed(fn)
            baselines.append(base)
            times[name].append(spent)
            ratios[name].append(spent / base)
    model.zero_grad(set_to_none=True)

    print(f"MLP 40-256-256-10, {n_params:,} parameters; {args.n} examples; "
          f"threads={args.threads}; repeats={args.repeats}")
    print(f"baseline: one full-batch forward+backward = {statistics.median(baselines) * 1e3:.2f} "
          f"ms (min {min(baselines) * 1e3:.2f}, max {max(baselines) * 1e3:.2f})")
    print(f"{'measure':<16}{'value':>12}{'seconds':>10}{'ratio':>10}{'min':>10}{'max':>10}")
    spreads = {name: Spread.of(r) for name, r in ratios.items()}
    for name, r in spreads.items():
        print(f"{name:<16}{values[name]:>12.4g}{statistics.median(times[name]):>10.3f}"
              f"{r.median:>10.1f}{r.low:>10.1f}{r.high:>10.1f}")
    print("RESULT cost_sharpness "
          + " ".join(f"{k}={r.median:.1f}x" for k, r in spreads.items())
          + " (x one full-batch forward+backward)")


if __name__ == "__main__":
    main()
