"""The margins view: per comparable group the best baseline, and each distilled method's margin over it.

A row per comparable group (a dataset, IPC, setting and label kind: :mod:`harness.report.compare`),
its best baseline (the best row that took no outer step: :mod:`harness.report.margins`) with
its accuracy, and a column per distilled row: its margin in percentage points with the test's
p (Welch on per-seed means, or ``1 seed``: on per-model accuracies, evaluation noise only);
bold: significantly above the baseline. ``""`` when no group has both a finished baseline and
a distilled row. ``csv``: one tidy row per (group, distilled row).
"""

from __future__ import annotations

import csv
import io

from harness.report.compare import comparable_groups
from harness.report.margins import VS, GroupMargins, Margin, group_margins, margins_footnote
from harness.report.schema import RunRecord
from harness.report.tables import (bold, check_format, count_text, latex_text, mean_std_text, register_view,
                                   tabulate_rows)


def margin_cell(margin: Margin | None, fmt: str) -> str:
    """``**+3.20** (p 0.003)``; bold when significantly above; ``within noise`` said."""
    if margin is None:
        return "-"
    points = bold(margin.points(), fmt) if margin.verdict == "above" else margin.points()
    note = margin.p_text() if margin.verdict != "within noise" else f"within noise, {margin.p_text()}"
    return f"{points} ({note})"


@register_view("margins", order=5, help="each distilled method's margin over the best baseline (coreset)",
               hint="needs a baseline (a method with no outer step: random_real, herding, kcenter, forgetting) "
                    "and a distilled method in one comparable group")
def margins_table(records: list[RunRecord], fmt: str = "github") -> str:
    """Per comparable group: the best baseline (no outer step) and every distilled row's margin over
    it (points), with the Welch test's p; bold: significantly above."""
    check_format(fmt)
    found: list[tuple] = []
    for g in comparable_groups(records):
        m: GroupMargins = group_margins(g.rows)
        if m.best is not None and m.margins:
            found.append((g, m))
    if not found:
        return ""
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["dataset", "ipc", "setting", "method", "baseline", "baseline_mean", "margin", "p", "test",
                         "verdict"])
        for g, m in found:
            for name, margin in m.margins.items():
                writer.writerow([g.dataset, g.ipc, g.suffix, name, m.best, m.best_mean, margin.margin,
                                 margin.comparison.p, margin.comparison.on, margin.verdict])
        return out.getvalue()
    methods = sorted({name for _, m in found for name in m.margins})
    rows = []
    for g, m in found:
        runs = g.rows[m.best]
        accs = [a for r in runs for a in r.eval.accuracy_per_model]
        best = f"{latex_text(m.best, fmt)} {mean_std_text(accs, fmt)} ({count_text(runs)})"
        rows.append([latex_text(g.heading, fmt), best, *(margin_cell(m.margins.get(name), fmt) for name in methods)])
    headers = ["comparable group", "best coreset (accuracy %)", *methods]
    table = tabulate_rows([latex_text(h, fmt) for h in headers], rows, fmt)
    title = f"Margin over the best baseline ({VS}), percentage points, per comparable group:"
    note = margins_footnote({t for _, m in found for t in m.tests}) + " Bold: significantly above."
    if fmt == "latex":
        return "\n".join([f"% {latex_text(title)}", table, f"% {latex_text(note)}"])
    return "\n".join([title, table, note])
