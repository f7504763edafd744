"""Leaderboard rows: one per (comparable group, method config), from the records, ranked with ties.

A board is one comparable group (:mod:`harness.report.compare`): a dataset, IPC and setting;
groups of one dataset and IPC are separate boards, headed by what tells them apart. Its rows
are ranked by :mod:`harness.report.ranking` (``=2``: a place shared within noise; ``best``:
rank 1). :func:`ranked_boards` is the full answer (a :class:`Board` per group); :func:`boards`
the same keyed by ``(dataset, IPC)`` for the pages, the IPC's key carrying the setting when a
dataset and IPC have several groups. A row also carries its margin over its group's best
baseline (:mod:`harness.report.margins`); :func:`provenance`, :func:`published_text` and
:func:`reevaluations` say where its runs come from, what was published for it, and its
``ddbench eval`` records.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from harness.report.compare import comparable_groups
from harness.report.margins import Margin, group_margins
from harness.report.ranking import Place
from harness.report.schema import RunRecord
from harness.report.tables import count_text, mean_std_text, summarize


@dataclass
class Row:
    dataset: str
    ipc: int
    method: str
    suite: str
    config_id: str | None
    status: str  # ok, or "diverged (1 of 2 seeds)" ...
    accuracy_mean: float | None
    accuracy_std: float | None
    n_models: int
    n_seeds: int
    count: str  # "5x2"
    outer_steps: float
    seconds_per_step: float | None
    peak_memory_mib: float | None
    memory_kind: str
    protocol: str
    lrs: float | None
    ars: float | None
    hardware: str
    runs: list[RunRecord] = field(default_factory=list, repr=False)
    name: str = ""  # the row's name in its group: the method label, with what tells its configs apart
    group: tuple = ()  # its comparable group's key
    heading: str = ""  # its group's heading ("digits IPC 1 (budget.outer_steps 8)")
    setting: str = ""  # what tells its group from the other groups of its dataset and IPC ("" if none)
    place: Place | None = None  # its rank in its group (None: no accuracy)
    budget: tuple[str, float] | None = None  # ("outer_steps", N) or ("minutes", M)
    labels: str = "hard"  # the label kind
    differs: str = ""  # how its group's siblings differ ("budget.outer_steps 120 vs 8"; "" if none)
    rank_note: str = ""  # what its group's ranks mean: the tests (ranking.rank_footnote); "" if nothing compared
    baseline: bool = False  # took no outer step (a selection of real images): harness.report.margins
    margin: Margin | None = None  # a distilled row's margin over its group's best baseline
    best_baseline: str | None = None  # its group's best baseline row (None: the group has none finished)
    rank_tests: frozenset = frozenset()  # the tests its group's ranks used (ranking.ON_SEEDS / ON_MODELS)

    def sort_key(self) -> tuple:
        """Ranked by place (ties within noise share one), then accuracy, best first; rows without
        an accuracy (diverged, failed) last."""
        return (self.accuracy_mean is None, self.place.rank if self.place else 0, -(self.accuracy_mean or 0.0),
                self.method, self.suite)


@dataclass
class Board:
    """One comparable group's rows, ranked."""

    key: tuple
    dataset: str
    ipc: int
    heading: str
    setting: str  # what tells it from its siblings ("" if it has none)
    differs: str  # how its siblings differ ("budget.outer_steps 120 vs 8"; "" if none)
    rows: list[Row]
    footnote: str  # the tests behind its ranks ("" when nothing was compared)


def leaderboard_rows(records: list[RunRecord]) -> list[Row]:
    """Every (comparable group, method config) as one row, seeds pooled (each run once; configs are
    never pooled: two suites' rat_bptt in one group are two rows), its place in its group."""
    rows = []
    for g in comparable_groups(records):
        ranking = g.ranking()
        places, note = ranking.places, ranking.footnote() if ranking.compared else ""
        margins = group_margins(g.rows)
        for name, rs in g.rows.items():
            s = summarize(rs)
            distilling = s["outer_steps"] > 0
            scored = [r.scores for r in rs if r.scores is not None and r.scores.lrs is not None]
            all_scored = len(scored) == len(rs) and s["status"] == "ok"
            rows.append(Row(
                dataset=g.dataset, ipc=g.ipc, method=rs[0].method, suite=rs[0].suite, config_id=rs[0].config_id,
                status=s["status"], accuracy_mean=s["accuracy_mean"], accuracy_std=s["accuracy_std"],
                n_models=s["n_models"], n_seeds=s["n_seeds"], count=count_text(rs), outer_steps=s["outer_steps"],
                seconds_per_step=s["seconds_per_outer_step"] if distilling else None,
                peak_memory_mib=s["peak_memory_bytes"] / 2**20 if distilling else None,
                memory_kind=s["memory_kind"], protocol=rs[0].eval.protocol.get("protocol", "standard"),
                lrs=statistics.fmean(x.lrs for x in scored) if all_scored else None,
                ars=statistics.fmean(x.ars for x in scored) if all_scored else None,
                hardware="; ".join(s["devices"]), runs=rs, name=name, group=g.key, heading=g.heading,
                setting=g.suffix, place=places.get(name), budget=g.budget, labels=g.setting.get("labels", "hard"),
                differs=g.differs_text(), rank_note=note, baseline=name in margins.baselines,
                margin=margins.margins.get(name), best_baseline=margins.best,
                rank_tests=ranking.tests if ranking.compared else frozenset()))
    return sorted(rows, key=lambda r: (r.group, *r.sort_key()))


