"""The subsets view: subset curves beside sets distilled directly at each size (the
``subset_curve`` record section)."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from typing import Any

from harness.report.compare import Group, comparable_groups
from harness.report.schema import RunRecord
from harness.report.tables import (BASELINE, check_format, failed_text, latex_text, mean_std_text, pm, pooled,
                                   register_view, tabulate_rows)


def _cell(values: list[float], fmt: str) -> str:
    """Mean ± std of pooled per-model accuracies and how many there are."""
    return "-" if not values else f"{mean_std_text(values, fmt)} (n={len(values)})"


def _subset_series(curve_records: list[RunRecord]) -> dict[str, dict[int, list[float]]]:
    """series -> size -> per-model accuracies pooled over seeds (and draws); the full set is a prefix."""
    series: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in curve_records:
        section = r.subset_curve
        for e in section.curve:
            kinds = [e.kind]
            if e.kind == "full":
                kinds = ["prefix", "block_prefix"] if section.blocks else ["prefix"]
            for kind in kinds:
                series[kind][e.size].extend(e.accuracy_per_model)
    return series


def _loose(g: Group) -> str:
    """A group's setting without its budget: direct records of other IPCs may have had another one."""
    loose = {k: v for k, v in g.setting.items() if not k.startswith("budget.") and k != "hardware.device_name"}
    return json.dumps(loose, sort_keys=True)


def _has_subsets(record: RunRecord) -> bool:
    """Whether the record's curve has a subset besides the full set (an IPC-1 curve is only ``full``)."""
    return record.subset_curve is not None and any(e.kind != "full" for e in record.subset_curve.curve)


def _direct_labels(records: list[RunRecord], suite: str, label: str, wraps: str | None) -> list[str]:
    """The suite labels whose records are set beside a curve of ``label``: the label itself, every
    label of the same suite that runs the wrapped method (Boost-DD's base), and the baseline's."""
    by_name: dict[str, list[str]] = defaultdict(list)
    for r in records:
        if r.suite == suite and r.method not in by_name[r.registry_name]:
            by_name[r.registry_name].append(r.method)
    labels = [label, *(sorted(by_name.get(wraps, [])) if wraps else []), *sorted(by_name.get(BASELINE, []))]
    return list(dict.fromkeys(labels))


@register_view("subsets", order=10, help="subset curves beside directly distilled sets",
               hint="enable [subsets] in the suite; a curve needs IPC > 1")
def subset_table(records: list[RunRecord], fmt: str = "github") -> str:
    """Subset accuracy (%) by size, beside directly distilled records of the same size.

    One table per (dataset, method, IPC) with a subset curve; rows are subset IPCs; columns
    the set's block prefixes (when it has blocks), first-k prefixes and random subsets, then
    the records distilled directly at that IPC, joined by suite label: the same label, the
    labels running the method it wraps (Boost-DD's base), and the baseline. Per-model
    accuracies are pooled over seeds (and draws), n says how many; one table per config and
    comparable group (:mod:`harness.report.compare`: a setting another group of the dataset and
    IPC does not share is named in the title), the direct records taken from the same setting
    (the budget may differ with the IPC), a run found twice counts once, a diverged cell says
    so. ``csv`` gives one tidy row per (table, size, series). Curves holding only the full set
    (IPC 1) are skipped; ``""`` when no record has a curve left (in every format).
    """
    check_format(fmt)
    direct: list[tuple[tuple, str, tuple[str, float] | None, list[float] | str]] = []
    curves: dict[tuple, tuple[Group, list[RunRecord]]] = {}
    for g in comparable_groups(records):  # one config per row, each run once
        for name, rs in g.rows.items():
            failed = failed_text(rs)
            suite = rs[0].suite
            direct.append(((suite, rs[0].method, g.dataset, g.ipc, _loose(g)), name, g.budget,
                           failed or [a for r in rs for a in r.eval.accuracy_per_model]))
            if not failed and any(_has_subsets(r) for r in rs):
                curves[(g.dataset, name, suite, g.ipc, g.suffix)] = (g, [r for r in rs if _has_subsets(r)])

    def direct_at(g: Group, name: str, suite: str, label: str, ipc: int) -> list[float] | str:
        """The row of ``label`` at ``ipc`` in the curve's setting (its budget may differ with the IPC)."""
        found = [d for d in direct if d[0] == (suite, label, g.dataset, ipc, _loose(g))]
        if len(found) > 1:
            found = [d for d in found if d[1] == name] or [d for d in found if d[2] == g.budget] or found
        if len(found) > 1:
            return f"{len(found)} configs"
        return found[0][3] if found else []

    tidy: list[dict[str, Any]] = []
    parts = []
    for (dataset, method, suite, ipc, setting), (g, curve_records) in sorted(curves.items()):
        series = _subset_series(curve_records)
        columns = [kind for kind in ("block_prefix", "prefix", "random") if series.get(kind)]
        compare = _direct_labels(records, suite, curve_records[0].method, curve_records[0].wraps)
        sizes = sorted({k for kind in columns for k in series[kind]})
        headers = [latex_text(h, fmt) for h in
                   ["IPC", *(kind.replace("_", " ") for kind in columns), *(f"direct {m}" for m in compare)]]
        rows = []
        for k in sizes:
            values = ([series[kind].get(k, []) for kind in columns]
                      + [direct_at(g, method, suite, m, k) for m in compare])
            rows.append([str(k)] + [v if isinstance(v, str) else _cell(v, fmt) for v in values])
            for name, v in zip(columns + [f"direct:{m}" for m in compare], values):
                if v and not isinstance(v, str):
                    mean, std = pooled(v)
                    tidy.append({"dataset": dataset, "method": method, "ipc": ipc, "setting": setting, "size": k,
                                 "series": name,
                                 "accuracy_mean": mean, "accuracy_std": std, "n": len(v)})
        if not rows:
            continue
        where = f"{dataset}, {method} IPC {ipc}" + (f" ({setting})" if setting else "")
        title = (latex_text(f"{where}: test accuracy (%) of subsets, mean", fmt) + pm(fmt)
                 + "std over models x seeds")
        table = tabulate_rows(headers, rows, fmt)
        parts.append(f"% {title}\n{table}" if fmt == "latex" else f"{title}:\n{table}")
    if not parts:
        return ""
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=["dataset", "method", "ipc", "setting", "size", "series",
                                                 "accuracy_mean", "accuracy_std", "n"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(tidy)
        return out.getvalue()
    return "\n\n".join(parts)
