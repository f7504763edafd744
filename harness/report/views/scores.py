"""The scores view: DD-Ranking's scores of every cell (the ``scores`` record section): LRS and
ARS, and the accuracies they come from (full data, distilled with hard labels, random subset)."""

from __future__ import annotations

import csv
import io
import statistics

from harness.report.schema import RunRecord
from harness.report.tables import check_format, failed_text, group, latex_text, method_key, register_view, tabulate_rows

FIELDS = ("lrs", "ars", "hlr", "ior")


def _mean(rs: list[RunRecord], key: str) -> float:
    return statistics.fmean(getattr(r.scores, key) for r in rs)


def _acc(rs: list[RunRecord], key: str) -> float:
    return statistics.fmean(r.scores.accuracies[key] for r in rs)


@register_view("scores", order=5, help="DD-Ranking scores: LRS, ARS, HLR, IOR")
def scores_table(records: list[RunRecord], fmt: str = "github") -> str:
    """One row per (dataset, IPC, method); scores averaged over the seeds (in %, as DD-Ranking's
    leaderboard shows them); a diverged or failed cell shows as such."""
    check_format(fmt)
    cells = group(records)
    rows, tidy = [], []
    for (method, dataset, ipc), rs in sorted(cells.items(), key=lambda c: (c[0][1], c[0][2], method_key(c[0][0]))):
        failed = failed_text(rs)
        with_scores = [r for r in rs if r.scores is not None and r.scores.lrs is not None]
        if failed and any(r.scores is not None for r in rs):
            rows.append([latex_text(method, fmt), latex_text(dataset, fmt), str(ipc), failed, *[""] * 7])
            continue
        if len(with_scores) != len(rs):
            continue
        values = {k: _mean(rs, k) for k in FIELDS}
        accs = {k: _acc(rs, k) for k in ("full_data", "distilled_hard_labels", "random")}
        rows.append([latex_text(method, fmt), latex_text(dataset, fmt), str(ipc),
                     *(f"{100 * values[k]:.2f}" for k in FIELDS),
                     *(f"{100 * accs[k]:.2f}" for k in accs), str(len(rs))])
        tidy.append({"method": method, "dataset": dataset, "ipc": ipc, **values, **accs, "n_seeds": len(rs),
                     "protocol": rs[0].scores.protocol})
    if not rows:
        return ""
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=["method", "dataset", "ipc", *FIELDS, "full_data",
                                                 "distilled_hard_labels", "random", "n_seeds", "protocol"],
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(tidy)
        return out.getvalue()
    headers = ["method", "dataset", "IPC", "LRS", "ARS", "HLR", "IOR", "acc full data", "acc hard labels",
               "acc random", "seeds"]
    title = ("DD-Ranking scores (%; accuracies as fractions in the formulas, the record's own protocol): "
             "LRS = label-robust, ARS = augmentation-robust, HLR = full data - hard-label accuracy, "
             "IOR = accuracy - random real subset")
    table = tabulate_rows([latex_text(h, fmt) for h in headers], rows, fmt)
    return f"% {latex_text(title)}\n{table}" if fmt == "latex" else f"{title}\n{table}"
