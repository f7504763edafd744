"""Leaderboard rows: one per (dataset, IPC, method, config), from the records, ranked."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from harness.report.schema import RunRecord
from harness.report.tables import count_text, group, mean_std_text, summarize


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

    def sort_key(self) -> tuple:
        """Ranked by accuracy, best first; rows without one (diverged, failed) last."""
        return (self.accuracy_mean is None, -(self.accuracy_mean or 0.0), self.method, self.suite)


def leaderboard_rows(records: list[RunRecord]) -> list[Row]:
    """Every (dataset, IPC, method label, config) as one row, seeds pooled (each run once; rows of
    different configs are never pooled: two suites' rat_bptt at one IPC are two rows)."""
    cells = group(records, key=lambda r: (r.dataset, r.ipc, r.method, r.config_id))
    rows = []
    for (dataset, ipc, method, config_id), rs in cells.items():
        s = summarize(rs)
        distilling = s["outer_steps"] > 0
        scored = [r.scores for r in rs if r.scores is not None and r.scores.lrs is not None]
        all_scored = len(scored) == len(rs) and s["status"] == "ok"
        rows.append(Row(
            dataset=dataset, ipc=ipc, method=method, suite=rs[0].suite, config_id=config_id,
            status=s["status"], accuracy_mean=s["accuracy_mean"], accuracy_std=s["accuracy_std"],
            n_models=s["n_models"], n_seeds=s["n_seeds"], count=count_text(rs), outer_steps=s["outer_steps"],
            seconds_per_step=s["seconds_per_outer_step"] if distilling else None,
            peak_memory_mib=s["peak_memory_bytes"] / 2**20 if distilling else None,
            memory_kind=s["memory_kind"], protocol=rs[0].eval.protocol.get("protocol", "standard"),
            lrs=statistics.fmean(x.lrs for x in scored) if all_scored else None,
            ars=statistics.fmean(x.ars for x in scored) if all_scored else None,
            hardware="; ".join(s["devices"]), runs=rs))
    return sorted(rows, key=lambda r: (r.dataset, r.ipc, *r.sort_key()))


def boards(rows: list[Row]) -> dict[tuple[str, int], list[Row]]:
    """Rows by (dataset, IPC), each board ranked."""
    out: dict[tuple[str, int], list[Row]] = {}
    for row in rows:
        out.setdefault((row.dataset, row.ipc), []).append(row)
    return {key: sorted(rs, key=Row.sort_key) for key, rs in sorted(out.items())}


def accuracy_text(row: Row, fmt: str = "github") -> str:
    """Mean ± std (%) of the row's pooled accuracies, or what went wrong."""
    if row.status != "ok":
        return row.status
    return mean_std_text([a for r in row.runs for a in r.eval.accuracy_per_model], fmt)


def lrs_text(row: Row) -> str:
    return "-" if row.lrs is None else f"{100 * row.lrs:.2f}"


def cost_text(row: Row) -> tuple[str, str]:
    if row.seconds_per_step is None:
        return "no distillation", "-"
    return f"{row.seconds_per_step:.3g}", f"{row.peak_memory_mib:.0f}"
