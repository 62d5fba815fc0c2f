"""``heldout`` — the command line.

    heldout run [CONFIG.yaml] [--task T] [--model M] [--technique T ...] [--callback C ...]
                [--steps N] [--seed S] [--restart] [key=value ...]
    heldout resume RUN
    heldout list [techniques|measures|adapters|tasks|models|claims|callbacks|selection-rules|
                  papers]
    heldout runs ls|show|export ...
    heldout claims list | run [NAME ...] [--seeds N] [--scale ci|full]
    heldout sweep SPEC.yaml [--executor local|ray] [--workers N] [--address A] [--vectorize K]
                [--max-runs N]
    heldout sweep status SWEEP
    heldout flagship [--steps N] [--out DIR]
    heldout report SWEEP|RUN ... [--out DIR]
    heldout measure RUN --measure NAME [--split S] [--set k=v]
    heldout measure rank RUN RUN ... --measure KEY [--gap KEY] [--axis CONFIG.KEY]
    heldout store check | backup PATH
    heldout adapt RUN --adapter NAME --domain SPLIT [--domain SPLIT ...] [--set k=v]

Mistakes in what was typed (unknown key or name, wrong type or range, a file that cannot be
read, a directory that is a file) print one line and exit with status 2, and write no run
record; so do a run another process is training, an unusable checkpoint and a damaged store.
Overrides may come before or after the flags. Read commands (runs, report, sweep status,
claims list) open the store read-only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import yaml

from heldout.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    config_data,
    config_from_dict,
    default_data,
)
from heldout.engine.checkpoint import CheckpointError
from heldout.experiments.sweep import MAX_RUNS
from heldout.registry import CLAIMS, REGISTRIES, UnknownNameError, implementations, papers
from heldout.run.execute import RunFailed, execute
from heldout.store.sqlite import LeaseLost, RunLeased, Store, StoreError, default_home

__all__ = ["main"]


class UsageError(Exception):
    """A mistake in what the user typed: one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors in one line (no usage block) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="heldout", description=__doc__.splitlines()[0])
    parser.add_argument("--home", help="where the runs store lives (default: $HELDOUT_HOME "
                        "or ./.heldout)")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one experiment (resumes it if unfinished)")
    run.add_argument("config", nargs="?", help="a YAML run config")
    run.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    run.add_argument("--task")
    run.add_argument("--model")
    run.add_argument("--technique", action="append", dest="techniques", default=None,
                     help="a technique (repeat to combine)")
    run.add_argument("--callback", action="append", dest="callbacks", default=None,
                     help="a callback that observes training, e.g. grad_norm_report (repeat)")
    run.add_argument("--measure", action="append", dest="measures", default=None,
                     help="a measure (repeat; replaces the default measures)")
    run.add_argument("--steps", type=int)
    run.add_argument("--seed", type=int)
    run.add_argument("--restart", action="store_true", help="discard a previous run of this "
                     "config (its checkpoints and history) and train from step 0")
    run.add_argument("--wait", action="store_true", help="if another process is training "
                     "this run, wait for it instead of exiting with status 2")
    run.add_argument("--sink", help="also send metrics to TensorBoard / MLflow, e.g. "
                     "tensorboard:tb-logs,mlflow:mlflow.db")

    resume = sub.add_parser("resume", help="resume an unfinished run from its last checkpoint")
    resume.add_argument("run")
    resume.add_argument("--restart", action="store_true", help="discard its checkpoints and "
                        "history and train from step 0")
    resume.add_argument("--wait", action="store_true", help="wait for another process "
                        "training it instead of exiting with status 2")

    adapt = sub.add_parser("adapt", help="adapt a finished run to held-out domains at test "
                           "time and record before/after metrics per domain")
    adapt.add_argument("run", help="the finished source run (id, unique prefix or name)")
    adapt.add_argument("--adapter", required=True, help="a registered adapter "
                       "(`heldout list adapters`)")
    adapt.add_argument("--domain", action="append", dest="domains", required=True,
                       help="an evaluation split of the run's task, e.g. test@rot90; repeat "
                       "for a continual stream (state carried across, in order)")
    adapt.add_argument("--set", action="append", dest="params", default=[],
                       metavar="KEY=VALUE", help="an adapter hyper-parameter")
    adapt.add_argument("--batch-size", type=int, default=64, help="test batch size (online "
                       "adapters; default 64)")
    adapt.add_argument("--seed", type=int, default=0, help="seed of the stream order")
    adapt.add_argument("--no-shuffle", action="store_true", help="stream each domain in "
                       "stored order")
    adapt.add_argument("--measure", action="append", dest="measures", default=None,
                       help="a measure on each domain (repeat; default accuracy and ece)")

    lst = sub.add_parser("list", help="list registered components or the papers catalog")
    lst.add_argument("kind", nargs="?", default="techniques",
                     choices=[*REGISTRIES, "papers"])
    lst.add_argument("pattern", nargs="?", default="*", help="a wildcard, e.g. 'grok*'")

    runs = sub.add_parser("runs", help="inspect the runs store")
    runs_sub = runs.add_subparsers(dest="runs_command", required=True)
    ls = runs_sub.add_parser("ls", help="list runs")
    ls.add_argument("--status", choices=["queued", "running", "done", "failed"])
    show = runs_sub.add_parser("show", help="show one run")
    show.add_argument("run")
    export = runs_sub.add_parser("export", help="export runs as CSV or JSON")
    export.add_argument("runs", nargs="*")
    export.add_argument("--format", choices=["csv", "json"], default="csv")
    export.add_argument("--out", help="file to write (default: standard output)")

    claims = sub.add_parser("claims", help="the claims ledger")
    claims_sub = claims.add_subparsers(dest="claims_command", required=True)
    claims_sub.add_parser("list", help="list the claims and their latest verdicts")
    crun = claims_sub.add_parser("run", help="run claims and print their verdicts")
    crun.add_argument("names", nargs="*", help="claims to run (default: all)")
    crun.add_argument("--seeds", type=int, help="number of seeds (0, 1, ... N-1)")
    crun.add_argument("--scale", choices=["ci", "full"], default="full")

    sweep = sub.add_parser("sweep", help="run a sweep spec (again: only what is not done), "
                           "or `sweep status SWEEP`")
    sweep.add_argument("spec", help="a sweep YAML, or `status`")
    sweep.add_argument("sweep", nargs="?", help="status: a sweep id or name")
    sweep.add_argument("--executor", choices=["local", "ray"], default="local")
    sweep.add_argument("--workers", type=int, default=2, help="local: processes at a time; "
                       "ray without --address: CPUs of the local instance")
    sweep.add_argument("--address", help="ray: a cluster to join (default: start a local one)")
    sweep.add_argument("--max-runs", type=int, default=MAX_RUNS, metavar="N",
                       help=f"refuse a plan of more than N runs (default {MAX_RUNS:,})")
    sweep.add_argument("--vectorize", type=int, default=8, metavar="K",
                       help="train up to K runs that differ only in "
                       f"{_vectorize_fields()} together in one process where the model and "
                       "techniques allow (1: never; default 8)")

    flagship = sub.add_parser("flagship", help="the grokking comparison with its HTML report")
    flagship.add_argument("--steps", type=int, default=None)
    flagship.add_argument("--seed", type=int, default=0)
    flagship.add_argument("--out", default="heldout-report")

    measure = sub.add_parser("measure", help="compute a measure post hoc on a run's last "
                             "checkpoint and store it on the run; or `measure rank RUN ...`")
    measure.add_argument("run", help="a run id, or `rank` followed by run ids")
    measure.add_argument("rank_runs", nargs="*", help=argparse.SUPPRESS)
    measure.add_argument("--gap", default="gap/accuracy", help="rank: the generalization gap "
                         "metric (default gap/accuracy)")
    measure.add_argument("--axis", action="append", dest="axes", default=[],
                         help="rank: a hyper-parameter (dotted config key, e.g. optimizer.lr) "
                         "for the granulated Kendall coefficient (repeat)")
    measure.add_argument("--measure", action="append", dest="measures", required=True,
                         help="a registered measure (repeat); rank: a metric key such as "
                         "train/sharpness")
    measure.add_argument("--split", action="append", dest="splits",
                         help="a split (repeat; default: all)")
    measure.add_argument("--set", action="append", dest="params", default=[],
                         metavar="KEY=VALUE", help="a measure parameter (with one --measure)")

    report = sub.add_parser("report", help="write an HTML report of a sweep or of runs")
    report.add_argument("runs", nargs="+", help="a sweep id or name, or run ids")
    report.add_argument("--out", default="heldout-report")
    report.add_argument("--title", default="heldout report")

    store = sub.add_parser("store", help="check the store's integrity, or back it up")
    store_sub = store.add_subparsers(dest="store_command", required=True)
    store_sub.add_parser("check", help="SQLite integrity check: prints ok (exit 0) or the "
                         "problems (exit 1)")
    backup = store_sub.add_parser("backup", help="copy the store with SQLite's online backup")
    backup.add_argument("path", help="the new file")
    return parser


