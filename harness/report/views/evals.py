"""The evals view: saved distilled sets evaluated again (``ddbench eval``), under another
protocol or on another network, beside each other: the cross-architecture table."""

from __future__ import annotations

import csv
import io
from collections import defaultdict

from harness.report.schema import EvalRecord
from harness.report.tables import check_format, latex_text, mean_std_text, method_key, register_view, tabulate_rows


def _column(r: EvalRecord) -> tuple[str, int, str, str]:
    return r.dataset, r.ipc, r.eval.protocol.get("protocol", "standard"), r.model.get("name", "?")


@register_view("evals", order=40, help="re-evaluations (ddbench eval): protocols and networks side by side",
               reads="evals")
def evals_table(records: list[EvalRecord], fmt: str = "github") -> str:
    """Test accuracy (%) of every re-evaluated set, per (dataset, IPC, protocol, network);
    per-model accuracies pooled over the seeds; each evaluation counted once."""
    check_format(fmt)
    unique = {r.eval_id: r for r in records}.values()
    cells: dict[tuple, dict[str, list[EvalRecord]]] = defaultdict(lambda: defaultdict(list))
    for r in unique:
        cells[_column(r)][r.method].append(r)
    if not cells:
        return ""
    columns = sorted(cells)
    methods = sorted({m for col in cells.values() for m in col}, key=method_key)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["method", "dataset", "ipc", "protocol", "model", "accuracy_mean", "n_models", "n_seeds"])
        for col in columns:
            for method, rs in sorted(cells[col].items(), key=lambda c: method_key(c[0])):
                accs = [a for r in rs for a in r.eval.accuracy_per_model]
                writer.writerow([method, *col, sum(accs) / len(accs), len(accs), len(rs)])
        return out.getvalue()
    headers = ["method", *(latex_text(f"{d} IPC {k} {p} {m}", fmt) for d, k, p, m in columns)]
    rows = []
    for method in methods:
        row = [latex_text(method, fmt)]
        for col in columns:
            rs = cells[col].get(method, [])
            accs = [a for r in rs for a in r.eval.accuracy_per_model]
            row.append(f"{mean_std_text(accs, fmt)} (n={len(accs)})" if accs else "-")
        rows.append(row)
    title = "Re-evaluated test accuracy (%), mean ± std over models x seeds, by dataset, IPC, protocol, network:"
    return f"{title}\n{tabulate_rows(headers, rows, fmt)}" if fmt != "latex" else tabulate_rows(headers, rows, fmt)
