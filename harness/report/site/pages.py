"""The site's HTML: an index of leaderboards (sortable, filterable by a few lines of plain
JavaScript, readable without it) and a page per run. Every asset is local."""

from __future__ import annotations

import json
from html import escape

from harness.report.schema import RunRecord
from harness.report.site.exports import HEADERS
from harness.report.site.rows import Row, accuracy_text, cost_text, lrs_text

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 0 1.2em 3em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6em 0; }
th, td { padding: 0.25em 0.7em; border-bottom: 1px solid #eee; text-align: left; white-space: nowrap; }
th { background: #f4f4f4; cursor: pointer; user-select: none; }
th[aria-sort="ascending"]::after { content: " \\25B2"; } th[aria-sort="descending"]::after { content: " \\25BC"; }
tr.status-failed td, tr.status-diverged td { color: #a33; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { display: inline-block; margin: 0.5em 1em 0.5em 0; vertical-align: top; }
figure img { max-width: 560px; border: 1px solid #eee; } figcaption { font-size: 12px; color: #555; max-width: 560px; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 12px; }
.note { color: #555; font-size: 13px; } .hidden { display: none; }
"""

JS = """
// Sort a leaderboard by the clicked column; filter the boards by dataset. The page reads the same
// without this script: the tables come ranked by accuracy.
document.querySelectorAll("table.sortable th").forEach(function (th, col) {
  th.addEventListener("click", function () {
    var table = th.closest("table"), body = table.tBodies[0];
    var up = th.getAttribute("aria-sort") !== "ascending";
    table.querySelectorAll("th").forEach(function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", up ? "ascending" : "descending");
    var numeric = th.dataset.sort === "num";
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.value, y = b.cells[col].dataset.value;
      var c = numeric ? (parseFloat(x) || -Infinity) - (parseFloat(y) || -Infinity) : x.localeCompare(y);
      return up ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
var filter = document.getElementById("dataset-filter");
if (filter) {
  filter.addEventListener("change", function () {
    document.querySelectorAll("[data-dataset]").forEach(function (el) {
      el.classList.toggle("hidden", filter.value !== "" && el.dataset.dataset !== filter.value);
    });
  });
}
"""

# The exports' headers, each with how the page sorts it.
COLUMNS = list(zip(HEADERS, ["num", "text", "num", "num", "num", "num", "text", "num", "text"], strict=True))


def _page(title: str, body: str, depth: int = 0) -> str:
    up = "../" * depth
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{escape(title)}</title>\n"
            f"<link rel=\"stylesheet\" href=\"{up}assets/site.css\"></head>\n<body>\n{body}\n"
            f"<script src=\"{up}assets/site.js\"></script>\n</body></html>\n")


def _figure(src: str | None, caption: str, svg: bool = True) -> str:
    if src is None:
        return ""
    links = f" <a href=\"{escape(src[:-4])}.svg\">SVG</a>" if svg else ""
    return (f"<figure><img src=\"{escape(src)}\" alt=\"{escape(caption)}\">"
            f"<figcaption>{escape(caption)}{links}</figcaption></figure>")


def _cell(text: str, value, numeric: bool = False) -> str:
    cls = " class=\"num\"" if numeric else ""
    return f"<td data-value=\"{escape(str(value))}\"{cls}>{text}</td>"


def leaderboard_table(board: list[Row], pages: dict[str, str]) -> str:
    head = "".join(f"<th data-sort=\"{kind}\">{escape(name)}</th>" for name, kind in COLUMNS)
    body = []
    several = len({r.suite for r in board}) > 1 or len({r.method for r in board}) < len(board)
    for rank, row in enumerate(board, 1):
        seconds, memory = cost_text(row)
        link = pages.get(row.runs[0].run_id)
        name = escape(row.method) + (f" <span class=\"note\">({escape(row.suite)})</span>" if several else "")
        name = f"<a href=\"{escape(link)}\">{name}</a>" if link else name
        status = row.status.split()[0]
        body.append(
            f"<tr class=\"status-{escape(status)}\">"
            + _cell(str(rank), rank, True) + _cell(name, row.method)
            + _cell(escape(accuracy_text(row)), "" if row.accuracy_mean is None else f"{row.accuracy_mean:.6f}", True)
            + _cell(escape(row.count), row.n_models, True)
            + _cell(escape(seconds), "" if row.seconds_per_step is None else f"{row.seconds_per_step:.6g}", True)
            + _cell(escape(memory), "" if row.peak_memory_mib is None else f"{row.peak_memory_mib:.3f}", True)
            + _cell(escape(row.protocol), row.protocol)
            + _cell(lrs_text(row), "" if row.lrs is None else f"{row.lrs:.6f}", True)
            + _cell(escape(row.hardware), row.hardware) + "</tr>")
    return (f"<table class=\"leaderboard sortable\"><thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body)
            + "\n</tbody></table>")


def index_page(boards: dict[tuple[str, int], list[Row]], figures: dict, dataset_figures: dict, grids: list,
               pages: dict[str, str], n_records: int, sources: list[str]) -> str:
    datasets = sorted({d for d, _ in boards})
    options = "".join(f"<option value=\"{escape(d)}\">{escape(d)}</option>" for d in datasets)
    parts = [
        "<header><h1>ddbench leaderboard</h1>",
        f"<p class=\"note\">Rendered from {n_records} run records ({escape(', '.join(sources))}) by "
        "<code>ddbench publish</code>. Accuracy: mean ± std of the test accuracies of every evaluated network "
        "(models x seeds) under the protocol named in its row; records of different configs are never pooled; "
        "a diverged or failed run shows as such, never as a number. Click a column to sort.</p>",
        f"<p><label>Dataset: <select id=\"dataset-filter\"><option value=\"\">all</option>{options}</select>"
        "</label> &middot; <a href=\"leaderboard.md\">Markdown</a> &middot; <a href=\"leaderboard.tex\">LaTeX</a></p>"
        "</header>",
        "<nav><ul>" + "".join(f"<li data-dataset=\"{escape(d)}\"><a href=\"#{escape(d)}-ipc{k}\">{escape(d)}, "
                               f"IPC {k}</a></li>" for d, k in boards) + "</ul></nav>"]
    for (dataset, ipc), board in boards.items():
        figs = "".join(_figure(src, caption) for src, caption in figures.get((dataset, ipc), []))
        kinds = sorted({r.memory_kind for r in board})
        parts.append(f"<section class=\"board\" data-dataset=\"{escape(dataset)}\" id=\"{escape(dataset)}-ipc{ipc}\">"
                     f"<h2>{escape(dataset)}, IPC {ipc}</h2>{leaderboard_table(board, pages)}"
                     f"<p class=\"note\">Peak memory: {escape(', '.join(kinds))}.</p>{figs}</section>")
    for dataset in datasets:
        figs = "".join(_figure(src, caption) for src, caption in dataset_figures.get(dataset, []))
        if figs:
            parts.append(f"<section data-dataset=\"{escape(dataset)}\"><h2>{escape(dataset)}: across IPCs</h2>"
                         f"{figs}</section>")
    if grids:
        cells = "".join(f"<figure data-dataset=\"{escape(d)}\"><a href=\"{escape(page)}\"><img src=\"{escape(src)}\" "
                        f"alt=\"{escape(label)}\" style=\"max-width:260px\"></a><figcaption>{escape(label)}"
                        "</figcaption></figure>" for d, label, src, page in grids)
        parts.append(f"<section><h2>Distilled sets</h2><p class=\"note\">A row per class, a column per image; "
                     f"each run's page says how its pixels were recovered.</p>{cells}</section>")
    return _page("ddbench leaderboard", "\n".join(parts))


def run_page(record: RunRecord, files: dict[str, str | None], grid_caption: str | None) -> str:
    """A run: what it was, how it was measured, its history and its distilled set."""
    acc = ("diverged at outer step " + str(record.distill.diverged_at) if record.status == "diverged" else
           record.status if record.status != "ok" else
           f"{100 * record.eval.accuracy_mean:.2f} ± {100 * record.eval.accuracy_std:.2f} "
           f"({len(record.eval.accuracy_per_model)} networks)")
    facts = [("suite", record.suite), ("dataset", record.dataset), ("IPC", record.ipc),
             ("method", f"{record.method} ({record.registry_name})"), ("seed", record.seed), ("status", record.status),
             ("test accuracy (%)", acc), ("protocol", record.eval.protocol.get("protocol", "standard")),
             ("outer steps", f"{record.distill.outer_steps} (stopped by {record.distill.stopped_by})"),
             ("seconds per outer step", f"{record.distill.seconds_per_outer_step:.4g}"),
             ("peak memory", f"{record.distill.peak_memory_bytes / 2**20:.1f} MiB ({record.distill.memory_kind})"),
             ("device", f"{record.hardware.device_name} ({record.hardware.device})"),
             ("versions", f"torch {record.hardware.torch}, torchopt {record.hardware.torchopt}, python "
                          f"{record.hardware.python}, ddbench {record.hardware.ddbench}"),
             ("run id", record.run_id), ("started / finished", f"{record.started_at} / {record.finished_at}")]
    if record.scores is not None and record.scores.lrs is not None:
        facts.append(("DD-Ranking", f"LRS {100 * record.scores.lrs:.2f}, ARS {100 * record.scores.ars:.2f}, "
                                    f"HLR {100 * record.scores.hlr:.2f}, IOR {100 * record.scores.ior:.2f}"))
    if record.provenance is not None:
        git = record.provenance.git
        facts.append(("provenance", f"ddbench {record.provenance.ddbench}"
                                    + (f", commit {git['commit'][:12]}{' (dirty)' if git['dirty'] else ''}" if git
                                       else "")))
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in facts)
    links = [f"<a href=\"{escape(files['record'])}\">run record (JSON)</a>"]
    if files.get("distilled"):
        links.append(f"<a href=\"{escape(files['distilled'])}\">distilled set (torch)</a>")
    body = [f"<p><a href=\"../index.html\">&larr; leaderboard</a></p><h1>{escape(record.method)} on "
            f"{escape(record.dataset)}, IPC {record.ipc}, seed {record.seed}</h1>",
            f"<table>{rows}</table><p>{' &middot; '.join(links)}</p>"]
    if files.get("history"):
        body.append("<h2>Distillation history</h2>" + _figure(files["history"], "outer loss, meta-gradient norm "
                                                                               "and window per outer step"))
    if files.get("grid"):
        body.append("<h2>Distilled set</h2>" + _figure(files["grid"], grid_caption or "", svg=False))
    for title, value in (("Method config", record.method_config), ("Evaluation protocol", record.eval.protocol),
                         ("Network", record.model), ("Budget", record.budget), ("Dataset", record.dataset_config),
                         ("Preprocessing", record.preprocessing)):
        body.append(f"<h2>{escape(title)}</h2><pre>{escape(json.dumps(value, indent=2, sort_keys=True))}</pre>")
    return _page(f"{record.method} {record.dataset} IPC {record.ipc}", "\n".join(body), depth=1)
