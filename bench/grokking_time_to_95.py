"""Time to 95% test accuracy with ⊥AdamW on (a + b) mod 113 (the C1 setting): heldout against a
straightforward one-hot PyTorch script, in the same run.

heldout: ``heldout.run.assembly.build(grokking_config(seed, steps, "perp_grad"))`` with measures set
to accuracy only and ``eval_every=5``, no store, no checkpoint; a logger stops the Trainer at the
first evaluation whose test accuracy is >= 0.95 (it evaluates train and test, as configured).

Baseline: a plain script on the 226-dim concatenated one-hot inputs, ``nn.Linear(226, 200,
bias=False)``-ReLU-``Linear(200, 200)``-ReLU-``Linear(200, 113)``, its own inline ⊥Grad
(per parameter g⊥ = g − (w·g / (w·w + 1e-30)) w, rescaled to ‖g‖) around AdamW (lr 0.01, betas
(0.9, 0.999), eps 1e-8, wd 0), test accuracy every 5 steps. For a fair comparison it uses the
same split (heldout's ModularArithmetic splits, one-hot encoded) and the same initialization
(heldout's initial weights; TokenLinear's weight has the one-hot Linear's shape (200, 226)).

Both stop when test accuracy first reaches >= 0.95 (checked every 5 steps). Timed: the training
loop to that point (heldout: ``fit()``; baseline: its loop); setup (heldout: ``build``; baseline:
one-hot encoding and model) is shown separately. Rounds rotate which side goes first.
Ratio = heldout time / baseline time (goal <= 0.5).

Four sides: heldout and the baseline in float32 (the like-for-like ratio); heldout with
``precision=bf16-mixed`` (training forward under bfloat16 autocast, float32 weights, optimizer,
loss and evaluation); and, so that the reader can separate what the embedding layer gives from
what bfloat16 gives, the baseline with the same autocast around its training forward. Three
ratios are printed: float32/float32, bf16-mixed/float32 script, bf16-mixed/bf16 script.

``--profile`` adds a per-phase breakdown of a training step on both sides, a per-layer timing,
torch.profiler's top operators for heldout, and a what-if: heldout with benchmark-local
changes (evaluate test only; TokenLinear's lookup as one ``embedding_bag``), timed against the
baseline. src/ is never modified.

Run: ``PYTHONPATH=src .venv/bin/python bench/grokking_time_to_95.py [--rounds 5] [--profile]``
"""

from __future__ import annotations

import statistics
import types
from collections.abc import Callable, Mapping
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from harness import (
    Spread,
    clock,
    elapsed,
    interleave,
    make_parser,
    parse,
    ratios,
    rotations,
    timed,
    torch_setting,
)
from heldout.claims import named
from heldout.claims.grokking import grokking_config
from heldout.engine.trainer import Trainer
from heldout.measures import evaluate
from heldout.methods.gradients import perpendicular_gradient
from heldout.registry import TASKS
from heldout.run.assembly import build

GOAL = 0.5
THRESHOLD = 0.95
EVAL_EVERY = 5


# ---------------------------------------------------------------------------------- heldout
class StopAtAccuracy:
    """A Trainer logger that ends ``fit`` at the first evaluation with test accuracy >= t."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.trainer: Trainer | None = None
        self.hit: int | None = None

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        if self.hit is None and metrics["test/accuracy"] >= self.threshold:
            self.hit = step
            assert self.trainer is not None
            self.trainer.state.max_steps = step  # the loop ends after this evaluation

    def flush(self) -> None:
        pass


def heldout_config(seed: int, max_steps: int, p: int, precision: str = "float32"):
    return replace(grokking_config(seed, max_steps, named("perp_grad"), p),
                   measures=named("accuracy"), eval_every=EVAL_EVERY, precision=precision)


def build_heldout(seed: int, max_steps: int, p: int,
                  precision: str = "float32") -> tuple[Trainer, StopAtAccuracy]:
    stop = StopAtAccuracy(THRESHOLD)
    trainer = build(heldout_config(seed, max_steps, p, precision), loggers=[stop])
    # the same work as the baseline: test accuracy every EVAL_EVERY steps (the C1 config
    # would also evaluate the train split, which the time-to-95% question does not need)
    trainer.eval_data = {"test": trainer.eval_data["test"]}
    stop.trainer = trainer
    return trainer, stop


def run_heldout(seed: int, max_steps: int, p: int, precision: str = "float32",
                tweak: Callable[[Trainer], None] | None = None) -> dict[str, float | int | None]:
    """Build and train heldout's side; ``tweak`` (the what-if of ``--profile``) changes the
    built Trainer before training (src/ is untouched)."""
    setup, (trainer, stop) = timed(lambda: build_heldout(seed, max_steps, p, precision))
    if tweak is not None:
        tweak(trainer)
    train, _ = timed(trainer.fit)
    return {"setup": setup.wall, "train": train.wall, "steps": stop.hit,
            "steps_run": trainer.state.step}


# ---------------------------------------------------------------------------------- baseline
class Data:
    """heldout's split and initial weights, handed to the baseline (not timed)."""

    def __init__(self, seed: int, p: int) -> None:
        splits = TASKS.build("modular", p=p, train_fraction=0.4).splits(seed)
        trainer, _ = build_heldout(seed, 1, p)
        self.p = p
        self.x_train, self.y_train = splits.train.x, splits.train.y
        self.x_test, self.y_test = splits.test.x, splits.test.y
        self.init = [w.detach().clone() for w in trainer.model.parameters()]


