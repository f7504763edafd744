"""The leaderboard as GitHub Markdown and LaTeX (booktabs), from the same rows as the site."""

from __future__ import annotations

from harness.report.site.rows import Row, accuracy_text, boards, cost_text, lrs_text
from harness.report.tables import latex_text, tabulate_rows

HEADERS = ["rank", "method", "accuracy (%)", "models x seeds", "s / outer step", "peak memory (MiB)", "protocol",
           "LRS (%)", "hardware"]


def _cells(rank: int, row: Row, latex: bool) -> list[str]:
    seconds, memory = cost_text(row)
    text = [str(rank), row.method, accuracy_text(row, "latex" if latex else "github"), row.count, seconds, memory,
            row.protocol, lrs_text(row), row.hardware]
    return [latex_text(t) if latex and i != 2 else t for i, t in enumerate(text)]


def markdown(rows: list[Row]) -> str:
    parts = ["# Leaderboard", "",
             "Rendered from run records by `ddbench publish`; accuracy = mean ± std over models x seeds on the "
             "real test set under the named protocol; memory kind per row in the site.", ""]
    for (dataset, ipc), board in boards(rows).items():
        parts += [f"## {dataset}, IPC {ipc}", "",
                  tabulate_rows(HEADERS, [_cells(i, r, False) for i, r in enumerate(board, 1)], "github"), ""]
    return "\n".join(parts)


def latex(rows: list[Row]) -> str:
    """booktabs tables, one per (dataset, IPC); names escaped."""
    parts = ["% Leaderboard rendered from run records by ddbench publish (\\usepackage{booktabs})"]
    for (dataset, ipc), board in boards(rows).items():
        body = "\n".join(" & ".join(_cells(i, r, True)) + r" \\" for i, r in enumerate(board, 1))
        parts += [f"% {latex_text(dataset)}, IPC {ipc}", r"\begin{tabular}{rllllllll}", r"\toprule",
                  " & ".join(latex_text(h) for h in HEADERS) + r" \\", r"\midrule", body, r"\bottomrule",
                  r"\end{tabular}", ""]
    return "\n".join(parts)
