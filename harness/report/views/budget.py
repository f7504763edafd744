"""The budget view: accuracy at budget (the ``anytime`` record section), methods compared at
equal distillation wall-clock and at equal outer steps, per comparable group.

A minutes-bounded group (``budget.minutes``, ``outer_steps`` 0: every method had the same
time) is compared on its budget's own axis first: the columns are the times at which the
anytime curve was due (every ``anytime.every_minutes``), up to the end of the budget, and a
cell is the evaluation due at that time (taken at the end of the outer step that crossed it:
at most one outer step later) or, in the ``end`` column, the set the budget ended with. A
step-bounded group is compared at equal outer steps first, then at equal seconds (the last
point within them, up to the shortest curve). Per-model accuracies are pooled over seeds;
bold: the best and those not significantly below it in that column (:mod:`harness.report.ranking`).
"""

from __future__ import annotations

import csv
import io
from typing import Callable

from harness.report.compare import Group, comparable_groups
from harness.report.ranking import Sample, rank, rank_footnote
from harness.report.schema import AnytimePoint, RunRecord
from harness.report.tables import bold, check_format, latex_text, mean_std_text, register_view, tabulate_rows

COLUMNS = 5  # budgets shown per table
Pick = Callable[[list[AnytimePoint], float], "AnytimePoint | None"]


def _at_step(points: list[AnytimePoint], step: float) -> AnytimePoint | None:
    return next((p for p in points if p.step == step), None)


def _within(points: list[AnytimePoint], seconds: float) -> AnytimePoint | None:
    """The last point measured within ``seconds`` of distillation."""
    within = [p for p in points if p.seconds <= seconds * (1 + 1e-9)]
    return within[-1] if within else None


def _due(points: list[AnytimePoint], seconds: float) -> AnytimePoint | None:
    """The evaluation due at ``seconds``: the first point at or after it (``inf``: the last point)."""
    if seconds == float("inf"):
        return points[-1] if points else None
    return next((p for p in points if p.seconds >= seconds * (1 - 1e-9)), None)


def _spread(values: list[float], n: int) -> list[float]:
    values = sorted(set(values))
    if len(values) <= n:
        return values
    return [values[round(i * (len(values) - 1) / (n - 1))] for i in range(n)]


def _tables(group: Group, curves: dict[str, list[list[AnytimePoint]]]
            ) -> list[tuple[str, list[float], Pick, list[str]]]:
    """(title, budgets, pick, column headers) of the group's tables, its budget's own axis first."""
    all_curves = [c for runs in curves.values() for c in runs]
    common = set.intersection(*({p.step for p in c} for c in all_curves))
    steps = _spread([s for s in common if s > 0], COLUMNS)
    by_steps = ("equal outer steps", steps, _at_step, [f"{s:g} steps" for s in steps])
    budget = group.budget
    if budget is not None and budget[0] == "minutes":
        every = {r.anytime.config.get("every_minutes") for r in group.records if r.anytime is not None}
        every.discard(None)
        limit = 60 * budget[1]
        if len(every) == 1:
            step = 60 * every.pop()
            grid = [step * k for k in range(1, int(limit / step + 1e-9) + 1) if step * k < limit * (1 - 1e-9)]
            times = [*_spread(grid, COLUMNS - 1), float("inf")]
            heads = [f"{t / 60:g} min" for t in times[:-1]] + [f"end ({budget[1]:g} min)"]
            title = f"equal distillation wall-clock (the budget: {budget[1]:g} min; the evaluation due at each time)"
            return [(title, times, _due, heads), by_steps]
    horizon = min(c[-1].seconds for c in all_curves)
    times = [horizon * (i + 1) / COLUMNS for i in range(COLUMNS)] if horizon > 0 else []
    by_time = ("equal distillation wall-clock", times, _within, [f"{t:.1f} s" for t in times])
    return [by_steps, by_time]


def _column(runs: list[list[AnytimePoint]], pick: Pick, budget: float) -> Sample | None:
    points = [pick(points, budget) for points in runs]
    if any(p is None for p in points):
        return None
    return Sample.of([p.accuracy_per_model for p in points])


@register_view("budget", order=30, help="accuracy at equal wall-clock and at equal outer steps (anytime curves)",
               hint="enable [anytime] in the suite")
def budget_table(records: list[RunRecord], fmt: str = "github") -> str:
    """Per comparable group: every method's anytime accuracy (%) at equal distillation wall-clock and
    at equal outer steps, pooled over seeds. The curves' protocol is named: it is usually cheaper
    than the record's own."""
    check_format(fmt)
    parts, tidy, tests = [], [], set()
    for group in comparable_groups(records):
        curves = {name: [r.anytime.curve for r in rs] for name, rs in group.rows.items()
                  if all(r.status == "ok" and r.anytime is not None and r.anytime.curve for r in rs)}
        if not curves:
            continue
        protocols = sorted({r.anytime.protocol.get("protocol", "standard") for name in curves
                            for r in group.rows[name]})
        for title, budgets, pick, heads in _tables(group, curves):
            if not budgets:
                continue
            columns = [{name: _column(runs, pick, b) for name, runs in curves.items()} for b in budgets]
            rankings = [rank(col) for col in columns]
            rows = []
            for name in curves:
                cells = []
                for b, col, ranking in zip(budgets, columns, rankings):
                    sample = col[name]
                    if sample is None:
                        cells.append("-")
                        continue
                    text = mean_std_text(sample.values, fmt)
                    place = ranking.places[name]
                    cells.append(bold(text, fmt) if ranking.compared and place.best else text)
                    tests |= ranking.tests if ranking.compared else set()
                    tidy.append({"dataset": group.dataset, "ipc": group.ipc, "setting": group.suffix, "method": name,
                                 "by": "steps" if pick is _at_step else "s", "budget": b,
                                 "accuracy_mean": sample.mean, "n": len(sample.values), "rank": place.rank})
                rows.append([latex_text(name, fmt), *cells])
            heading = f"{group.heading}: anytime test accuracy (%) at {title} (protocol {', '.join(protocols)})"
            table = tabulate_rows([latex_text(h, fmt) for h in ["method", *heads]], rows, fmt)
            parts.append(f"% {latex_text(heading)}\n{table}" if fmt == "latex" else f"{heading}:\n{table}")
    if not parts:
        return ""
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=["dataset", "ipc", "method", "by", "budget", "accuracy_mean", "n",
                                                 "setting", "rank"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(tidy)
        return out.getvalue()
    note = rank_footnote(tests, ranks=False)
    if note:
        parts.append(f"% {latex_text(note)}" if fmt == "latex" else note)
    return "\n\n".join(parts)
