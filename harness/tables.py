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

# The shared scaffolding of every table view (this module's, ``harness.subsets.subset_table`` and
# ``harness.hardness.hardness_table``): formats, method order, ± and LaTeX text, pooling, tabulate.


def check_format(fmt: str) -> None:
    """Raise ``ValueError`` unless ``fmt`` is one of :data:`FORMATS`."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}")


def method_key(method: str) -> tuple[bool, str]:
    """Sort key of a method: the baseline (``random_real``) first, then by name."""
    return (method != BASELINE, method)


def method_order(methods: Iterable[str]) -> list[str]:
    """The distinct ``methods``, baseline first, then by name."""
    return sorted(set(methods), key=method_key)


def pm(fmt: str) -> str:
    """The ± between a mean and its std: ``$\\pm$`` in LaTeX (tables are rendered raw)."""
    return r" $\pm$ " if fmt == "latex" else " ± "


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_text(value: str, fmt: str = "latex") -> str:
    """``value`` as table text: LaTeX-escaped when ``fmt`` is ``latex`` (the default), else as is.

    Tables are rendered raw (``latex_raw``) so that ``$\\pm$`` survives; every name, header,
    title and legend must therefore be escaped here, or ``random_real`` would not compile.
    """
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in value) if fmt == "latex" else value


def pooled(values: Iterable[float]) -> tuple[float, float] | None:
    """Mean and population std of pooled per-model accuracies (std 0 for one value); ``None`` if empty."""
    values = list(values)
    if not values:
        return None
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def tabulate_rows(headers: list[str], rows: list[list[str]], fmt: str) -> str:
    """A github or (raw) LaTeX table of already formatted text cells (no number parsing)."""
    return tabulate(rows, headers=headers, tablefmt="latex_raw" if fmt == "latex" else fmt, disable_numparse=True)


def _headers(cols: list[tuple[str, int]], fmt: str) -> list[str]:
    return ["method"] + [latex_text(f"{d} IPC {k}", fmt) for d, k in cols]


def _columns(records: list[dict]) -> list[tuple[str, int]]:
    return sorted({(r["dataset"], r["ipc"]) for r in records})


def group(records: Iterable[dict]) -> dict[tuple[str, str, int], list[dict]]:
    """Records by (method, dataset, ipc): the seeds of one setting.

    Records of one cell made with different configs (their ``config_id``: the run id without
    the seed) would be pooled as if they were seeds: refused, naming the cell.
    """
    cells: dict[tuple[str, str, int], list[dict]] = defaultdict(list)
    for r in records:
        cells[(r["method"], r["dataset"], r["ipc"])].append(r)
    for (method, dataset, ipc), rs in cells.items():
        configs = sorted({str(r.get("config_id")) for r in rs})
        if len(configs) > 1:
            raise DDBenchError(f"{method} on {dataset} IPC {ipc}: records of {len(configs)} different configs "
                               f"({', '.join(configs)}) would be pooled as seeds; render them from separate folders",
                               field="config_id")
    return cells


def summarize(cell_records: list[dict]) -> dict[str, Any]:
    """Pooled accuracy and median cost of one (method, dataset, ipc) cell."""
    accs = [a for r in cell_records for a in r["eval"]["accuracy_per_model"]]
    mean, std = pooled(accs)
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


def accuracy_table(records: list[dict], fmt: str = "github") -> str:
    cells, cols = group(records), _columns(records)
    headers = _headers(cols, fmt)
    rows = []
    for method in method_order(r["method"] for r in records):
        row = [latex_text(method, fmt)]
        for d, k in cols:
            if (method, d, k) in cells:
                s = summarize(cells[(method, d, k)])
                row.append(f"{100 * s['accuracy_mean']:.2f}{pm(fmt)}{100 * s['accuracy_std']:.2f}")
            else:
                row.append("-")
        rows.append(row)
    return tabulate_rows(headers, rows, fmt)


def cost_table(records: list[dict], fmt: str = "github") -> str:
    cells, cols = group(records), _columns(records)
    headers = _headers(cols, fmt)
    rows = []
    for method in method_order(r["method"] for r in records):
        row = [latex_text(method, fmt)]
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
    return tabulate_rows(headers, rows, fmt)


def tidy_csv(records: list[dict]) -> str:
    out = io.StringIO()
    fields = ["method", "dataset", "ipc", "accuracy_mean", "accuracy_std", "n_models", "n_seeds", "outer_steps",
              "seconds_per_outer_step", "peak_memory_bytes", "memory_kind", "devices"]
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    cells = group(records)
    for (method, dataset, ipc) in sorted(cells, key=lambda c: (c[1], c[2], *method_key(c[0]))):
        s = summarize(cells[(method, dataset, ipc)])
        writer.writerow({"method": method, "dataset": dataset, "ipc": ipc, **{k: s[k] for k in fields[3:-1]},
                         "devices": ";".join(s["devices"])})
    return out.getvalue()


def render(records: list[dict], fmt: str = "github") -> str:
    check_format(fmt)
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
    """One of the views ``ddbench table --view`` offers; ``all`` stacks the non-empty ones.

    A view with nothing to show returns ``""`` (in every format); asked for alone, that is a
    :class:`DDBenchError` naming ``--view``.
    """
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

