"""The main view: accuracy, rank and cost per method x comparable group.

Columns are comparable groups (:mod:`harness.report.compare`): a dataset and IPC, headed by the
setting that tells it from another group of the same dataset and IPC (``digits IPC 1
(budget.outer_steps 8)``): groups are never ranked together. Rows are methods (``random_real``
first; a label with several configs once per config, named by what differs). The accuracy
table pools the per-model test accuracies of every seed of a row and shows its place in the
column (:mod:`harness.report.ranking`: ``=2`` a shared place, bold the best and the tied
best), mean ± std, the models x seeds and outer steps behind it (a diverged or failed run
shows as such, without a number); the cost table shows peak memory (its kind in every column
header) and seconds per outer step (medians over seeds). ``csv`` gives one tidy row per
(group, method) instead.
"""

from __future__ import annotations

import csv
import io

from harness.report.compare import Group, comparable_groups, row_order
from harness.report.ranking import Place, rank_footnote
from harness.report.schema import RunRecord
from harness.report.tables import (accuracy_text, bold, check_format, failed_text, latex_text, register_view,
                                   summarize, tabulate_rows)


def _rows(groups: list[Group]) -> list[str]:
    return row_order({(name, g.method(name)) for g in groups for name in g.rows})


def _cell(group: Group, name: str, place: Place | None, compared: bool, fmt: str) -> str:
    runs = group.rows[name]
    text = accuracy_text(runs, fmt)
    if place is None or not compared or failed_text(runs):
        return text
    value, _, rest = text.partition(" (")
    value = bold(value, fmt) if place.best else value
    return f"{place.text} {value} ({rest}" if rest else f"{place.text} {value}"


def accuracy_table(groups: list[Group], fmt: str = "github") -> tuple[str, set[str]]:
    """The accuracy table and the tests its ranks used."""
    tests: set[str] = set()
    rankings = []
    for g in groups:
        ranking = g.ranking()
        rankings.append(ranking)
        if ranking.compared:
            tests |= ranking.tests
    rows = []
    for name in _rows(groups):
        row = [latex_text(name, fmt)]
        for g, ranking in zip(groups, rankings):
            row.append(_cell(g, name, ranking.places.get(name), ranking.compared, fmt) if name in g.rows else "-")
        rows.append(row)
    headers = ["method", *(latex_text(g.heading, fmt) for g in groups)]
    return tabulate_rows(headers, rows, fmt), tests


def _kinds(group: Group) -> list[str]:
    return sorted({r.distill.memory_kind for r in group.records if r.distill.outer_steps})


def cost_table(groups: list[Group], fmt: str = "github") -> str:
    rows = []
    for name in _rows(groups):
        row = [latex_text(name, fmt)]
        for g in groups:
            if name not in g.rows:
                row.append("-")
                continue
            s = summarize(g.rows[name])
            if failed_text(g.rows[name]) and not s["outer_steps"]:  # never "no distillation" for a failed run
                row.append(failed_text(g.rows[name]))
                continue
            if not s["outer_steps"]:
                row.append("no distillation")
                continue
            text = f"{s['peak_memory_bytes'] / 2**20:.0f} MiB, {s['seconds_per_outer_step']:.3f} s/step"
            row.append(text + (f" ({s['memory_kind']})" if len(_kinds(g)) > 1 else ""))
        rows.append(row)
    headers = ["method", *(latex_text(f"{g.heading}: memory {'/'.join(_kinds(g)) or '-'}", fmt) for g in groups)]
    return tabulate_rows(headers, rows, fmt)


def tidy_csv(groups: list[Group]) -> str:
    out = io.StringIO()
    fields = ["method", "dataset", "ipc", "status", "accuracy_mean", "accuracy_std", "n_models", "n_seeds",
              "outer_steps", "seconds_per_outer_step", "peak_memory_bytes", "memory_kind", "devices", "row", "setting", "config_id",
              "rank", "tied"]
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for g in groups:
        places = g.ranking().places
        for name, rs in g.rows.items():
            s = summarize(rs)
            place = places.get(name)
            writer.writerow({"method": rs[0].method, "dataset": g.dataset, "ipc": g.ipc,
                             **{k: s[k] for k in fields[3:12]}, "devices": ";".join(s["devices"]), "row": name,
                             "setting": g.suffix, "config_id": rs[0].config_id,
                             "rank": "" if place is None else place.rank, "tied": "" if place is None else place.tied})
    return out.getvalue()


def _notes(groups: list[Group]) -> list[str]:
    """How sibling groups differ, and their config ids (for ``--config``)."""
    notes, seen = [], set()
    for g in groups:
        if g.differs and (g.dataset, g.ipc) not in seen:
            seen.add((g.dataset, g.ipc))
            notes.append(f"{g.dataset} IPC {g.ipc}: settings differ in {g.differs_text()}; never ranked together.")
        if g.differs:
            notes.append(f"  {g.heading}: config ids {', '.join(c[:8] for c in g.config_ids())} "
                         "(select with --config ID, or --latest)")
    return notes


@register_view("main", order=0, help="accuracy with ranks (ties within noise), and cost")
def render(records: list[RunRecord], fmt: str = "github") -> str:
    """Accuracy (mean ± std over models x seeds, ranked with ties) and cost (peak memory, seconds per outer step)."""
    check_format(fmt)
    groups = comparable_groups(records)
    if fmt == "csv":
        return tidy_csv(groups)
    accuracy, tests = accuracy_table(groups, fmt)
    devices = sorted({r.hardware.device_name for r in records})
    kinds = sorted({k for g in groups for k in _kinds(g)})
    notes = [n for n in [rank_footnote(tests), *_notes(groups)] if n]
    title = "Test accuracy (%), mean ± std over models x seeds (models x seeds, outer steps), rank in its column:"
    cost = f"Distillation cost (peak memory [{', '.join(kinds) or '-'}], seconds per outer step):"
    if fmt == "latex":
        comment = lambda text: f"% {latex_text(text.replace(' ± ', ' and '))}"  # noqa: E731
        return "\n".join([comment(title), accuracy, *map(comment, notes), "", comment(cost), cost_table(groups, fmt),
                          "", comment(f"devices: {'; '.join(devices)}")])
    return "\n".join([title, accuracy, *notes, "", cost, cost_table(groups, fmt), "", f"Devices: {'; '.join(devices)}"])