def one_hot_pairs(x: Tensor, p: int) -> Tensor:
    return torch.cat([F.one_hot(x[:, 0], p), F.one_hot(x[:, 1], p)], dim=1).float()


def baseline_model(data: Data) -> nn.Sequential:
    p = data.p
    model = nn.Sequential(
        nn.Linear(2 * p, 200, bias=False), nn.ReLU(),
        nn.Linear(200, 200, bias=False), nn.ReLU(),
        nn.Linear(200, p, bias=False),
    )
    with torch.no_grad():
        for param, init in zip(model.parameters(), data.init, strict=True):
            param.copy_(init)  # same shapes: TokenLinear's weight is (200, 2p)
    return model


@torch.no_grad()
def perp_(params) -> None:
    for w in params:
        g = w.grad
        proj = torch.dot(w.flatten(), g.flatten()) / (torch.dot(w.flatten(), w.flatten()) + 1e-30)
        g_perp = g - proj * w
        g_perp *= g.norm() / (g_perp.norm() + 1e-30)
        g.copy_(g_perp)


def run_baseline(data: Data, max_steps: int,
                 bf16: bool = False) -> dict[str, float | int | None]:
    """The plain script; ``bf16``: its training forward under bfloat16 autocast (the same
    mixed precision as heldout's ``precision=bf16-mixed``; evaluation stays float32)."""
    start = clock()
    x_train, x_test = one_hot_pairs(data.x_train, data.p), one_hot_pairs(data.x_test, data.p)
    y_train, y_test = data.y_train, data.y_test
    model = baseline_model(data)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.0)
    setup = elapsed(start)
    start = clock()
    hit = None
    step = 0
    for step in range(1, max_steps + 1):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x_train)
        loss = F.cross_entropy(logits.float(), y_train)
        loss.backward()
        perp_(model.parameters())
        opt.step()
        if step % EVAL_EVERY == 0:
            with torch.no_grad():
                acc = (model(x_test).argmax(dim=1) == y_test).float().mean().item()
            if acc >= THRESHOLD:
                hit = step
                break
    return {"setup": setup.wall, "train": elapsed(start).wall, "steps": hit, "steps_run": step}


# ---------------------------------------------------------------------------------- profile
def _median_ms(samples: list[float]) -> float:
    return 1e3 * statistics.median(samples)