def _vectorize_fields() -> str:
    from heldout.vectorize.trainer import per_copy_fields

    return per_copy_fields()


def _read_only(args: argparse.Namespace) -> bool:
    """Commands that only read the store open it read-only."""
    return (args.command in ("runs", "report", "store")
            or (args.command == "sweep" and args.spec == "status")
            or (args.command == "claims" and args.claims_command == "list"))


def _warn(message, category, *_args, **_kw) -> None:
    print(f"heldout: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "run" and all("=" in a and not a.startswith("-") for a in extra):
        args.overrides = [*args.overrides, *extra]  # overrides given after a flag
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _warn
            if args.command == "list":  # the one command without a store
                return _cmd_list(args, None)
            if args.command == "store" and args.store_command == "check":
                store = Store(_home(args.home), readonly=True, check=False)
            else:
                store = Store(_home(args.home), readonly=_read_only(args))
            return _COMMANDS[args.command](args, store)
    except (ConfigError, UnknownNameError, UsageError, StoreError, CheckpointError,
            RunLeased) as err:
        print(f"heldout: error: {err}", file=sys.stderr)
        return 2
    except (RunFailed, LeaseLost) as err:
        print(f"heldout: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("heldout: interrupted; `heldout run` with the same config resumes",
              file=sys.stderr)
        return 130


def _writable_dir(path: Path, what: str) -> Path:
    """``path`` if it is a directory or can be made one; else a one-line UsageError naming
    the file in the way (``path`` itself, or the nearest existing parent)."""
    for existing in (path, *path.parents):
        if existing.exists():
            if not existing.is_dir():
                where = "is a file" if existing == path else f"is under {existing}, a file"
                raise UsageError(f"{what} {path} {where}; give a directory")
            break
    return path


def _home(home: str | None) -> Path:
    """The store's directory (``--home``, ``$HELDOUT_HOME`` or ``./.heldout``), checked
    before the store opens it."""
    what = "--home" if home is not None else (
        "HELDOUT_HOME" if "HELDOUT_HOME" in os.environ else "the default home")
    return _writable_dir(Path(home) if home is not None else default_home(), what)


# ----------------------------------------------------------------------------- commands
def _cmd_run(args: argparse.Namespace, store: Store) -> int:
    overrides = list(args.overrides)
    if args.config and "=" in args.config:  # no config file, only overrides
        overrides.insert(0, args.config)
        args.config = None
    data = config_data(args.config) if args.config else default_data()
    if args.task:
        data["task"] = {"name": args.task}
    if args.model:
        data["model"] = {"name": args.model}
    for key in ("techniques", "callbacks", "measures"):
        if getattr(args, key) is not None:
            data[key] = [{"name": name} for name in getattr(args, key)]
    for key in ("steps", "seed"):
        if getattr(args, key) is not None:
            data[key] = getattr(args, key)
    cfg = config_from_dict(apply_overrides(data, overrides))  # checked and built once
    if args.sink:
        from heldout.run.sinks import SINKS

        for item in args.sink.split(","):
            name, sep, target = item.partition(":")
            if name not in SINKS or not sep or not target:
                raise UsageError(f"--sink {item!r}: expected NAME:TARGET with NAME one of "
                                 f"{', '.join(SINKS.names())}")
    return _run(cfg, store, restart=args.restart, sinks=args.sink, wait=args.wait)


def _run(cfg: RunConfig, store: Store, restart: bool = False, sinks: str | None = None,
         wait: bool = False) -> int:
    print(f"run {cfg.identity}  (record: {store.path}, files: {store.run_dir(cfg.identity)})",
          flush=True)
    try:
        result = execute(cfg, store, progress=True, restart=restart, sinks=sinks,
                         wait=float("inf") if wait else 0.0)
    except ImportError as err:
        raise UsageError(str(err)) from None
    if result.skipped:
        print(f"run {result.run_id} was already done; its final metrics (--restart to rerun):")
    elif result.resumed_from is not None:
        print(f"resumed run {result.run_id} from step {result.resumed_from}")
    _print_metrics(result.metrics)
    print(f"run {result.run_id} {result.status}; `heldout runs show {result.run_id}`")
    return 0


def _cmd_resume(args: argparse.Namespace, store: Store) -> int:
    try:
        record = store.get_run(args.run)
    except KeyError as err:
        raise UsageError(str(err.args[0])) from None
    cfg = config_from_dict({k: v for k, v in record.config.items()})
    if cfg.identity != record.id:
        raise UsageError(f"run {record.id}: its stored config no longer hashes to its id "
                         f"(components changed since it ran); rerun it with `heldout run`")
    if record.status == "done" and not args.restart:
        print(f"run {record.id} is already done")
        return 0
    return _run(cfg, store, restart=args.restart, wait=args.wait)


def _cmd_list(args: argparse.Namespace, store: Store | None) -> int:
    if args.kind == "papers":
        for p in papers():
            impl = ", ".join(implementations(p.number)) or "-"
            arxiv = p.arxiv or "?"
            print(f"#{p.number:<3} {p.short:<42.42} arXiv:{arxiv:<11} tier {p.tier}  "
                  f"[{p.kind}]  {impl}")
        return 0
    registry = REGISTRIES[args.kind]
    entries = [registry.get(n) for n in registry.names(args.pattern)]
    if not entries:
        raise UsageError(f"no {args.kind} match {args.pattern!r}; "
                         f"valid: {', '.join(registry.names())}")
    for entry in entries:
        cites = "; ".join(f"#{n}" for n in entry.papers)
        print(f"{entry.name:<24} {entry.summary}" + (f"  [{cites}]" if cites else ""))
        defaults = entry.defaults()
        if defaults:
            text = ", ".join(f"{k}={v!r}" for k, v in defaults.items())
            print(textwrap.indent(textwrap.fill(text, 96), " " * 25))
    return 0


def _cmd_runs(args: argparse.Namespace, store: Store) -> int:
    if args.runs_command == "ls":
        records = store.runs(args.status)
        print(f"{'id':<13} {'status':<7} {'step':>6} {'seconds':>8}  task/model/techniques")
        for r in records:
            cfg = r.config
            techs = "+".join(t["name"] for t in cfg.get("techniques", [])) or "-"
            secs = "" if r.seconds is None else f"{r.seconds:.1f}"
            print(f"{r.id:<13} {r.status:<7} {r.step:>6} {secs:>8}  "
                  f"{cfg['task']['name']}/{cfg['model']['name']}/{techs}"
                  + (f"  ({r.name})" if r.name else ""))
        return 0
    if args.runs_command == "show":
        try:
            r = store.get_run(args.run)
        except KeyError as err:
            raise UsageError(str(err.args[0])) from None
        print(f"run {r.id}" + (f" ({r.name})" if r.name else ""))
        print(f"  status   {r.status}" + (f": {r.error}" if r.error else ""))
        print(f"  step     {r.step}   seconds {r.seconds or 0:.1f}   seed {r.seed}")
        print(f"  versions {json.dumps(r.versions)}   git {r.git_sha or '-'}")
        print(f"  files    {store.run_dir(r.id)}")
        print("  config   " + json.dumps(r.config, sort_keys=True))
        _print_metrics(store.final_metrics(r.id), indent="  ")
        for a in store.adaptations(r.id):
            after = a["metrics"].get("after", {})
            accuracy = ", ".join(f"{k.split('/')[0]} {v:.4f}" for k, v in sorted(after.items())
                                 if k.endswith("/accuracy"))
            print(f"  adapted  {a['id']} {a['adapter']} {a['status']}"
                  + (f": accuracy {accuracy}" if accuracy else ""))
        return 0
    try:
        text = store.export(args.runs or None, args.format)
    except KeyError as err:
        raise UsageError(str(err.args[0])) from None
    if args.out:
        out = Path(args.out)
        if out.is_dir():
            raise UsageError(f"--out {out} is a directory; give a file name")
        _writable_dir(out.parent, "--out").mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(text)
    return 0


def _cmd_claims(args: argparse.Namespace, store: Store) -> int:
    if args.claims_command == "list":
        latest = {r["claim"]: r for r in store.claim_results()}
        for entry in CLAIMS.entries():
            done = latest.get(entry.name)
            verdict = f"{done['verdict']} ({done['scale']}, seeds {done['seeds']})" if done \
                else "not run"
            print(f"{entry.name:<26} {verdict:<28} {entry.summary}")
        return 0
    names = args.names or CLAIMS.names()
    entries = [CLAIMS.get(n) for n in names]
    for entry in entries:
        claim = entry.build()
        n = args.seeds if args.seeds is not None else claim.default_seeds
        if n < 1:
            raise UsageError("--seeds must be >= 1")
        verdict = claim.run(list(range(n)), store, scale=args.scale, progress=False)
        print(verdict)
    return 0


def _cmd_measure(args: argparse.Namespace, store: Store) -> int:
    from heldout.config import check_components
    from heldout.run.execute import measure_run

    if args.run == "rank":
        return _rank(args, store)
    if args.rank_runs:
        raise UsageError(f"unexpected arguments {args.rank_runs}; to rank runs by measures "
                         "use `heldout measure rank RUN RUN ... --measure KEY`")

    if args.params and len(args.measures) != 1:
        raise UsageError("--set applies to one measure; give a single --measure")
    params = _key_values(args.params, "--set")
    specs = [{"name": args.measures[0], **params}] if params else list(args.measures)
    components = check_components("measures", specs)
    try:
        metrics = measure_run(store, args.run, components, args.splits)
    except (KeyError, FileNotFoundError) as err:
        raise UsageError(str(err.args[0] if isinstance(err, KeyError) else err)) from None
    _print_metrics(metrics)
    return 0


def _key_values(items: Sequence[str], flag: str) -> dict:
    params = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag} {item!r}: expected KEY=VALUE")
        params[key] = yaml.safe_load(raw)
    return params


