"""The ``ddbench`` command line: ``list``, ``run SUITE``, ``table DIR``.

May import every layer below :mod:`harness.run`; nothing imports it.

Bad input (unknown method or dataset, an invalid config value, a missing dataset root, a
malformed suite, a corrupt record or checkpoint) prints one line naming the file and the
field and exits with status 2, before anything is written. Ctrl-C exits with status 130 and
one line; running the same command again resumes from the last checkpoint.
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


def _cmd_run(args: argparse.Namespace) -> int:
    from harness.run.runner import run_suite
    from harness.run.suite import load_suite

    suite = load_suite(args.suite)
    methods = None if args.methods is None else suite.select_methods([m.strip() for m in args.methods.split(",")
                                                                      if m.strip()])
    records = run_suite(suite, Path(args.out), methods=methods, progress=not args.quiet)
    print(f"{len(records)} records under {args.out}")
    if args.table:
        _print_table(Path(args.out) / suite.name, "github")
    return 0


def _print_table(root: Path, fmt: str, view: str = "main") -> None:
    from harness.report import iter_records, render_view

    records = [record for _, record in iter_records(root)]
    if not records:
        raise DDBenchError("no run records found", file=str(root))
    try:
        print(render_view(records, view, fmt))
    except DDBenchError as err:
        raise err.located(file=str(root)) from None


def _cmd_table(args: argparse.Namespace) -> int:
    from harness.report import view_names

    if args.view not in (*view_names(), "all"):
        raise DDBenchError(f"unknown view {args.view!r} (registered: {', '.join(view_names())}, all)", field="--view")
    root = Path(args.dir)
    if not root.is_dir():
        raise DDBenchError("not a directory", file=str(root))
    _print_table(root, args.format, args.view)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddbench", description="Benchmark harness for dataset distillation.")
    parser.add_argument("--version", action="version", version=f"ddbench {ddbench_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every cell")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="registered methods, datasets and suites")
    p.add_argument("--suites", default="suites", help="folder of suite files (default: suites)")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("run", help="run a suite")
    p.add_argument("suite", help="suite TOML file")
    p.add_argument("--out", default=str(DEFAULT_OUT), help=f"output folder (default: {DEFAULT_OUT})")
    p.add_argument("--methods", help="comma-separated method labels of the suite to run (default: all)")
    p.add_argument("--table", action="store_true", help="print the suite's comparison table when done")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("table", help="render a comparison table from run records")
    p.add_argument("dir", help="folder of run records (searched recursively)")
    p.add_argument("--format", choices=("github", "latex", "csv"), default="github")
    p.add_argument("--view", default="main", help="a registered table view (ddbench list shows them), or all: "
                                                  "every non-empty view (default: main)")
    p.set_defaults(func=_cmd_table)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.func(args)
    except DDBenchError as err:
        print(f"ddbench: error: {err}", file=sys.stderr)
        return EXIT_USAGE
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
