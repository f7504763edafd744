"""The evals view: saved distilled sets evaluated again (``ddbench eval``), under another
protocol or on another network, beside each other: the cross-architecture table."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict

from harness.report.compare import SAMPLE_FIELDS, flatten, value_text
from harness.report.schema import EvalRecord
from harness.report.tables import check_format, latex_text, mean_std_text, method_key, register_view, tabulate_rows


def _settings(r: EvalRecord) -> dict:
    protocol = {"protocol": "standard", **r.eval.protocol}
    return {**{k: v for k, v in flatten("eval", protocol).items() if k not in SAMPLE_FIELDS},
            **flatten("model", r.model)}


def _column(r: EvalRecord) -> tuple:
    return (r.dataset, r.ipc, r.eval.protocol.get("protocol", "standard"), r.model.get("name", "?"),
            json.dumps(_settings(r), sort_keys=True))


def _headings(columns: list[tuple]) -> list[str]:
    """``digits IPC 1 ratbptt convnet``, with the settings that differ from a column of the same name."""
    out = []
    for col in columns:
        same = [json.loads(c[4]) for c in columns if c[:4] == col[:4]]
        mine = json.loads(col[4])
        fields = sorted(k for k in {k for s in same for k in s} if len({json.dumps(s.get(k)) for s in same}) > 1)
        suffix = ", ".join(f"{k} {value_text(mine.get(k))}" for k in fields)
        out.append(f"{col[0]} IPC {col[1]} {col[2]} {col[3]}" + (f" ({suffix})" if suffix else ""))
    return out


@register_view("evals", order=40, help="re-evaluations (ddbench eval): protocols and networks side by side",
               reads="evals", hint="evaluate saved sets first: ddbench eval DIR --protocol P [--model M]")
def evals_table(records: list[EvalRecord], fmt: str = "github") -> str:
    """Test accuracy (%) of every re-evaluated set, per (dataset, IPC, protocol, network);
    per-model accuracies pooled over the seeds; each evaluation counted once. Columns that share a
    name but not every protocol and network setting are apart, headed by what differs; a method
    label distilled with several configs is a row per config (``rat_bptt (config 1a2b3c4d)``)."""
    check_format(fmt)
    unique = {r.eval_id: r for r in records}.values()
    configs: dict[str, set[str]] = defaultdict(set)
    for r in unique:
        configs[r.method].add(str(r.config_id))
    cells: dict[tuple, dict[str, list[EvalRecord]]] = defaultdict(lambda: defaultdict(list))
    for r in unique:
        name = r.method if len(configs[r.method]) == 1 else f"{r.method} (config {str(r.config_id)[:8]})"
        cells[_column(r)][name].append(r)
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
                writer.writerow([method, *col[:4], sum(accs) / len(accs), len(accs), len(rs)])
        return out.getvalue()
    headers = ["method", *(latex_text(h, fmt) for h in _headings(columns))]
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