def _cmd_adapt(args: argparse.Namespace, store: Store) -> int:
    from heldout.run.adaptation import DEFAULT_MEASURES, AdaptConfig, adapt

    params = _key_values(args.params, "--set")
    cfg = AdaptConfig(args.run, {"name": args.adapter, **params}, tuple(args.domains),
                      batch_size=args.batch_size, shuffle=not args.no_shuffle, seed=args.seed,
                      measures=tuple(args.measures or DEFAULT_MEASURES))
    try:
        result = adapt(cfg, store)
    except (KeyError, ValueError) as err:
        raise UsageError(str(err.args[0] if isinstance(err, KeyError) else err)) from None
    print(f"adaptation {result.id} of run {result.run} with {result.adapter}")
    print(f"{'metric':<36} {'before':>9} {'after':>9}")
    for key in sorted(result.after):
        print(f"{key:<36} {result.before.get(key, float('nan')):>9.4f} "
              f"{result.after[key]:>9.4f}")
    return 0


def _config_value(config: dict, dotted: str) -> object:
    node: object = config
    for part in dotted.split("."):
        if isinstance(node, list):  # techniques / measures: find by name
            node = next((c for c in node if c.get("name") == part), None)
        elif isinstance(node, dict):
            node = node.get(part)
        if node is None:
            raise UsageError(f"--axis {dotted}: no such config key in the runs")
    return node


