"""The ``ddbench`` command line: ``list``, ``run SUITE``, ``plan SUITE``, ``eval RECORDS``, ``table DIR``,
``publish DIR... --out SITE``.

May import every layer below :mod:`harness.run`; nothing imports it.

Bad input (unknown method or dataset, an invalid config value, a missing dataset root, a
malformed suite, a corrupt record or checkpoint) prints one line naming the file and the
field and exits with status 2, before anything is written (``eval`` checks every record's
distilled set first: a file name leaving the record's folder, or a set whose SHA-256 is not the
record's, is such a line). A cell that diverges or fails is recorded as such, the other cells
run, and the exit status is 1; so is a record ``publish`` refuses (the same checks: one line
naming it, the rest of the site built, the record noted on the index). SIGINT (Ctrl-C) and
SIGTERM checkpoint the running cell's last completed step and exit with 130 / 143 and one line;
a result that cannot be written (a full disk) exits with 74 and one line. Running the same
command again resumes.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from harness.core.errors import DDBenchError
from harness.core.provenance import ddbench_version

EXIT_USAGE = 2
EXIT_STORAGE = 74  # EX_IOERR: a result could not be written (a full disk)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C
DEFAULT_OUT = Path("results/runs")


def _cmd_list(args: argparse.Namespace) -> int:
    from harness.data import list_datasets
    from harness.evaluation import ANALYSES
    from harness.method import list_methods
    from harness.report import VIEWS

    print("methods:")
    for name, doc in list_methods().items():
        print(f"  {name:14s} {doc}")
    print("datasets:")
    for name, doc in list_datasets().items():
        print(f"  {name:14s} {doc}")
    print("analyses:")
    for name, cls in ANALYSES.items():
        print(f"  {name:14s} {cls.description()}")
    print("table views:")
    for name, view in VIEWS.items():
        print(f"  {name:14s} {view.help}")
    suites_dir = Path(args.suites)
    print(f"suites ({suites_dir}):")
    for path in sorted(suites_dir.glob("*.toml")):
        print(f"  {path}")
    return 0


def _split(text: str | None, convert=str, option: str = "") -> list | None:
    if text is None:
        return None
    try:
        return [convert(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DDBenchError(f"expected a comma-separated list of integers, got {text!r}", field=option) from None


def _selection(args: argparse.Namespace):
    """The suite (with ``--set`` overrides) and the cell filters of ``run`` and ``plan``."""
    from harness.run.suite import load_suite

    suite = load_suite(args.suite, overrides=args.set or ())
    methods = None if args.methods is None else suite.select_methods(_split(args.methods))
    return suite, dict(methods=methods, datasets=_split(args.datasets), ipcs=_split(args.ipcs, int, "--ipcs"),
                       seeds=_split(args.seeds, int, "--seeds"))


def _cmd_run(args: argparse.Namespace) -> int:
    from harness.run.runner import run_suite

    if args.dry_run:
        return _cmd_plan(args)
    suite, selection = _selection(args)
    if args.executor != "ray" and any(v is not None for v in (args.address, args.gpus_per_cell, args.cpus_per_cell,
                                                              args.max_retries)):
        raise DDBenchError("--address, --gpus-per-cell, --cpus-per-cell and --max-retries go with --executor ray",
                           field="--executor")
    live_log = None
    if args.log:
        from harness.run.livelog import LiveLog

        live_log = LiveLog.parse(args.log)
        live_log.check()
    executor = None
    if args.executor == "ray":
        from harness.run.ray_executor import RayExecutor

        executor = RayExecutor.from_options(suite, address=args.address, gpus_per_cell=args.gpus_per_cell,
                                            cpus_per_cell=args.cpus_per_cell, max_retries=args.max_retries,
                                            progress=not args.quiet)
        executor.live_log = live_log
    elif live_log is not None:
        from harness.run.executors import LocalExecutor

        executor = LocalExecutor(live_log=live_log)
    report = run_suite(suite, Path(args.out), progress=not args.quiet, executor=executor, **selection)
    print(report.summary())
    print(f"{len(report.records)} records under {args.out}")
    if args.table:
        _print_table(Path(args.out) / suite.name, "github")
    return report.exit_status


def _cmd_eval(args: argparse.Namespace) -> int:
    from harness.run.reeval import reevaluate
    from harness.run.suite import apply_override

    protocol: dict = {"protocol": args.protocol}
    for override in args.set or ():
        apply_override(protocol, override)
    written = reevaluate(Path(args.target), protocol, args.model, args.validation_size, args.device)
    print(f"{len(written)} evaluation records (ddbench table DIR --view evals)")
    return 0


def _cmd_publish(args: argparse.Namespace) -> int:
    from harness.core.progress import showing_progress
    from harness.report.site.build import publish

    with showing_progress(not args.quiet):
        done = publish([Path(d) for d in args.dirs], Path(args.out), configs=_configs(args), latest=args.latest)
    for line in done["refused"]:
        print(f"ddbench: refused: {line}", file=sys.stderr)
    evaluations = f", {done['evaluations']} re-evaluations" if done["evaluations"] else ""
    refused = f", {len(done['refused'])} refused" if done["refused"] else ""
    print(f"site: {args.out}/index.html ({done['records']} records in {done['boards']} comparable groups{evaluations}"
          f"{refused}, {done['runs']} run pages, {done['bytes'] / 1024:.0f} KB)")
    return 1 if done["refused"] else 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from harness.run.plan import plan_suite

    suite, selection = _selection(args)
    plan_suite(suite, Path(args.out), time_steps=args.time_steps, timing=not getattr(args, "no_timing", False),
               show=lambda text: print(text, flush=True), **selection)
    return 0


def _configs(args: argparse.Namespace) -> list[str]:
    """``--config`` prefixes (repeated or comma-separated)."""
    return [c.strip() for option in args.config or () for c in option.split(",") if c.strip()]


def _print_table(roots: Path | list[Path], fmt: str, view: str = "main", configs: list[str] = (),
                 latest: bool = False) -> None:
    from harness.report import iter_eval_records, iter_records, render_view
    from harness.report.compare import select_records

    roots = [roots] if isinstance(roots, Path) else roots
    where = ", ".join(map(str, roots))
    records = [record for root in roots for _, record in iter_records(root)]
    if not records:
        raise DDBenchError("no run records found", file=where)
    evals = [record for root in roots for _, record in iter_eval_records(root)]
    try:
        records = select_records(records, configs, latest)
        kept = {r.run_id for r in records}
        print(render_view(records, view, fmt, [e for e in evals if e.of_run in kept]))
    except DDBenchError as err:
        raise err.located(file=where) from None


def _cmd_table(args: argparse.Namespace) -> int:
    from harness.report import view_names

    if args.view not in (*view_names(), "all"):
        raise DDBenchError(f"unknown view {args.view!r} (registered: {', '.join(view_names())}, all)", field="--view")
    roots = [Path(d) for d in args.dirs]
    for root in roots:
        if not root.is_dir():
            raise DDBenchError("not a directory", file=str(root))
    _print_table(roots, args.format, args.view, _configs(args), args.latest)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddbench", description="Benchmark harness for dataset distillation.")
    parser.add_argument("--version", action="version", version=f"ddbench {ddbench_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every cell")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="registered methods, datasets and suites")
    p.add_argument("--suites", default="suites", help="folder of suite files (default: suites)")
    p.set_defaults(func=_cmd_list)

    def selection(p: argparse.ArgumentParser) -> None:
        p.add_argument("suite", help="suite TOML file")
        p.add_argument("--out", default=str(DEFAULT_OUT), help=f"output folder (default: {DEFAULT_OUT})")
        p.add_argument("--methods", help="comma-separated method labels of the suite (default: all)")
        p.add_argument("--datasets", help="comma-separated datasets of the suite's grid (default: all)")
        p.add_argument("--ipcs", help="comma-separated IPCs of the suite's grid (default: all)")
        p.add_argument("--seeds", help="comma-separated seeds of the suite's grid (default: all)")
        p.add_argument("--set", action="append", metavar="FIELD=VALUE",
                       help="override a suite field, e.g. --set budget.outer_steps=50 --set methods.rat_bptt.window=30 "
                            "(TOML values; validated like the file; recorded in every record)")
        p.add_argument("--time-steps", type=int, default=2, help=argparse.SUPPRESS)

    p = sub.add_parser("run", help="run a suite")
    selection(p)
    p.add_argument("--table", action="store_true", help="print the suite's comparison table when done")
    p.add_argument("--dry-run", action="store_true", help="list the cells and estimate their time (ddbench plan)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars (the per-cell lines stay)")
    p.add_argument("--log", nargs="+", metavar="KIND", help="a live log of every cell's history: "
                   "tensorboard DIR, or wandb [DIR] (offline mode)")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: cells one after another in this process (default); ray: every cell a Ray task")
    p.add_argument("--address", help="ray: join this cluster (ray start --head ...); default: a local instance")
    p.add_argument("--gpus-per-cell", type=float, help="ray: GPUs per cell (suite: hardware.ray.gpus_per_cell)")
    p.add_argument("--cpus-per-cell", type=float, help="ray: CPUs per cell (suite: hardware.ray.cpus_per_cell)")
    p.add_argument("--max-retries", type=int, help="ray: reruns of a cell whose worker died (hardware.ray.max_retries)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("eval", help="evaluate saved distilled sets under another protocol or network")
    p.add_argument("target", help="a run record (.json) or a folder of them")
    p.add_argument("--protocol", default="standard", help="standard | ratbptt | dsa (default: standard)")
    p.add_argument("--model", help="the network to train: convnet | resnet18 (default: the one distilled with)")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", help="a protocol option, e.g. --set models=3")
    p.add_argument("--validation-size", type=int, default=0,
                   help="hold out this many training images for a protocol that selects (if the run had none)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.set_defaults(func=_cmd_eval)

    def select(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", action="append", metavar="ID",
                       help="only the configs whose id starts with ID (repeatable or comma-separated; the tables name "
                            "the ids where a cell has several)")
        p.add_argument("--latest", action="store_true",
                       help="per cell (suite, dataset, IPC, method) only the config that finished last")

    p = sub.add_parser("publish", help="a static leaderboard site (HTML, plots, image grids) from run records")
    p.add_argument("dirs", nargs="+", help="folders of run records")
    p.add_argument("--out", default="site", help="the site's folder (default: site)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    select(p)
    p.set_defaults(func=_cmd_publish)

    p = sub.add_parser("plan", help="list a suite's cells, time an outer step of each setting, estimate the total")
    selection(p)
    p.add_argument("--no-timing", action="store_true", help="only list and count the cells (nothing set up or timed)")
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser("table", help="render comparison tables from run records: one column or board per "
                                     "comparable group (dataset, IPC, model, protocol, budget, label kind)")
    p.add_argument("dirs", nargs="+", metavar="dir", help="folders of run records (searched recursively)")
    p.add_argument("--format", choices=("github", "latex", "csv"), default="github")
    p.add_argument("--view", default="main", help="a registered table view (ddbench list shows them), or all: "
                                                  "every non-empty view (default: main)")
    select(p)
    p.set_defaults(func=_cmd_table)
    return parser


def main(argv: list[str] | None = None) -> int:
    from harness.core.errors import StorageError
    from harness.run.interrupt import StopRequested, stop_on_signals

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        with stop_on_signals():  # SIGTERM and SIGINT: one line and 128 + the signal, never silence
            return args.func(args)
    except StorageError as err:  # a full disk: nothing partial was written; the same command resumes
        print(f"ddbench: error: {err}; run the same command again once it can be written", file=sys.stderr)
        return EXIT_STORAGE
    except DDBenchError as err:
        print(f"ddbench: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except StopRequested as stop:
        if not stop.reported:  # between cells, or while loading: nothing of a cell was lost
            print(f"ddbench: {stop.name}: stopped; run the same command again to resume", file=sys.stderr)
        return 128 + stop.signum
    except KeyboardInterrupt:
        # The runner checkpoints as it goes; a traceback would only hide that.
        print("ddbench: interrupted; run the same command again to resume from the last checkpoint",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Output piped into e.g. `head`, which closed early: not an error of ddbench's.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
