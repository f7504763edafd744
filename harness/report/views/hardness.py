"""The hardness view: test accuracy per hardness bucket (the ``hardness`` record section)."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict

from harness.report.compare import comparable_groups
from harness.report.schema import HardnessBucket, RunRecord
from harness.report.tables import check_format, count_text, latex_text, method_key, pooled, register_view, tabulate_rows


def _span(lo: int, hi: int) -> str:
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def _legend(b: HardnessBucket, epochs: int) -> str:
    """What a bucket holds, e.g. ``hardest: n=40, forgotten 1-5 times + 7 never learned, wrong at 4-20 of 20 ...``."""
    parts = []
    if b.score_min is not None:
        lo, hi = b.score_min, b.score_max
        parts.append("forgotten once" if lo == hi == 1 else f"forgotten {_span(lo, hi)} times")
    if b.n_never_learned:
        parts.append(f"{b.n_never_learned} never learned")
    text = f"{b.label}: n={b.n}, " + " + ".join(parts)
    if b.misclassified_min is not None:
        text += f", wrong at {_span(b.misclassified_min, b.misclassified_max)} of {epochs} checkpoints"
    return text


def _bucket_accs(cell_records: list[RunRecord], k: int) -> list[float]:
    """Per-model accuracies on bucket ``k`` of every seed of a cell, pooled."""
    return [a for r in cell_records for a in r.hardness.buckets[k].accuracy_per_model]


def _mean_cell(values: list[float]) -> str:
    """Mean (%) of pooled per-model accuracies, ``-`` when there are none."""
    stats = pooled(values)
    return "-" if stats is None else f"{100 * stats[0]:.2f}"


@register_view("hardness", order=20, help="accuracy per hardness bucket")
def hardness_table(records: list[RunRecord], fmt: str = "github") -> str:
    """Test accuracy (%) per hardness bucket: one table per dataset (and bucketing), rows = method x IPC.

    Per-model accuracies of every seed of a row (one config of a method,
    :mod:`harness.report.compare`) are pooled, as in ``harness.report.tables``; a row of a setting that
    another of its dataset and IPC does not share names it beside its IPC. Records without a
    computed hardness section are skipped; ``csv`` gives one tidy row per bucket. ``""`` when no
    record has a section (in every format).
    """
    check_format(fmt)
    groups: dict[tuple, dict[tuple, list[RunRecord]]] = defaultdict(lambda: defaultdict(list))
    rows = [(g, name, r) for g in comparable_groups(records) for name, rs in g.rows.items() for r in rs]
    for g, name, r in rows:
        section = r.hardness
        if section is None or not section.buckets or r.status != "ok":
            continue
        # Records are only put side by side when their buckets are the same sets of test examples.
        shape = tuple((b.label, b.score_min, b.score_max, b.n_never_learned, b.n, b.misclassified_min,
                       b.misclassified_max) for b in section.buckets)
        key = (r.dataset, json.dumps(section.config, sort_keys=True), shape)
        groups[key][(name, r.ipc, g.suffix, r.method)].append(r)
    if not groups:
        return ""

    def order(cell: tuple) -> tuple:
        return (*method_key(cell[3]), cell[0], cell[1], cell[2])  # the baseline first, then by name and IPC

    if fmt == "csv":
        out = io.StringIO()
        fields = ["dataset", "method", "ipc", "bucket", "label", "score_min", "score_max", "n_never_learned", "n",
                  "accuracy_mean", "accuracy_std", "n_models", "n_seeds"]
        writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        for (dataset, _, shape), cells in sorted(groups.items(), key=lambda g: g[0][:2]):
            for cell in sorted(cells, key=order):
                rs, (method, ipc) = cells[cell], cell[:2]
                for k, (label, lo, hi, never, n, *_) in enumerate(shape):
                    accs = _bucket_accs(rs, k)
                    mean, std = pooled(accs)
                    writer.writerow({"dataset": dataset, "method": method, "ipc": ipc, "bucket": k, "label": label,
                                     "score_min": lo, "score_max": hi, "n_never_learned": never, "n": n,
                                     "accuracy_mean": mean, "accuracy_std": std,
                                     "n_models": len(accs), "n_seeds": len(rs)})
        return out.getvalue()

    parts = []
    for (dataset, _, shape), cells in sorted(groups.items(), key=lambda g: g[0][:2]):
        first = next(iter(cells.values()))[0].hardness
        headers = [latex_text(h, fmt) for h in ["method", "IPC", *(b.label for b in first.buckets), "all",
                                                "models x seeds"]]
        rows = []
        for cell in sorted(cells, key=order):
            rs, (method, ipc, setting) = cells[cell], cell[:3]
            rows.append([latex_text(method, fmt), latex_text(f"{ipc} ({setting})" if setting else str(ipc), fmt),
                         *(_mean_cell(_bucket_accs(rs, k)) for k in range(len(shape))),
                         _mean_cell([a for r in rs for a in r.eval.accuracy_per_model]), count_text(rs)])
        epochs = first.config["epochs"]
        notes = [f"{dataset}: test accuracy (%) per hardness bucket, pooled over models x seeds; {first.score}",
                 *(_legend(b, epochs) for b in first.buckets)]
        table = tabulate_rows(headers, rows, fmt)
        parts += [notes[0], table, *notes[1:], ""] if fmt != "latex" else [
            *(f"% {latex_text(t)}" for t in notes), table, ""]
    return "\n".join(parts).rstrip("\n")