def _rank(args: argparse.Namespace, store: Store) -> int:
    from heldout.measures.ranking import rank_measures

    if len(args.rank_runs) < 2:
        raise UsageError("measure rank needs at least two runs")
    try:
        records = [store.get_run(r) for r in args.rank_runs]
    except KeyError as err:
        raise UsageError(str(err.args[0])) from None
    rows = []
    for record in records:
        row: dict = dict(store.final_metrics(record.id))
        for axis in args.axes:
            row[axis] = _config_value(record.config, axis)
        rows.append(row)
    missing = [k for k in [*args.measures, args.gap] if not any(k in r for r in rows)]
    if missing:
        known = sorted({k for r in rows for k in r if "/" in k})
        raise UsageError(f"no run has {', '.join(missing)}; metrics available: "
                         f"{', '.join(known)}")
    table = rank_measures(rows, args.measures, args.gap, args.axes)
    print(f"{'measure':<32} {'runs':>5} {'tau':>8}" + ("   psi" if args.axes else ""))
    for row in table:  # an undefined coefficient (too few runs, ties) prints as nan
        line = f"{row['measure']:<32} {row['n_runs']:>5} {row['tau']:>8.3f}"
        print(line + (f" {row['psi']:>6.3f}" if args.axes else ""))
    return 0


