"""The main view: accuracy and cost per method x (dataset, IPC).

Rows are methods (``random_real`` first), columns are dataset/IPC. The accuracy table pools
the per-model test accuracies of every seed of a cell and shows mean ± std with the models x
seeds and the outer steps behind it (a diverged or failed run shows as such, without a
number); the cost table shows peak memory and seconds per outer step (median over seeds).
``csv`` gives one tidy row per (method, dataset, ipc) instead.
"""

from __future__ import annotations

import csv
import io

from harness.report.schema import RunRecord
from harness.report.tables import (accuracy_text, check_format, group, latex_text, method_key, method_order,
                                   register_view, summarize, tabulate_rows)


def _headers(cols: list[tuple[str, int]], fmt: str) -> list[str]:
    return ["method"] + [latex_text(f"{d} IPC {k}", fmt) for d, k in cols]


def _columns(records: list[RunRecord]) -> list[tuple[str, int]]:
    return sorted({(r.dataset, r.ipc) for r in records})


def accuracy_table(records: list[RunRecord], fmt: str = "github") -> str:
    cells, cols = group(records), _columns(records)
    headers = _headers(cols, fmt)
    rows = []
    for method in method_order(r.method for r in records):
        row = [latex_text(method, fmt)]
        for d, k in cols:
            if (method, d, k) in cells:
                row.append(accuracy_text(cells[(method, d, k)], fmt))
            else:
                row.append("-")
        rows.append(row)
    return tabulate_rows(headers, rows, fmt)


def cost_table(records: list[RunRecord], fmt: str = "github") -> str:
    cells, cols = group(records), _columns(records)
    headers = _headers(cols, fmt)
    rows = []
    for method in method_order(r.method for r in records):
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


def tidy_csv(records: list[RunRecord]) -> str:
    out = io.StringIO()
    fields = ["method", "dataset", "ipc", "status", "accuracy_mean", "accuracy_std", "n_models", "n_seeds", "outer_steps",
              "seconds_per_outer_step", "peak_memory_bytes", "memory_kind", "devices"]
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    cells = group(records)
    for (method, dataset, ipc) in sorted(cells, key=lambda c: (c[1], c[2], *method_key(c[0]))):
        s = summarize(cells[(method, dataset, ipc)])
        writer.writerow({"method": method, "dataset": dataset, "ipc": ipc, **{k: s[k] for k in fields[3:-1]},
                         "devices": ";".join(s["devices"])})
    return out.getvalue()


@register_view("main", order=0, help="accuracy and cost")
def render(records: list[RunRecord], fmt: str = "github") -> str:
    """Accuracy (mean ± std over models x seeds) and cost (peak memory, seconds per outer step)."""
    check_format(fmt)
    if fmt == "csv":
        return tidy_csv(records)
    devices = sorted({r.hardware.device_name for r in records})
    kinds = sorted({r.distill.memory_kind for r in records})
    parts = [
        "Test accuracy (%), mean ± std over models x seeds (models x seeds, outer steps):" if fmt != "latex"
        else "% test accuracy (%), mean and std over models x seeds (models x seeds, outer steps)",
        accuracy_table(records, fmt),
        "",
        f"Distillation cost (peak memory [{', '.join(kinds)}], seconds per outer step):" if fmt != "latex"
        else "% distillation cost",
        cost_table(records, fmt),
        "",
        f"Devices: {'; '.join(devices)}" if fmt != "latex" else f"% devices: {'; '.join(devices)}",
    ]
    return "\n".join(parts)


