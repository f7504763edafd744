"""The budget view: accuracy at budget (the ``anytime`` record section), methods compared at
equal outer steps and at equal distillation wall-clock."""

from __future__ import annotations

import csv
import io
from collections import defaultdict

from harness.report.schema import AnytimePoint, RunRecord
from harness.report.tables import (check_format, group, latex_text, mean_std_text, method_key, register_view,
                                   tabulate_rows)

COLUMNS = 5  # budgets shown per table


def _at_step(points: list[AnytimePoint], step: int) -> AnytimePoint | None:
    return next((p for p in points if p.step == step), None)


def _at_time(points: list[AnytimePoint], seconds: float) -> AnytimePoint | None:
    """The last point measured within ``seconds`` of distillation."""
    within = [p for p in points if p.seconds <= seconds * (1 + 1e-9)]
    return within[-1] if within else None


def _spread(values: list[float], n: int) -> list[float]:
    values = sorted(set(values))
    if len(values) <= n:
        return values
    return [values[round(i * (len(values) - 1) / (n - 1))] for i in range(n)]


def _cell(runs: list[list[AnytimePoint]], pick, budget, fmt: str) -> tuple[str, list[float]]:
    accs = []
    for points in runs:
        point = pick(points, budget)
        if point is None:
            return "-", []
        accs.extend(point.accuracy_per_model)
    return mean_std_text(accs, fmt), accs


@register_view("budget", order=30, help="accuracy at equal outer steps and at equal wall-clock (anytime curves)")
def budget_table(records: list[RunRecord], fmt: str = "github") -> str:
    """Per (dataset, IPC): every method's anytime accuracy (%) at the outer steps all its curves
    reached and at equal seconds of distillation (the last point within them), pooled over seeds.
    The curves' protocol is named: it is usually cheaper than the record's own."""
    check_format(fmt)
    curves: dict[tuple[str, int], dict[str, list[list[AnytimePoint]]]] = defaultdict(lambda: defaultdict(list))
    protocols: dict[tuple[str, int], set[str]] = defaultdict(set)
    for (method, dataset, ipc), rs in group(records).items():
        for r in rs:
            if r.status == "ok" and r.anytime is not None and r.anytime.curve:
                curves[(dataset, ipc)][method].append(r.anytime.curve)
                protocols[(dataset, ipc)].add(r.anytime.protocol.get("protocol", "standard"))
    parts, tidy = [], []
    for (dataset, ipc), methods in sorted(curves.items()):
        order = sorted(methods, key=method_key)
        common_steps = set.intersection(*({p.step for p in c} for runs in methods.values() for c in runs))
        steps = _spread([s for s in common_steps if s > 0], COLUMNS)
        horizon = min(c[-1].seconds for runs in methods.values() for c in runs)
        times = [horizon * (i + 1) / COLUMNS for i in range(COLUMNS)] if horizon > 0 else []
        for title, budgets, pick, unit in (("equal outer steps", steps, _at_step, "steps"),
                                           ("equal distillation wall-clock", times, _at_time, "s")):
            if not budgets:
                continue
            headers = ["method", *(f"{b:g} {unit}" if unit == "steps" else f"{b:.1f} {unit}" for b in budgets)]
            rows = []
            for method in order:
                cells = [_cell(methods[method], pick, b, fmt) for b in budgets]
                rows.append([latex_text(method, fmt), *(text for text, _ in cells)])
                for b, (_, accs) in zip(budgets, cells):
                    if accs:
                        tidy.append({"dataset": dataset, "ipc": ipc, "method": method, "by": unit, "budget": b,
                                     "accuracy_mean": sum(accs) / len(accs), "n": len(accs)})
            heading = (f"{dataset} IPC {ipc}: anytime test accuracy (%) at {title} "
                       f"(protocol {', '.join(sorted(protocols[(dataset, ipc)]))})")
            table = tabulate_rows([latex_text(h, fmt) for h in headers], rows, fmt)
            parts.append(f"% {latex_text(heading)}\n{table}" if fmt == "latex" else f"{heading}:\n{table}")
    if not parts:
        return ""
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=["dataset", "ipc", "method", "by", "budget", "accuracy_mean", "n"],
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(tidy)
        return out.getvalue()
    return "\n\n".join(parts)
