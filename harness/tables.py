"""Comparison tables rendered from run records (never typed by hand).

Rows are methods (``random_real`` first), columns are dataset/IPC. The accuracy table pools
the per-model test accuracies of every seed of a cell and shows mean ± std (n = models x
seeds); the cost table shows peak memory and seconds per outer step (median over seeds).
``csv`` gives one tidy row per (method, dataset, ipc) instead.
"""

from __future__ import annotations

import csv
import io
import statistics
from collections import defaultdict
from typing import Any, Iterable

from tabulate import tabulate

from harness.errors import DDBenchError

FORMATS = ("github", "latex", "csv")
BASELINE = "random_real"


def _pm(fmt: str) -> str:
    return r" $\pm$ " if fmt == "latex" else " ± "


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _text(value: str, fmt: str) -> str:
    """A name as table text: LaTeX-escaped for ``latex`` (tables are rendered raw, so that
    ``$\\pm$`` survives, and ``random_real`` would otherwise not compile)."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in value) if fmt == "latex" else value


def _headers(cols: list[tuple[str, int]], fmt: str) -> list[str]:
    return ["method"] + [_text(f"{d} IPC {k}", fmt) for d, k in cols]


def _columns(records: list[dict]) -> list[tuple[str, int]]:
    return sorted({(r["dataset"], r["ipc"]) for r in records})


def _rows(records: list[dict]) -> list[str]:
    methods = sorted({r["method"] for r in records})
    return sorted(methods, key=lambda m: (m != BASELINE, m))


def group(records: Iterable[dict]) -> dict[tuple[str, str, int], list[dict]]:
    cells: dict[tuple[str, str, int], list[dict]] = defaultdict(list)
    for r in records:
        cells[(r["method"], r["dataset"], r["ipc"])].append(r)
    return cells


def summarize(cell_records: list[dict]) -> dict[str, Any]:
    """Pooled accuracy and median cost of one (method, dataset, ipc) cell."""
    accs = [a for r in cell_records for a in r["eval"]["accuracy_per_model"]]
    mean = statistics.fmean(accs)
    std = statistics.pstdev(accs) if len(accs) > 1 else 0.0
    distill = [r["distill"] for r in cell_records]
    return {
        "accuracy_mean": mean,
        "accuracy_std": std,
        "n_models": len(accs),
        "n_seeds": len(cell_records),
        "peak_memory_bytes": statistics.median(d["peak_memory_bytes"] for d in distill),
        "memory_kind": "/".join(sorted({d["memory_kind"] for d in distill})),
        "seconds_per_outer_step": statistics.median(d["seconds_per_outer_step"] for d in distill),
        "outer_steps": statistics.median(d["outer_steps"] for d in distill),
        "devices": sorted({r["hardware"]["device_name"] for r in cell_records}),
    }


def _tabulate(headers: list[str], rows: list[list[str]], fmt: str) -> str:
    return tabulate(rows, headers=headers, tablefmt="latex_raw" if fmt == "latex" else fmt, disable_numparse=True)


def accuracy_table(records: list[dict], fmt: str = "github") -> str:
    cells, cols = group(records), _columns(records)
    headers = _headers(cols, fmt)
    rows = []
    for method in _rows(records):
        row = [_text(method, fmt)]
        for d, k in cols:
            if (method, d, k) in cells:
                s = summarize(cells[(method, d, k)])
                row.append(f"{100 * s['accuracy_mean']:.2f}{_pm(fmt)}{100 * s['accuracy_std']:.2f}")
            else:
                row.append("-")
        rows.append(row)
    return _tabulate(headers, rows, fmt)


def cost_table(records: list[dict], fmt: str = "github") -> str:
    cells, cols = group(records), _columns(records)
    headers = _headers(cols, fmt)
    rows = []
    for method in _rows(records):
        row = [_text(method, fmt)]
        for d, k in cols:
            if (method, d, k) in cells:
                s = summarize(cells[(method, d, k)])
                if s["outer_steps"]:
                    row.append(f"{s['peak_memory_bytes'] / 2**20:.0f} MiB, {s['seconds_per_outer_step']:.3f} s/step")
                else:
                    row.append("no distillation")
            else:
                row.append("-")
        rows.append(row)
    return _tabulate(headers, rows, fmt)


def tidy_csv(records: list[dict]) -> str:
    out = io.StringIO()
    fields = ["method", "dataset", "ipc", "accuracy_mean", "accuracy_std", "n_models", "n_seeds", "outer_steps",
              "seconds_per_outer_step", "peak_memory_bytes", "memory_kind", "devices"]
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    cells = group(records)
    for (method, dataset, ipc) in sorted(cells, key=lambda c: (c[1], c[2], c[0] != BASELINE, c[0])):
        s = summarize(cells[(method, dataset, ipc)])
        writer.writerow({"method": method, "dataset": dataset, "ipc": ipc, **{k: s[k] for k in fields[3:-1]},
                         "devices": ";".join(s["devices"])})
    return out.getvalue()


def render(records: list[dict], fmt: str = "github") -> str:
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}")
    if fmt == "csv":
        return tidy_csv(records)
    devices = sorted({r["hardware"]["device_name"] for r in records})
    kinds = sorted({r["distill"]["memory_kind"] for r in records})
    parts = [
        "Test accuracy (%), mean ± std over models x seeds:" if fmt != "latex" else "% test accuracy (%)",
        accuracy_table(records, fmt),
        "",
        f"Distillation cost (peak memory [{', '.join(kinds)}], seconds per outer step):" if fmt != "latex"
        else "% distillation cost",
        cost_table(records, fmt),
        "",
        f"Devices: {'; '.join(devices)}" if fmt != "latex" else f"% devices: {'; '.join(devices)}",
    ]
    return "\n".join(parts)


def render_view(records: list[dict], view: str = "main", fmt: str = "github") -> str:
    """One of the views ``ddbench table --view`` offers; ``all`` stacks the non-empty ones."""
    from harness.hardness import hardness_table
    from harness.subsets import subset_table

    views = {"main": render, "subsets": subset_table, "hardness": hardness_table}
    if view == "all":
        parts = [views[name](records, fmt) for name in views]
        return "\n\n".join(part for part in parts if part.strip())
    if view not in views:
        raise ValueError(f"view must be one of {', '.join([*views, 'all'])}")
    text = views[view](records, fmt)
    if not text.strip():
        raise DDBenchError(f"no record here has a {view!r} section (enable [{view}] in the suite)", field="--view")
    return text

