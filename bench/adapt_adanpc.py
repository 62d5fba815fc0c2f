"""AdaNPC cost: one AdaNPC batch (featurizer, k-NN vote over a 50,000-entry memory, admission
and eviction) against a plain forward of the same model on the same batch of 256.

Two backbones with 128- (and 64-) dimensional features: (a) a small CNN on 3x32x32 inputs (three 3x3
convolutions with stride 2, 32/64/dim channels, BatchNorm, global average pooling: an
image-sized backbone), (b) an MLP 784-512-512-dim (a cheap backbone: the vote dominates). The
memory is full (45,000 source + 5,000 test entries, capacity 50,000) and every instance is
admitted (β = 0), so each batch also evicts 256 test entries: the steady state of a long
stream. k = 100, τ = 0.1 (the paper's defaults). Both search paths: ``torch`` (matmul +
topk) and ``faiss`` (``IndexFlatIP``, exact). A third pair of rows (β > 1) searches only.

Ratio = AdaNPC batch time / plain forward time, per round, interleaved (issue goal: AdaNPC
adds ≤ 2x a forward pass).

Run: ``PYTHONPATH=src .venv/bin/python bench/adapt_adanpc.py [--rounds 7]``
"""

from __future__ import annotations

import faiss
import torch
import torch.nn.functional as F
from torch import nn

from harness import make_parser, parse, ratio_table, time_rounds, torch_setting
from heldout.adapt.memory import AdaNPC, KNNMemory
from heldout.core.adapter import Source

GOAL = 2.0
MEMORY, SOURCE, BATCH, CLASSES = 50_000, 45_000, 256, 10


def cnn(dim: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c_in, c_out in ((3, 32), (32, 64), (64, dim)):
        layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out),
                   nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(dim, CLASSES))


def mlp(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512),
                         nn.ReLU(), nn.Linear(512, dim), nn.ReLU(), nn.Linear(dim, CLASSES))


def adanpc(model: nn.Module, shape: tuple[int, ...], dim: int, search: str, beta: float,
           g: torch.Generator) -> AdaNPC:
    """An AdaNPC bound to ``model`` whose memory is then replaced by a full 50,000-entry one
    (random features: the search cost does not depend on what they are)."""
    tiny = Source(torch.randn(8, *shape, generator=g), torch.arange(8) % CLASSES)
    adapter = AdaNPC(k=100, tau=0.1, beta=beta, capacity=MEMORY, search=search)  # type: ignore[arg-type]
    adapter.bind(model, tiny)
    features = F.normalize(torch.randn(MEMORY, dim, generator=g), dim=1)
    labels = torch.randint(0, CLASSES, (MEMORY,), generator=g)
    memory = KNNMemory(features[:SOURCE], labels[:SOURCE], MEMORY, search)  # type: ignore[arg-type]
    memory.add(features[SOURCE:], labels[SOURCE:])
    adapter.memory = memory
    return adapter


def bench(label: str, model: nn.Module, shape: tuple[int, ...], dim: int, rounds: int,
          seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    model.eval()
    x = torch.randn(BATCH, *shape, generator=g)
    adapters = {f"adanpc {search}{' search only' if beta > 1 else ''}":
                adanpc(model, shape, dim, search, beta, g)
                for beta in (0.0, 1.5) for search in ("torch", "faiss")}
    for adapter in adapters.values():  # the memory stays full: every batch evicts
        adapter(x)
        assert len(adapter.memory) == MEMORY

    def forward() -> None:
        with torch.no_grad():
            model(x)

    sides = {"forward": forward, **{name: (lambda a=a: a(x)) for name, a in adapters.items()}}
    seconds = time_rounds(sides, rounds)
    print(f"\n[{label}] batch {BATCH}, memory {MEMORY} x {dim}, k 100, {rounds} rounds")
    spreads = ratio_table(seconds, seconds["forward"], width=26, unit="ms/batch")
    best = min(spreads[f"adanpc {s}"].median for s in ("torch", "faiss"))
    print(f"[{label}] RESULT AdaNPC / forward (best path): {best:.2f} (goal <= {GOAL})")
    return best


def main() -> None:
    parser = make_parser(__doc__, rounds=7, seed=True)
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 64],
                        help="feature dimensions to run (default 128 64)")
    args = parse(parser)
    faiss.omp_set_num_threads(args.threads)  # the same thread budget as torch
    print(f"{torch_setting()}, faiss {faiss.__version__}")
    torch.manual_seed(args.seed)
    for dim in args.dims:
        bench(f"a: CNN 3x32x32, features {dim}", cnn(dim), (3, 32, 32), dim, args.rounds,
              args.seed)
        bench(f"b: MLP 784-512-512-{dim}", mlp(dim), (784,), dim, args.rounds, args.seed)


if __name__ == "__main__":
    main()
