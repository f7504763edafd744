"""Leaderboard rows: one per (dataset, IPC, method, config), from the records, ranked."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from harness.report.schema import RunRecord
from harness.report.tables import count_text, failed_text, group, pooled


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

    @property
    def label(self) -> str:
        return self.method

    def sort_key(self) -> tuple:
        """Ranked by accuracy, best first; rows without one (diverged, failed) last."""
        return (self.accuracy_mean is None, -(self.accuracy_mean or 0.0), self.method, self.suite)


def leaderboard_rows(records: list[RunRecord]) -> list[Row]:
    """Every (dataset, IPC, method label, config) as one row, seeds pooled (each run once; rows of
    different configs are never pooled: two suites' rat_bptt at one IPC are two rows)."""
    cells = group(records, key=lambda r: (r.dataset, r.ipc, r.method, r.config_id))
    rows = []
    for (dataset, ipc, method, config_id), rs in cells.items():
        failed = failed_text(rs)
        accs = [a for r in rs for a in r.eval.accuracy_per_model] if not failed else []
        stats = pooled(accs)
        distill = [r.distill for r in rs]
        distilling = statistics.median(d.outer_steps for d in distill) > 0
        scored = [r.scores for r in rs if r.scores is not None and r.scores.lrs is not None]
        rows.append(Row(
            dataset=dataset, ipc=ipc, method=method, suite=rs[0].suite, config_id=config_id,
            status=failed or "ok", accuracy_mean=None if stats is None else stats[0],
            accuracy_std=None if stats is None else stats[1], n_models=len(accs), n_seeds=len(rs),
            count=count_text(rs), outer_steps=statistics.median(d.outer_steps for d in distill),
            seconds_per_step=statistics.median(d.seconds_per_outer_step for d in distill) if distilling else None,
            peak_memory_mib=statistics.median(d.peak_memory_bytes for d in distill) / 2**20 if distilling else None,
            memory_kind="/".join(sorted({d.memory_kind for d in distill})),
            protocol=rs[0].eval.protocol.get("protocol", "standard"),
            lrs=statistics.fmean(s.lrs for s in scored) if len(scored) == len(rs) and not failed else None,
            ars=statistics.fmean(s.ars for s in scored) if len(scored) == len(rs) and not failed else None,
            hardware="; ".join(sorted({r.hardware.device_name for r in rs})), runs=rs))
    return sorted(rows, key=lambda r: (r.dataset, r.ipc, *r.sort_key()))


def boards(rows: list[Row]) -> dict[tuple[str, int], list[Row]]:
    """Rows by (dataset, IPC), each board ranked."""
    out: dict[tuple[str, int], list[Row]] = {}
    for row in rows:
        out.setdefault((row.dataset, row.ipc), []).append(row)
    return {key: sorted(rs, key=Row.sort_key) for key, rs in sorted(out.items())}


def accuracy_text(row: Row, pm: str = " ± ") -> str:
    if row.status != "ok":
        return row.status
    if row.n_models == 1:
        return f"{100 * row.accuracy_mean:.2f}"
    return f"{100 * row.accuracy_mean:.2f}{pm}{100 * row.accuracy_std:.2f}"


def cost_text(row: Row) -> tuple[str, str]:
    if row.seconds_per_step is None:
        return "no distillation", "-"
    return f"{row.seconds_per_step:.3g}", f"{row.peak_memory_mib:.0f}"
