"""The leaderboard as GitHub Markdown and LaTeX (booktabs), from the same rows as the site."""

from __future__ import annotations

from tabulate import tabulate

from harness.report.site.rows import Row, accuracy_text, boards, cost_text
from harness.report.tables import latex_text

HEADERS = ["rank", "method", "accuracy (%)", "models x seeds", "s / outer step", "peak memory (MiB)", "protocol",
           "LRS (%)", "hardware"]


def _cells(rank: int, row: Row, latex: bool) -> list[str]:
    seconds, memory = cost_text(row)
    pm = r" $\pm$ " if latex else " ± "
    text = [str(rank), row.method, accuracy_text(row, pm), row.count, seconds, memory, row.protocol,
            "-" if row.lrs is None else f"{100 * row.lrs:.2f}", row.hardware]
    return [latex_text(t) if latex and i != 2 else t for i, t in enumerate(text)]


def markdown(rows: list[Row]) -> str:
    parts = ["# Leaderboard", "",
             "Rendered from run records by `ddbench publish`; accuracy = mean ± std over models x seeds on the "
             "real test set under the named protocol; memory kind per row in the site.", ""]
    for (dataset, ipc), board in boards(rows).items():
        parts += [f"## {dataset}, IPC {ipc}", "",
                  tabulate([_cells(i, r, False) for i, r in enumerate(board, 1)], headers=HEADERS, tablefmt="github",
                           disable_numparse=True), ""]
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