def ranked_boards(rows: list[Row]) -> list[Board]:
    """A :class:`Board` per comparable group, by dataset, IPC and setting; rows ranked."""
    by_group: dict[tuple, list[Row]] = {}
    for row in rows:
        by_group.setdefault(row.group, []).append(row)
    out = []
    for key in sorted(by_group):
        rs = sorted(by_group[key], key=Row.sort_key)
        first = rs[0]
        out.append(Board(key, first.dataset, first.ipc, first.heading, first.setting, first.differs, rs,
                         first.rank_note))
    return out


def boards(rows: list[Row]) -> dict[tuple[str, int | str], list[Row]]:
    """Rows by ``(dataset, IPC)``, each board ranked; where a dataset and IPC have several comparable
    groups, each is its own board, keyed ``(dataset, "IPC (setting)")``."""
    return {(b.dataset, f"{b.ipc} ({b.setting})" if b.setting else b.ipc): b.rows for b in ranked_boards(rows)}


def accuracy_text(row: Row, fmt: str = "github") -> str:
    """Mean ± std (%) of the row's pooled accuracies, or what went wrong."""
    if row.status != "ok":
        return row.status
    return mean_std_text([a for r in row.runs for a in r.eval.accuracy_per_model], fmt)


def rank_text(row: Row) -> str:
    """``1``, ``=2``, or ``-`` (no accuracy)."""
    return "-" if row.place is None else row.place.text


def lrs_text(row: Row) -> str:
    return "-" if row.lrs is None else f"{100 * row.lrs:.2f}"


def cost_text(row: Row) -> tuple[str, str]:
    if row.seconds_per_step is None:
        return ("no distillation" if row.status == "ok" else row.status), "-"
    return f"{row.seconds_per_step:.3g}", f"{row.peak_memory_mib:.0f}"


def provenance(row: Row) -> tuple[str, str, bool | None]:
    """``(commits, finished, dirty)`` of a row's runs: short commit ids (``-`` when unrecorded), the
    date or date range they finished, and whether any ran from a dirty tree (None: unrecorded)."""
    commits: list[str] = []
    dirty: bool | None = None
    for r in row.runs:
        git = r.provenance.git if r.provenance is not None else None
        if not git:
            continue
        commit = str(git.get("commit") or "")[:8]
        if commit and commit not in commits:
            commits.append(commit)
        if "dirty" in git:
            dirty = bool(dirty) or bool(git["dirty"])
    dates = sorted({r.finished_at[:10] for r in row.runs})
    finished = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
    return ", ".join(commits) or "-", finished, dirty


def published(row: Row) -> list:
    """The reproduction table's numbers for the row's method at its dataset and IPC
    (:func:`harness.report.published.published_for`: cifar10-jpeg is shown beside CIFAR-10)."""
    from harness.report.published import published_for

    return published_for(row.dataset, row.ipc, row.runs[0].registry_name) if row.runs else []


def published_text(row: Row) -> str:
    """``69.4 ± 0.4 (test-selected) on CIFAR-10``; ``""`` when nothing was published for it. The
    dataset it was published on is always named, and its labels where they are not the row's."""
    parts = []
    for p in published(row):
        labels = f", {p.labels} labels" if p.labels != row.labels else ""
        parts.append(f"{p.text()} on {p.published_on}{labels}")
    return "; ".join(parts)


@dataclass
class Reevaluation:
    """A row's sets evaluated again (``ddbench eval``) under one protocol and network, pooled over seeds."""

    label: str  # "ratbptt on resnet18"
    accuracies: list[float]
    seeds: int
    records: list = field(default_factory=list, repr=False)

    def text(self) -> str:
        return f"{self.label}: {mean_std_text(self.accuracies, 'github')} (n {len(self.accuracies)})"


def reevaluations(row: Row, evals: dict[str, list]) -> list[Reevaluation]:
    """The re-evaluations of a row's runs (``evals``: run id -> its :class:`EvalRecord` s), one per
    (protocol with its settings, network), labelled by protocol and network (and a short id of the
    settings where two share that label), each evaluation counted once."""
    import hashlib
    import json

    by: dict[str, list] = {}
    for r in row.runs:
        for e in evals.get(r.run_id, []):
            key = json.dumps([e.eval.protocol, e.model], sort_keys=True)
            if all(o.eval_id != e.eval_id for o in by.get(key, [])):
                by.setdefault(key, []).append(e)
    labels = {key: f"{es[0].eval.protocol.get('protocol', 'standard')} on {es[0].model.get('name', '?')}"
              for key, es in by.items()}
    out = []
    for key in sorted(by, key=lambda k: (labels[k], k)):
        es, label = by[key], labels[key]
        if sum(v == label for v in labels.values()) > 1:
            label += f" ({hashlib.sha256(key.encode()).hexdigest()[:6]})"
        accs = [a for e in es for a in e.eval.accuracy_per_model]
        if accs:
            out.append(Reevaluation(label, accs, len({e.seed for e in es}), es))
    return out


def margin_text(row: Row) -> str:
    """``+3.20 vs best coreset (herding), p 0.003`` (``within noise`` said); ``best coreset`` /
    ``coreset`` for a baseline row; ``-`` in a group without a finished baseline."""
    if row.baseline:
        return "best coreset" if row.name == row.best_baseline else "coreset"
    if row.margin is None:
        return "-"
    return row.margin.text() + (" (within noise)" if row.margin.verdict == "within noise" else "")