def phase_breakdown(seed: int, p: int, data: Data, iters: int) -> None:
    """Median time of each phase of a training step, both sides, interleaved."""
    trainer, _ = build_heldout(seed, 10_000, p)
    hmodel, hopt = trainer.model, trainer.optimizer
    hx, hy = trainer.batches.x, trainer.batches.y
    loss_fn = trainer.loss_fn
    bmodel = baseline_model(data)
    bopt = torch.optim.AdamW(bmodel.parameters(), lr=0.01)
    bx, by = one_hot_pairs(data.x_train, p), data.y_train
    bxt, byt = one_hot_pairs(data.x_test, p), data.y_test

    def h_project() -> None:
        with torch.no_grad():
            for w in hmodel.parameters():
                w.grad.copy_(perpendicular_gradient(w, w.grad))

    def b_eval_test() -> None:
        with torch.no_grad():
            (bmodel(bxt).argmax(dim=1) == byt).float().mean().item()

    splits = {"train": (hx, hy), "test": trainer.eval_data["test"]}

    def eval_split(name: str) -> Callable[[], None]:
        return lambda: evaluate(hmodel, {name: splits[name]}, trainer.measures)

    times: dict[str, dict[str, list[float]]] = {"heldout": {}, "baseline": {}}

    def record(side: str, phase: str, fn: Callable[[], object]) -> object:
        seconds, out = timed(fn)
        times[side].setdefault(phase, []).append(seconds.wall)
        return out

    for _, order in rotations(["heldout", "baseline"], iters + 2):
        for side in order:
            if side == "heldout":
                hopt.zero_grad(set_to_none=True)
                logits = record(side, "forward", lambda: hmodel(hx))
                loss = record(side, "loss", lambda lg=logits: loss_fn(lg, hy))
                record(side, "backward", loss.backward)
                record(side, "⊥ projection", h_project)
                record(side, "AdamW step", hopt.base.step)
                record(side, "eval train (1/5)", eval_split("train"))
                record(side, "eval test (1/5)", eval_split("test"))
            else:
                bopt.zero_grad(set_to_none=True)
                logits = record(side, "forward", lambda: bmodel(bx))
                loss = record(side, "loss", lambda lg=logits: F.cross_entropy(lg, by))
                record(side, "backward", loss.backward)
                record(side, "⊥ projection", lambda: perp_(bmodel.parameters()))
                record(side, "AdamW step", bopt.step)
                record(side, "eval train (1/5)", lambda: None)
                record(side, "eval test (1/5)", b_eval_test)
    phases = list(times["heldout"])
    print(f"\nPROFILE per-step phase breakdown (median of {iters} interleaved iterations; "
          f"evaluation amortized over eval_every={EVAL_EVERY})")
    print(f"{'phase':>18} {'heldout ms':>11} {'baseline ms':>12} {'saved ms':>9}")
    tot = {"heldout": 0.0, "baseline": 0.0}
    for phase in phases:
        scale = 1 / EVAL_EVERY if phase.startswith("eval") else 1.0
        ms = {s: scale * _median_ms(times[s][phase][2:]) for s in tot}
        for s in tot:
            tot[s] += ms[s]
        print(f"{phase:>18} {ms['heldout']:>11.2f} {ms['baseline']:>12.2f} "
              f"{ms['baseline'] - ms['heldout']:>9.2f}")
    ratio = tot["heldout"] / tot["baseline"]
    print(f"{'sum':>18} {tot['heldout']:>11.2f} {tot['baseline']:>12.2f} "
          f"{tot['baseline'] - tot['heldout']:>9.2f}   (ratio {ratio:.3f})")

    # where the forward/backward time goes, layer by layer (heldout's first layer vs one-hot)
    first_tok, first_oh = hmodel.linear1, bmodel[0]
    hidden = torch.relu(first_tok(hx)).detach()
    def forward_backward(layer: nn.Module, inp: Tensor) -> Callable[[], None]:
        def run() -> None:
            layer.zero_grad(set_to_none=True)
            layer(inp).sum().backward()

        return run

    layer_times: dict[str, list[float]] = {}
    for _ in range(iters):
        for name, layer, inp in (("TokenLinear 2x113->200", first_tok, hx),
                                 ("one-hot Linear 226->200", first_oh, bx),
                                 ("Linear 200->200", bmodel[2], hidden),
                                 ("Linear 200->113 (head)", bmodel[4], hidden)):
            seconds, _ = timed(forward_backward(layer, inp))
            layer_times.setdefault(name, []).append(seconds.wall)
    with torch.no_grad():
        test_first = [timed(lambda: first_oh(bxt))[0].wall for _ in range(iters)]
    print(f"\nPROFILE forward+backward of each layer on the {len(hy)} training rows "
          "(weight grad only)")
    for name, samples in layer_times.items():
        print(f"{name:>26} {_median_ms(samples):>8.2f} ms")
    first_cost = (_median_ms(layer_times["one-hot Linear 226->200"])
                  + _median_ms(test_first) / EVAL_EVERY)
    print(f"Amdahl bound: a heldout that computed its first layer for free and evaluated only "
          f"test would take >= {(tot['baseline'] - first_cost) / tot['baseline']:.2f} of the "
          f"baseline's step (the baseline's first layer is {first_cost:.1f} of its "
          f"{tot['baseline']:.1f} ms)")


def _bag_forward(self: nn.Linear, input: Tensor) -> Tensor:
    """What-if: TokenLinear's lookup as one fused embedding_bag on a contiguous weight.T."""
    offsets = torch.arange(self.n_positions, device=input.device) * self.vocab
    out = F.embedding_bag(input + offsets, self.weight.t().contiguous(), mode="sum")
    return out if self.bias is None else out + self.bias


def evaluate_test_only(trainer: Trainer) -> None:
    trainer.eval_data = {"test": trainer.eval_data["test"]}


def embedding_bag_layer(trainer: Trainer) -> None:
    evaluate_test_only(trainer)
    layer = trainer.model.linear1
    layer.forward = types.MethodType(_bag_forward, layer)