def _cmd_sweep(args: argparse.Namespace, store: Store) -> int:
    from heldout.experiments.sweep import load_sweep, run_sweep, sweep_status

    if args.spec == "status":
        if not args.sweep:
            raise UsageError("sweep status needs a sweep id or name")
        try:
            status = sweep_status(store, args.sweep)
        except KeyError as err:
            raise UsageError(str(err.args[0])) from None
        counts = ", ".join(f"{k} {v}" for k, v in sorted(status["counts"].items()))
        print(f"{status['runs']} runs: {counts}")
        for failure in status["failures"]:
            print(f"  failed {failure['run_id']} ({failure['technique']}, seed "
                  f"{failure['seed']}): {failure['error']}")
        return 0
    for flag in ("workers", "vectorize", "max_runs"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} must be >= 1")
    spec = load_sweep(args.spec)

    def report(outcome) -> None:
        line = f"{outcome.run_id} {outcome.status}"
        print(line + (f": {outcome.error}" if outcome.error else ""), flush=True)

    print(f"sweep {spec.name} ({spec.identity}); store {store.path}", flush=True)
    run_sweep(spec, store, executor=args.executor, workers=args.workers,
              address=args.address, progress=report, vectorize=args.vectorize,
              max_runs=args.max_runs)
    status = sweep_status(store, spec.identity)
    print(f"{status['runs']} runs: " + ", ".join(
        f"{k} {v}" for k, v in sorted(status["counts"].items())))
    return 1 if status["failures"] else 0


