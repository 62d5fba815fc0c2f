"""Embedding cache: a frozen-encoder experiment's second pass over the text suite against its
first (heldout.models.embedding_cache), with all-MiniLM-L6-v2 in ``mode: frozen``.

(a) Feature pass: ``features()`` of every row of ``text_topics`` (all domains, 1,200 texts at
the defaults, max_length 32) in batches of 64, with a cold cache (a fresh directory) and then
a warm one (a new cache object on the same directory: what a second run in a new process
reads). Each round uses a new directory; the model is loaded once. Ratio = cold / warm
(goal >= 10). The warm features must equal the cold ones bit for bit.

(b) End to end: three heldout runs of a linear probe (``task=text_topics model=minilm
model.mode=frozen``, ``--steps`` steps, batch 32, evaluated at the end): without the cache,
with a cold cache, then with the warm cache (new stores, same cache directory). Each includes
loading MiniLM (~2 s here). Their metrics must be identical; times and ratios printed.

Run: ``PYTHONPATH=src:bench .venv/bin/python bench/text_embedding_cache.py [--rounds 3]``
"""

from __future__ import annotations

import os
import tempfile
import time

import torch

from harness import Spread, make_parser, parse, torch_setting
from heldout.config import RunConfig, parse_overrides
from heldout.models.embedding_cache import EmbeddingCache
from heldout.registry import MODELS, TASKS
from heldout.run.execute import execute
from heldout.store import Store

GOAL = 10.0


def feature_pass(model: torch.nn.Module, rows: torch.Tensor, batch: int = 64
                 ) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = torch.cat([model.features(rows[i:i + batch]) for i in range(0, len(rows), batch)])
    return time.perf_counter() - start, out


def timed_run(cfg: RunConfig, home: str, cache: str | None) -> tuple[float, dict]:
    if cache is None:
        os.environ["HELDOUT_EMBEDDING_CACHE"] = "0"
    else:
        os.environ.pop("HELDOUT_EMBEDDING_CACHE", None)
        os.environ["HELDOUT_CACHE"] = cache
    start = time.perf_counter()
    result = execute(cfg, Store(home))
    return time.perf_counter() - start, dict(result.metrics)


def main() -> None:
    parser = make_parser(__doc__, rounds=3)
    parser.add_argument("--steps", type=int, default=60, help="steps of each run in (b)")
    args = parse(parser)
    print(torch_setting())
    task = TASKS.build("text_topics")
    splits = task.splits(0)
    rows = torch.cat([split.x for name, split in splits.items() if name.startswith("test@")
                      or name.startswith("val@")] + [splits.train.x])
    rows = torch.unique(rows, dim=0)
    model = MODELS.build("minilm", mode="frozen").build(splits.input, splits.num_classes)
    ratios = []
    for round_ in range(args.rounds):
        directory = tempfile.mkdtemp(prefix="heldout-bench-embeddings-")
        model.embedding_cache = EmbeddingCache(directory)
        cold, first = feature_pass(model, rows)
        model.embedding_cache = EmbeddingCache(directory)
        warm, second = feature_pass(model, rows)
        assert torch.equal(first, second), "cached features differ from computed ones"
        assert model.embedding_cache.hits == len(rows) and model.embedding_cache.misses == 0
        ratios.append(cold / warm)
        print(f"(a) round {round_}: {len(rows)} rows, cold {cold:.2f} s, warm {warm:.3f} s, "
              f"ratio {cold / warm:.1f}")
    spread = Spread.of(ratios)
    print(f"RESULT embedding_cache feature pass ratio={spread.median:.1f} (goal >= {GOAL}) "
          f"{spread.text(1)}")

    cfg = parse_overrides(RunConfig(), [
        "task=text_topics", "model=minilm", "model.mode=frozen", "optimizer.lr=0.01",
        f"steps={args.steps}", "batch_size=32", f"eval_every={args.steps}",
        f"checkpoint_every={args.steps}"])
    cache = tempfile.mkdtemp(prefix="heldout-bench-cache-")
    plain, plain_metrics = timed_run(cfg, tempfile.mkdtemp(), None)
    cold, cold_metrics = timed_run(cfg, tempfile.mkdtemp(), cache)
    warm, warm_metrics = timed_run(cfg, tempfile.mkdtemp(), cache)
    assert plain_metrics == cold_metrics == warm_metrics, "the cache changed a run's metrics"
    print(f"(b) {args.steps}-step linear-probe runs: no cache {plain:.1f} s, cold cache "
          f"{cold:.1f} s, warm cache {warm:.1f} s; metrics identical")
    print(f"RESULT embedding_cache run ratio cold/warm={cold / warm:.1f} "
          f"no-cache/warm={plain / warm:.1f}")


if __name__ == "__main__":
    main()