def what_if(seed: int, p: int, data: Data, max_steps: int, rounds: int) -> None:
    variants: dict[str, Callable[[Trainer], None] | None] = {
        "as configured": None,
        "evaluate test only": evaluate_test_only,
        "+ embedding_bag layer": embedding_bag_layer,
    }
    results: dict[str, list[float]] = {name: [] for name in variants}
    steps: dict[str, set] = {name: set() for name in variants}
    for _, names in rotations(variants, rounds):
        base = run_baseline(data, max_steps)
        for name in names:
            out = run_heldout(seed, max_steps, p, tweak=variants[name])
            results[name].append(out["train"] / base["train"])
            steps[name].add(out["steps"])
    print(f"\nPROFILE what-if (benchmark-local changes to the heldout side, {rounds} rounds, "
          "each against a baseline run just before it)")
    print(f"{'heldout variant':>24} {'ratio median':>13} {'min':>7} {'max':>7}  steps to 95%")
    for name, r in results.items():
        spread = Spread.of(r)
        print(f"{name:>24} {spread.median:>13.3f} {spread.low:>7.3f} {spread.high:>7.3f}  "
              f"{sorted(steps[name], key=str)}")


def torch_profile(seed: int, p: int, steps: int) -> None:
    trainer = build(heldout_config(seed, steps, p))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        trainer.fit()
    print(f"\nPROFILE torch.profiler, heldout fit() for {steps} steps "
          f"(eval every {EVAL_EVERY}), top operators by self CPU time")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15,
                                    max_name_column_width=40))


# ---------------------------------------------------------------------------------- main
def main() -> None:
    parser = make_parser(__doc__, rounds=5, seed=True)
    parser.add_argument("--p", type=int, default=113)
    parser.add_argument("--max-steps", type=int, default=1000, help="give up after this many")
    parser.add_argument("--profile", action="store_true", help="print where the time goes")
    parser.add_argument("--profile-iters", type=int, default=20)
    parser.add_argument("--whatif-rounds", type=int, default=3)
    args = parse(parser)
    print(f"{torch_setting()}; ⊥AdamW on "
          f"(a+b) mod {args.p}, seed {args.seed}, stop at test accuracy >= {THRESHOLD} "
          f"(checked every {EVAL_EVERY} steps)")
    data = Data(args.seed, args.p)
    sides: dict[str, Callable[[], dict]] = {
        "heldout": lambda: run_heldout(args.seed, args.max_steps, args.p),
        "baseline": lambda: run_baseline(data, args.max_steps),
        "heldout bf16": lambda: run_heldout(args.seed, args.max_steps, args.p, "bf16-mixed"),
        "baseline bf16": lambda: run_baseline(data, args.max_steps, bf16=True),
    }
    run_heldout(args.seed, 10, args.p)  # warm-up
    run_heldout(args.seed, 10, args.p, "bf16-mixed")
    run_baseline(data, 10)
    run_baseline(data, 10, bf16=True)

    rows: list[dict[str, dict]] = []
    print(f"\n{'round':>5} " + " ".join(f"{name + ' s':>16} {'steps':>5}" for name in sides))
    for r, out in interleave(sides, args.rounds):
        rows.append(out)
        print(f"{r:>5} " + " ".join(f"{out[n]['train']:>16.3f} {out[n]['steps']!s:>5}"
                                    for n in sides))

    def ratio(num: str, den: str) -> list[float]:
        return ratios([row[num]["train"] for row in rows], [row[den]["train"] for row in rows])

    print()
    for name in sides:
        steps = sorted({row[name]["steps"] for row in rows}, key=str)
        per_step = 1e3 * statistics.median(row[name]["train"] / row[name]["steps_run"]
                                           for row in rows)
        setup = 1e3 * statistics.median(row[name]["setup"] for row in rows)
        print(f"{name:>14}: steps to {THRESHOLD:.0%} {steps}, {per_step:.2f} ms/step "
              f"(incl. evaluation), setup {setup:.1f} ms")
    fp32 = ratio("heldout", "baseline")
    total = [(row["heldout"]["train"] + row["heldout"]["setup"])
             / (row["baseline"]["train"] + row["baseline"]["setup"]) for row in rows]
    mixed = ratio("heldout bf16", "baseline")
    same = ratio("heldout bf16", "baseline bf16")
    for label, r in (("heldout / baseline, both float32", fp32),
                     ("heldout bf16-mixed / baseline float32", mixed),
                     ("heldout bf16-mixed / baseline bf16 autocast", same)):
        print(f"ratio {label:<44} {Spread.of(r).text()}")
    print(f"ratio incl. setup (float32) median {statistics.median(total):.3f}")
    if args.profile:
        phase_breakdown(args.seed, args.p, data, args.profile_iters)
        torch_profile(args.seed, args.p, 50)
        what_if(args.seed, args.p, data, args.max_steps, args.whatif_rounds)
    print(f"RESULT grokking_time_to_95 ratio={statistics.median(fp32):.2f} float32, "
          f"{statistics.median(mixed):.2f} with precision=bf16-mixed against the float32 "
          f"script (goal <= {GOAL})")


if __name__ == "__main__":
    main()