def _cmd_flagship(args: argparse.Namespace, store: Store) -> int:
    from heldout.flagship import run_flagship

    out = _writable_dir(Path(args.out), "--out")
    path = run_flagship(store, out=out, steps=args.steps, seed=args.seed, progress=True)
    print(f"report: {path.resolve()}")
    return 0


def _cmd_report(args: argparse.Namespace, store: Store) -> int:
    from heldout.report.html import write_report

    out = _writable_dir(Path(args.out), "--out")
    if len(args.runs) == 1:  # a sweep id or name?
        try:
            store.get_sweep(args.runs[0])
        except KeyError:
            pass
        else:
            from heldout.report.sweep import write_sweep_report

            path = write_sweep_report(store, args.runs[0], out)
            print(f"report: {path.resolve()}")
            return 0
    try:
        ids = [store.get_run(r).id for r in args.runs]
    except KeyError as err:
        raise UsageError(str(err.args[0])) from None
    path = write_report(store, ids, out, title=args.title)
    print(f"report: {path.resolve()}")
    return 0


def _cmd_store(args: argparse.Namespace, store: Store) -> int:
    if args.store_command == "backup":
        print(f"backed up {store.path} to {store.backup(args.path)}")
        return 0
    problems = store.check(full=True)
    print("\n".join(problems))
    return 0 if problems == ["ok"] else 1


def _print_metrics(metrics: dict[str, float], indent: str = "") -> None:
    for key in sorted(metrics):
        print(f"{indent}{key:<28} {metrics[key]:.6g}")


_COMMANDS = {
    "run": _cmd_run,
    "resume": _cmd_resume,
    "list": _cmd_list,
    "runs": _cmd_runs,
    "claims": _cmd_claims,
    "flagship": _cmd_flagship,
    "sweep": _cmd_sweep,
    "measure": _cmd_measure,
    "report": _cmd_report,
    "store": _cmd_store,
    "adapt": _cmd_adapt,
}

if __name__ == "__main__":
    sys.exit(main())
