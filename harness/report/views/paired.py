"""The paired view: each method against the best row and against ``random_real``, seed by seed.

Where two rows of a comparable group ran the same distillation seeds, the difference of their
per-seed mean accuracies is taken seed by seed (the seed's shared randomness cancels) and
tested with a paired t-test (:func:`harness.report.ranking.paired`). Rows need >= 2 seeds in
common with the reference; ``""`` when no group has such a pair.
"""

from __future__ import annotations

import csv
import io

from harness.report.compare import comparable_groups, sample_of
from harness.report.ranking import ALPHA, Paired, paired
from harness.report.schema import RunRecord
from harness.report.tables import BASELINE, bold, check_format, count_text, latex_text, register_view, tabulate_rows


def _text(result: Paired | None, fmt: str) -> str:
    if result is None:
        return "-"
    pm = r" $\pm$ " if fmt == "latex" else " ± "
    text = f"{100 * result.difference:+.2f}{pm}{100 * result.std:.2f}"
    text = bold(text, fmt) if result.p < ALPHA else text
    return f"{text} ({len(result.seeds)} seeds, p {result.p:.3g})"


@register_view("paired", order=8, help="paired per-seed differences: each method vs the best and vs random_real",
               hint="needs >= 2 distillation seeds per method, the same ones: [grid] seeds = [0, 1, 2] in the suite")
def paired_table(records: list[RunRecord], fmt: str = "github") -> str:
    """Per comparable group: every row minus the best row and minus ``random_real`` (percentage
    points, mean ± std over the seeds both ran, paired t-test p; bold: p < 0.05)."""
    check_format(fmt)
    parts, tidy = [], []
    for g in comparable_groups(records):
        samples = {name: sample_of(rs) for name, rs in g.rows.items()}
        samples = {name: s for name, s in samples.items() if s is not None and len(s.seeds) >= 2}
        if len(samples) < 2:
            continue
        ranking = g.ranking()
        best = next(name for name in ranking.order if name in samples)
        baseline = next((name for name in samples if g.method(name) == BASELINE), None)
        refs = [best] + ([baseline] if baseline not in (None, best) else [])
        rows, any_pair = [], False
        for name in (n for n in ranking.order if n in samples):
            cells = []
            for ref in refs:
                result = None if name == ref else paired(samples[name], samples[ref])
                any_pair |= result is not None
                cells.append("(reference)" if name == ref else _text(result, fmt))
                if result is not None:
                    tidy.append({"dataset": g.dataset, "ipc": g.ipc, "setting": g.suffix, "method": name,
                                 "reference": ref, "seeds": len(result.seeds), "difference": result.difference,
                                 "std": result.std, "p": result.p})
            rows.append([latex_text(name, fmt), count_text(g.rows[name]), *cells])
        if not any_pair:
            continue
        headers = ["method", "models x seeds", f"vs best ({best})", *([f"vs {baseline}"] if len(refs) > 1 else [])]
        title = (f"{g.heading}: paired per-seed differences (percentage points, row - reference), mean ± std over the "
                 f"seeds both ran; paired t-test, two-sided; bold: p < {ALPHA:g}")
        table = tabulate_rows([latex_text(h, fmt) for h in headers], rows, fmt)
        parts.append(f"% {latex_text(title)}\n{table}" if fmt == "latex" else f"{title}:\n{table}")
    if not parts:
        return ""
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=["dataset", "ipc", "setting", "method", "reference", "seeds",
                                                 "difference", "std", "p"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(tidy)
        return out.getvalue()
    return "\n\n".join(parts)
