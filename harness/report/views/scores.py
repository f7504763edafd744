"""The scores view: DD-Ranking's scores of every cell (the ``scores`` record section): LRS and
ARS, and the accuracies they come from (full data, distilled with hard labels, random subset)."""

from __future__ import annotations

import csv
import io
import statistics

from harness.report.compare import comparable_groups
from harness.report.schema import RunRecord
from harness.report.tables import check_format, failed_text, latex_text, register_view, tabulate_rows

FIELDS = ("lrs", "ars", "hlr", "ior")


def _mean(rs: list[RunRecord], key: str) -> float:
    return statistics.fmean(getattr(r.scores, key) for r in rs)


def _acc(rs: list[RunRecord], key: str) -> float:
    return statistics.fmean(r.scores.accuracies[key] for r in rs)


@register_view("scores", order=5, help="DD-Ranking scores: LRS, ARS, HLR, IOR", hint="enable [ddranking] in the suite")
def scores_table(records: list[RunRecord], fmt: str = "github") -> str:
    """One row per (comparable group, method config); scores averaged over the seeds (in %, as
    DD-Ranking's leaderboard shows them); a diverged or failed cell shows as such. The IPC names
    the group's setting where another group of its dataset and IPC differs."""
    check_format(fmt)
    rows, tidy = [], []
    cells = [(g, name, rs) for g in comparable_groups(records) for name, rs in g.rows.items()]
    for g, method, rs in cells:
        dataset, ipc = g.dataset, latex_text(f"{g.ipc} ({g.suffix})" if g.suffix else str(g.ipc), fmt)
        failed = failed_text(rs)
        with_scores = [r for r in rs if r.scores is not None and r.scores.lrs is not None]
        if failed and any(r.scores is not None for r in rs):
            rows.append([latex_text(method, fmt), latex_text(dataset, fmt), ipc, failed, *[""] * 7])
            continue
        if len(with_scores) != len(rs):
            continue
        values = {k: _mean(rs, k) for k in FIELDS}
        accs = {k: _acc(rs, k) for k in ("full_data", "distilled_hard_labels", "random")}
        rows.append([latex_text(method, fmt), latex_text(dataset, fmt), ipc,
                     *(f"{100 * values[k]:.2f}" for k in FIELDS),
                     *(f"{100 * accs[k]:.2f}" for k in accs), str(len(rs))])
        tidy.append({"method": method, "dataset": dataset, "ipc": g.ipc, **values, **accs, "n_seeds": len(rs),
                     "protocol": rs[0].scores.protocol, "setting": g.suffix})
    if not rows:
        return ""
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=["method", "dataset", "ipc", *FIELDS, "full_data",
                                                 "distilled_hard_labels", "random", "n_seeds", "protocol", "setting"],
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
