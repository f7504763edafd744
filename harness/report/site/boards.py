"""The index's HTML tables: the summary (methods x comparable groups) and a board per group.

Every text from a record goes through :func:`html.escape`; links out (papers, code) are plain
``<a>`` links, never assets. A method's colour swatch is its colour in every figure
(:func:`~harness.report.site.plots.method_color`).
"""

from __future__ import annotations

import re
from html import escape

from harness.report.references import reference_for
from harness.report.site.exports import HEADERS, memory_header, summary_rows
from harness.report.site.plots import method_color
from harness.report.site.rows import (Board, Row, accuracy_text, cost_text, lrs_text, margin_text, provenance,
                                      published, published_text, rank_text, reevaluations)

# The board's columns, each with how the page sorts it: the exports' headers, plus re-evaluations.
COLUMNS = [(h, k) for h, k in zip(HEADERS, ["num", "text", "num", "num", "num", "text", "num", "num", "text", "num",
                                            "text", "text"], strict=True)]
COLUMNS.insert(10, ("re-evaluated", "text"))


def board_ids(boards: list[Board]) -> list[str]:
    """An anchor per board, from its heading (unique, stable for the same records)."""
    ids, seen = [], set()
    for b in boards:
        base = "board-" + (re.sub(r"[^A-Za-z0-9._-]+", "-", b.heading).strip("-") or "group")
        name, k = base, 2
        while name in seen:
            name, k = f"{base}-{k}", k + 1
        seen.add(name)
        ids.append(name)
    return ids


def swatch(method: str) -> str:
    return f"<span class=\"swatch\" style=\"background:{method_color(method)}\"></span>"


def references_html(registry_name: str) -> str:
    """``paper · code`` links of a method (none for a method ddbench has no reference for)."""
    ref = reference_for(registry_name)
    if ref is None:
        return ""
    links = [f"<a href=\"{escape(p.url)}\" title=\"{escape(p.cite)}: {escape(p.title)}\">"
             f"{'paper' if len(ref.papers) == 1 else escape(p.cite.split(',')[0])}</a>" for p in ref.papers]
    if ref.code:
        links.append(f"<a href=\"{escape(ref.code)}\" title=\"reference code\">code</a>")
    return " &middot; ".join(links)


def _margin_span(row: Row, short: bool) -> str:
    """The margin, coloured and marked by its verdict (▲ above, ≈ within noise, ▼ below); ``short``:
    one line (the summary), else the test's p on a second line (the board)."""
    if row.baseline:
        best = row.name == row.best_baseline
        return f"<span class=\"coreset\">{'best coreset' if best else 'coreset'}</span>"
    if row.margin is None:
        return ""
    m = row.margin
    cls, mark = {"above": ("above", "&#9650;"), "below": ("below", "&#9660;")}.get(m.verdict, ("noise", "&#8776;"))
    full = escape(margin_text(row))
    line = f"<span class=\"{cls}\" title=\"{full}\">{mark} {m.points()} vs {escape(m.baseline)}</span>"
    if short:
        return line
    verdict = "" if m.verdict != "within noise" else "within noise, "
    return line + f"<span class=\"sub\">{verdict}{escape(m.p_text())}</span>"


def _published_html(row: Row) -> str:
    """The published number, and under it: test-selected or not, the dataset it was published on."""
    lines = []
    for p in published(row):
        number = f"{p.accuracy:.1f}" + (f" &plusmn; {p.std:.1f}" if p.std is not None else "")
        notes = (["test-selected"] if p.selection == "test-selected" else []) + [f"on {p.published_on}"]
        if p.labels != row.labels:
            notes.append(f"{p.labels} labels")
        lines.append(f"<span title=\"{escape(p.source)}; {escape(p.network)}; {escape(p.protocol)}; "
                     f"{escape(p.status)}\">{number}</span><span class=\"sub\">{escape(', '.join(notes))}</span>")
    return "".join(lines) or "-"


def _cell(text: str, value, numeric: bool = False, cls: str = "") -> str:
    classes = " ".join(c for c in ("num" if numeric else "", cls) if c)
    return f"<td data-value=\"{escape(str(value))}\"" + (f" class=\"{classes}\"" if classes else "") + f">{text}</td>"


def _summary_cell(row: Row | None) -> str:
    if row is None:
        return "<td class=\"num empty\" data-value=\"\">&ndash;</td>"
    if row.status != "ok":
        return f"<td class=\"num failed\" data-value=\"\">{escape(row.status)}</td>"
    best = row.place is not None and row.place.best and bool(row.rank_note)
    value = f"{100 * row.accuracy_mean:.2f}"
    rank = f"<span class=\"rank\">{escape(rank_text(row))}</span> " if row.rank_note else ""
    lines = [f"{rank}{'<b>' + value + '</b>' if best else value}<span class=\"pm\"> &plusmn; "
             f"{100 * row.accuracy_std:.2f}</span>"]
    sub = [f"<span title=\"models x seeds\">n {escape(row.count)}</span>"]
    margin = _margin_span(row, short=True)
    if margin:
        sub.append(margin)
    lines.append(f"<span class=\"sub\">{' &middot; '.join(sub)}</span>")
    pub = published(row)
    if pub:
        title = "; ".join(f"{p.source}; {p.network}; {p.protocol}; {p.status}" for p in pub)
        lines.append(f"<span class=\"sub pub\" title=\"{escape(title)}\">published {escape(published_text(row))}"
                     "</span>")
    return f"<td class=\"num{' best' if best else ''}\" data-value=\"{row.accuracy_mean:.6f}\">{''.join(lines)}</td>"


