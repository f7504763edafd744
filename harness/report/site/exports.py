"""The leaderboard as GitHub Markdown and LaTeX (booktabs), from the same rows as the site.

Both open with the summary (methods x comparable groups: each row's place, pooled accuracy and
n; bold the best and tied best), then a table per comparable group: places with ties (``=2``),
bold best, the margin over the best baseline, the published number, cost, provenance. Text from
records (method labels, suite names, settings, devices) is escaped: :func:`md_text` and
:func:`tex_text`.
"""

from __future__ import annotations

from harness.report.margins import margins_footnote
from harness.report.ranking import rank_footnote
from harness.report.site.rows import (Board, Row, accuracy_text, cost_text, lrs_text, margin_text, provenance,
                                      published_text, rank_text, ranked_boards)
from harness.report.tables import bold, latex_text, tabulate_rows

HEADERS = ["rank", "method", "accuracy (%)", "vs best coreset", "models x seeds", "published", "s / outer step",
           "peak memory (MiB)", "protocol", "LRS (%)", "commit", "hardware"]
_MD_SPECIAL = {"\\": "\\\\", "`": "\\`", "*": "\\*", "_": "\\_", "[": "\\[", "]": "\\]", "|": "\\|", "#": "\\#",
               "<": "&lt;", ">": "&gt;", "&": "&amp;", "$": "\\$"}


def md_text(value: str) -> str:
    """Record text as GitHub Markdown table text: emphasis, links, HTML and the cell separator escaped.

    An underscore between two letters or digits (``random_real``) is left as it is: CommonMark
    never reads an intraword ``_`` as emphasis, and the raw text stays readable; any other is escaped.
    """
    value = " ".join(str(value).split())  # a newline would end the table row
    out = []
    for i, ch in enumerate(value):
        if ch == "_" and 0 < i < len(value) - 1 and value[i - 1].isalnum() and value[i + 1].isalnum():
            out.append(ch)
        else:
            out.append(_MD_SPECIAL.get(ch, ch))
    return "".join(out)


def tex_text(value: str) -> str:
    """Record text as LaTeX text (every special character, ``<`` and ``>`` included)."""
    return latex_text(" ".join(str(value).split()))  # a newline would break the tabular


def board_title(board: Board) -> str:
    """``digits, IPC 1`` with what tells the group from its siblings (``(budget.outer_steps 8)``)."""
    return f"{board.dataset}, IPC {board.ipc}" + (f" ({board.setting})" if board.setting else "")


def memory_header(board: Board) -> str:
    kinds = sorted({r.memory_kind for r in board.rows if r.peak_memory_mib is not None})
    return f"peak memory (MiB, {'/'.join(kinds)})" if kinds else "peak memory (MiB)"


def _commit(row: Row) -> str:
    commits, finished, dirty = provenance(row)
    return f"{commits}{' (dirty)' if dirty else ''}, {finished}"


def _cells(row: Row, escape, fmt: str) -> list[str]:
    seconds, memory = cost_text(row)
    accuracy = accuracy_text(row, fmt)
    if row.place is not None and row.place.best and row.rank_note:
        accuracy = bold(accuracy, fmt)
    return [rank_text(row), escape(row.name), accuracy, escape(margin_text(row)), escape(row.count),
            escape(published_text(row) or "-"), escape(seconds), escape(memory), escape(row.protocol),
            escape(lrs_text(row)), escape(_commit(row)), escape(row.hardware)]


def _summary_cell(row: Row | None, fmt: str) -> str:
    if row is None:
        return "-"
    if row.status != "ok":
        return row.status
    value = f"{100 * row.accuracy_mean:.2f}"
    value = bold(value, fmt) if row.place is not None and row.place.best and row.rank_note else value
    rank = f"{rank_text(row)} " if row.rank_note else ""
    return f"{rank}{value} ({row.count})"


def summary_rows(boards: list[Board]) -> list[str]:
    """The row names of the summary: baselines first, then by name."""
    kinds = {}
    for b in boards:
        for r in b.rows:
            kinds[r.name] = kinds.get(r.name, True) and r.baseline
    return sorted(kinds, key=lambda name: (not kinds[name], name))


def _summary(boards: list[Board], escape, fmt: str) -> tuple[list[str], list[list[str]]]:
    headers = ["method", *(escape(f"{b.dataset} IPC {b.ipc}" + (f" ({b.setting})" if b.setting else ""))
                           for b in boards)]
    rows = []
    for name in summary_rows(boards):
        cells = [_summary_cell(next((r for r in b.rows if r.name == name), None), fmt) for b in boards]
        rows.append([escape(name), *cells])
    return headers, rows


def notes(boards: list[Board]) -> list[str]:
    """What the places and margins of ``boards`` mean, naming only the tests they used."""
    rank_tests = frozenset(t for b in boards for r in b.rows for t in r.rank_tests)
    margin_tests = frozenset(r.margin.comparison.on for b in boards for r in b.rows if r.margin is not None)
    return [n for n in (rank_footnote(rank_tests), margins_footnote(margin_tests)) if n]


def markdown(rows: list[Row]) -> str:
    boards = ranked_boards(rows)
    head, body = _summary(boards, md_text, "github")
    parts = ["# Leaderboard", "",
             "Rendered from run records by `ddbench publish`; accuracy = mean ± std over models x seeds on the "
             "real test set under the named protocol; records of different settings are never ranked together.", "",
             "## Summary", "", "Place in its column (=k: shared within noise), pooled accuracy (%), (models x seeds); "
             "bold: the best and tied best.", "", tabulate_rows(head, body, "github"), "",
             *(f"{n}  " for n in notes(boards)), ""]
    for board in boards:
        headers = [*HEADERS[:7], memory_header(board), *HEADERS[8:]]
        parts += [f"## {md_text(board_title(board))}", ""]
        if board.differs:
            parts += [f"Settings differ among this dataset and IPC's groups: {md_text(board.differs)}.", ""]
        parts += [tabulate_rows(headers, [_cells(r, md_text, "github") for r in board.rows], "github"), ""]
        if board.footnote:
            parts += [board.footnote, ""]
    return "\n".join(parts)


def latex(rows: list[Row]) -> str:
    """booktabs tables: the summary, then one per comparable group; text from records escaped."""
    boards = ranked_boards(rows)
    head, body = _summary(boards, tex_text, "latex")
    parts = ["% Leaderboard rendered from run records by ddbench publish (\\usepackage{booktabs})",
             "% Summary: place (=k: shared within noise), pooled accuracy (%), (models x seeds); "
             "bold: best and tied best",
             tabulate_rows(head, body, "latex"),
             *(f"% {tex_text(n)}" for n in notes(boards)), ""]
    for board in boards:
        headers = [tex_text(h) for h in [*HEADERS[:7], memory_header(board), *HEADERS[8:]]]
        parts += [f"% {tex_text(board_title(board))}",
                  tabulate_rows(headers, [_cells(r, tex_text, "latex") for r in board.rows], "latex"), ""]
    return "\n".join(parts)