def summary_table(boards: list[Board], ids: list[str]) -> str:
    """Methods x comparable groups: place, pooled accuracy (bold: best and tied best), n, the margin
    over the best coreset and the published number, per group."""
    head = "".join(f"<th><a href=\"#{escape(i)}\">{escape(f'{b.dataset} IPC {b.ipc}')}</a>"
                   + (f"<span class=\"sub\">{escape(b.setting)}</span>" if b.setting else "") + "</th>"
                   for b, i in zip(boards, ids))
    body = []
    for name in summary_rows(boards):
        row_of = [next((r for r in b.rows if r.name == name), None) for b in boards]
        method = next(r.method for r in row_of if r is not None)
        body.append(f"<tr><th scope=\"row\">{swatch(method)}{escape(name)}</th>"
                    + "".join(_summary_cell(r) for r in row_of) + "</tr>")
    return (f"<div class=\"scroll\"><table class=\"summary\"><thead><tr><th>method</th>{head}</tr></thead>\n<tbody>\n"
            + "\n".join(body) + "\n</tbody></table></div>")


def _method_cell(row: Row, pages: dict[str, str]) -> str:
    runs = sorted(row.runs, key=lambda r: r.seed)
    link = pages.get(runs[0].run_id) if runs else None
    name = escape(row.name)
    name = f"<a href=\"{escape(link)}\">{name}</a>" if link else name
    sub = []
    if len(runs) > 1:
        sub.append("seeds " + " ".join(f"<a href=\"{escape(pages[r.run_id])}\">{r.seed}</a>" if r.run_id in pages
                                       else str(r.seed) for r in runs))
    refs = references_html(runs[0].registry_name) if runs else ""
    if refs:
        sub.append(refs)
    return swatch(row.method) + name + (f"<span class=\"sub\">{' &middot; '.join(sub)}</span>" if sub else "")


def board_table(board: Board, pages: dict[str, str], evals: dict[str, list]) -> str:
    """One comparable group's rows: place (=k shared), accuracy (bold best), the margin over the best
    coreset, n, the published number, cost, protocol, LRS, re-evaluations, provenance, hardware."""
    kinds = memory_header(board).removeprefix("peak memory (MiB").strip(", )")
    head = "".join(f"<th data-sort=\"{kind}\">{escape(name)}"
                   + (f"<span class=\"sub\">{escape(kinds)}</span>" if name == "peak memory (MiB)" and kinds else "")
                   + "</th>" for name, kind in COLUMNS)
    body = []
    for row in board.rows:
        seconds, memory = cost_text(row)
        commits, finished, dirty = provenance(row)
        best = row.place is not None and row.place.best and bool(row.rank_note)
        accuracy = escape(accuracy_text(row))
        again = reevaluations(row, evals)
        again_html = "<br>".join(escape(a.text()) for a in again) or "-"
        tree = "<span class=\"dirty\">dirty</span>" if dirty else "clean" if dirty is False else "tree unrecorded"
        status = escape(row.status.split()[0])
        body.append(
            f"<tr class=\"status-{status}{' best' if best else ''}\">"
            + _cell(escape(rank_text(row)), row.place.rank if row.place else "", True)
            + _cell(_method_cell(row, pages), row.method)
            + _cell(f"<b>{accuracy}</b>" if best else accuracy,
                    "" if row.accuracy_mean is None else f"{row.accuracy_mean:.6f}", True)
            + _cell(_margin_span(row, short=False) or "-", "" if row.margin is None else f"{row.margin.margin:.6f}",
                    True)
            + _cell(escape(row.count), row.n_models, True)
            + _cell(_published_html(row), published_text(row))
            + _cell(escape(seconds), "" if row.seconds_per_step is None else f"{row.seconds_per_step:.6g}", True)
            + _cell(escape(memory), "" if row.peak_memory_mib is None else f"{row.peak_memory_mib:.3f}", True)
            + _cell(escape(row.protocol), row.protocol)
            + _cell(lrs_text(row), "" if row.lrs is None else f"{row.lrs:.6f}", True)
            + _cell(again_html, again[0].label if again else "")
            + _cell(f"{escape(commits)}<span class=\"sub\">{escape(finished)} &middot; {tree}</span>", commits)
            + _cell(escape(row.hardware), row.hardware) + "</tr>")
    return (f"<div class=\"scroll\"><table class=\"leaderboard sortable\"><thead><tr>{head}</tr></thead>\n<tbody>\n"
            + "\n".join(body) + "\n</tbody></table></div>")
