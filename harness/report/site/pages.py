"""The site's HTML: an index (the summary of methods x comparable groups first, then a board per
group: sortable, filterable by a few lines of plain JavaScript, readable without it; a "how to
read" section) and a page per run. Every asset is local; papers and code are plain links out."""

from __future__ import annotations

import json
from html import escape

from harness.report.schema import RunRecord
from harness.report.site.boards import board_ids, board_table, references_html, summary_table
from harness.report.site.exports import notes
from harness.report.site.rows import Board
from harness.report.tables import mean_std_text

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1500px; padding: 0 1.2em 3em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
.scroll { overflow-x: auto; max-width: 100%; -webkit-overflow-scrolling: touch; }
table { border-collapse: collapse; margin: 0.6em 0; }
th, td { padding: 0.25em 0.7em; border-bottom: 1px solid #eee; text-align: left; white-space: nowrap;
  vertical-align: top; }
thead th { background: #f4f4f4; vertical-align: bottom; }
table.leaderboard thead th { white-space: normal; min-width: 2.5em; }
table.leaderboard th, table.leaderboard td { padding: 0.25em 0.5em; }
table.summary th[scope="row"], table.summary thead th:first-child { position: sticky; left: 0; background: #fff;
  z-index: 1; box-shadow: 1px 0 0 #eee; }
table.summary thead th:first-child { background: #f4f4f4; }
table.sortable th { cursor: pointer; user-select: none; }
th[aria-sort="ascending"]::after { content: " \\25B2"; } th[aria-sort="descending"]::after { content: " \\25BC"; }
tr.status-failed td, tr.status-diverged td { color: #a33; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.summary td { text-align: right; }
table.summary td.best { background: #f3f8ee; } td.empty { color: #bbb; }
.sub { display: block; font-size: 11px; color: #666; font-weight: normal; }
.pm { color: #666; font-size: 12px; } .rank { color: #555; font-size: 12px; }
.swatch { display: inline-block; width: 0.75em; height: 0.75em; border-radius: 2px; margin-right: 0.4em; }
.above { color: #1a7f37; } .below { color: #b42318; } .noise { color: #777; } .coreset { color: #777; }
.dirty { color: #b42318; font-weight: 600; }
figure { display: inline-block; margin: 0.5em 1em 0.5em 0; vertical-align: top; max-width: 100%; }
figure img { max-width: min(100%, 760px); height: auto; border: 1px solid #eee; }
figcaption { font-size: 12px; color: #555; max-width: 640px; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 12px; }
dl.howto dt { font-weight: 600; margin-top: 0.5em; } dl.howto dd { margin-left: 1.2em; max-width: 60em; }
.note { color: #555; font-size: 13px; } .hidden { display: none; }
@media (max-width: 700px) {
  body { padding: 0 0.6em 2em; font-size: 13px; }
  th, td { padding: 0.2em 0.45em; }
  figure { display: block; margin: 0.5em 0; }
}
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

HOWTO = """
<section id="how-to-read"><h2>How to read this page</h2><dl class="howto">
<dt>Comparable groups</dt><dd>Records are ranked together only when dataset, IPC, data options, network,
evaluation protocol with its settings, budget (kind and size; a minutes budget also its device) and label kind
agree. Groups of one dataset and IPC are separate columns and boards, headed by the setting that tells them apart.
</dd>
<dt>Place, =k, bold</dt><dd>A row's place is 1 + the number of rows of its group significantly better than it
(two-sided Welch t-test at 5%: on per-seed means where both rows have &ge; 2 distillation seeds, else on the
per-model accuracies, which measure evaluation noise only). Rows with the same place share it (=2); bold is
place 1, the best and every row not significantly below it.</dd>
<dt>n (models x seeds)</dt><dd>Networks evaluated on each distilled set x distillation seeds; the accuracy is the
mean &plusmn; std of all of them, pooled.</dd>
<dt>vs best coreset</dt><dd>Baselines are the rows that took no outer step (random_real, herding, kcenter,
forgetting: real images selected, not distilled). Each distilled row shows its pooled mean minus the best
baseline's, in points, with the same Welch test: &#9650; significantly above, &#8776; within noise,
&#9660; significantly below ("1 seed": evaluation noise only).</dd>
<dt>published</dt><dd>The number the method's paper or code reports for this dataset and IPC, from the
reproduction table (docs/reproduction.md), with the dataset it was published on (a cifar10-jpeg result is shown
beside CIFAR-10's number). "test-selected": the authors' code keeps the best checkpoint and budget on the test
set, an upper bound rather than a final number. Published settings (network width, steps) usually differ.</dd>
<dt>LRS, ARS (DD-Ranking)</dt><dd>Li et al., 2025. IOR = acc(distilled) &minus; acc(random real subset, same IPC
and label kind); HLR = acc(full training set) &minus; acc(distilled images with hard labels);
LRS = (e<sup>a</sup> &minus; e<sup>&minus;1</sup>) / (e &minus; e<sup>&minus;1</sup>) with a = &frac12;&nbsp;IOR
&minus; &frac12;&nbsp;HLR (label-robust score); ARS normalises the same way the mean of the improvement over
random with and without augmentation (augmentation-robust score). Accuracies as fractions, so both lie in [0, 1];
higher is better.</dd>
<dt>Peak memory: its kind is in every header</dt><dd><code>cuda_max_allocated_above_start</code>: the CUDA
allocator's peak of allocated tensors during distillation minus what was allocated when it began (the resident
dataset excluded; the allocator's cache not counted). <code>cpu_tensor_peak_sampled</code>: ddbench's tensor
meter on sampled outer steps (the first, then about 5% of the time): peak bytes of live tensors those steps created.
<code>cpu_peak_rss</code> (older records): the whole process's resident set size, sampled: libraries, the dataset
and the allocator's leftovers included, so it hardly differs between methods. Kinds are never compared.</dd>
<dt>Cost</dt><dd>Seconds per outer step: the median over seeds. In a minutes-bounded group every method had the
same wall-clock, so its cost figure compares accuracy at equal wall-clock (the anytime curves, under their own
cheaper protocol) instead of seconds per step.</dd>
<dt>commit, dirty, finished</dt><dd>The git commit each run's code came from; "dirty": the working tree had
uncommitted changes, so the code may not be that commit's. "finished": the date (UTC) the runs ended.</dd>
<dt>re-evaluated</dt><dd><code>ddbench eval</code> records: the same distilled sets trained again under another
protocol or network; also on each run's page.</dd>
</dl></section>
"""


def _page(title: str, body: str, depth: int = 0) -> str:
    up = "../" * depth
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{escape(title)}</title>\n<link rel=\"stylesheet\" href=\"{up}assets/site.css\"></head>\n<body>\n"
            f"{body}\n<script src=\"{up}assets/site.js\"></script>\n</body></html>\n")


def _figure(src: str | None, caption: str, svg: bool = True) -> str:
    if src is None:
        return ""
    links = f" <a href=\"{escape(src[:-4])}.svg\">SVG</a>" if svg else ""
    return (f"<figure><img src=\"{escape(src)}\" alt=\"{escape(caption)}\" loading=\"lazy\">"
            f"<figcaption>{escape(caption)}{links}</figcaption></figure>")


def index_page(boards: list[Board], figures: dict, dataset_figures: dict, grids: list, pages: dict[str, str],
               evals: dict[str, list], n_records: int, n_evals: int, sources: list[str],
               refused: list[str] = ()) -> str:
    """The summary first (methods x comparable groups), then a board per group with its figures,
    the figures across IPCs, the distilled sets, and how to read it all; the records left out
    (``refused``: a line each, naming the record and why) are said under the header."""
    ids = board_ids(boards)
    datasets = sorted({b.dataset for b in boards})
    options = "".join(f"<option value=\"{escape(d)}\">{escape(d)}</option>" for d in datasets)
    again = f" and {n_evals} re-evaluation records" if n_evals else ""
    parts = [
        "<header><h1>ddbench leaderboard</h1>",
        f"<p class=\"note\">Rendered from {n_records} run records{again} ({escape(', '.join(sources))}) by "
        "<code>ddbench publish</code>. Accuracy: mean &plusmn; std of the test accuracies of every evaluated network "
        "(models x seeds) under the protocol of its group; records of different settings are never ranked together; "
        "a diverged or failed run shows as such, never as a number. <a href=\"#how-to-read\">How to read</a> "
        "&middot; <a href=\"leaderboard.md\">Markdown</a> &middot; <a href=\"leaderboard.tex\">LaTeX</a></p>"
        "</header>",
        _refused(refused),
        "<section id=\"summary\"><h2>Summary</h2>" + summary_table(boards, ids)
        + "<p class=\"note\">Per column (a comparable group): place (=k shared within noise), pooled accuracy (%), "
          "bold the best and tied best; n models x seeds; the margin over the best coreset (&#9650; above, &#8776; "
          "within noise, &#9660; below); the published number where there is one.</p>"
        + "<details class=\"note\"><summary>The tests behind places and margins</summary>"
        + "".join(f"<p>{escape(n)}</p>" for n in notes(boards)) + "</details></section>",
        f"<p><label>Dataset: <select id=\"dataset-filter\"><option value=\"\">all</option>{options}</select>"
        "</label></p>",
        "<nav><ul>" + "".join(f"<li data-dataset=\"{escape(b.dataset)}\"><a href=\"#{escape(i)}\">"
                               f"{escape(b.heading)}</a></li>" for b, i in zip(boards, ids)) + "</ul></nav>"]
    for board, anchor in zip(boards, ids):
        figs = "".join(_figure(src, caption) for src, caption in figures.get(board.key, []))
        differs = (f"<p class=\"note\">Settings differ among the groups of {escape(board.dataset)} IPC {board.ipc}: "
                   f"{escape(board.differs)}; never ranked together.</p>" if board.differs else "")
        footnote = f"<p class=\"note\">{escape(board.footnote)}</p>" if board.footnote else ""
        parts.append(f"<section class=\"board\" data-dataset=\"{escape(board.dataset)}\" id=\"{escape(anchor)}\">"
                     f"<h2>{escape(board.heading)}</h2>{differs}{board_table(board, pages, evals)}{footnote}{figs}"
                     "</section>")
    for dataset in datasets:
        figs = "".join(_figure(src, caption) for src, caption in dataset_figures.get(dataset, []))
        if figs:
            parts.append(f"<section data-dataset=\"{escape(dataset)}\"><h2>{escape(dataset)}: across IPCs</h2>"
                         f"{figs}</section>")
    if grids:
        cells = "".join(f"<figure data-dataset=\"{escape(d)}\"><a href=\"{escape(page)}\"><img src=\"{escape(src)}\" "
                        f"alt=\"{escape(label)}\" style=\"max-width:260px\" loading=\"lazy\"></a><figcaption>"
                        f"{escape(label)}</figcaption></figure>" for d, label, src, page in grids)
        parts.append("<section><h2>Distilled sets</h2><p class=\"note\">A row per class, a column per image, "
                     "contrast stretched per set; each run's page says how its pixels were recovered.</p>"
                     f"{cells}</section>")
    parts.append(HOWTO.strip())
    return _page("ddbench leaderboard", "\n".join(parts))


def _refused(lines: list[str]) -> str:
    """The records ``ddbench publish`` left out, and why (their file names, their distilled set's SHA-256)."""
    if not lines:
        return ""
    items = "".join(f"<li><code>{escape(line)}</code></li>" for line in lines)
    return (f"<section id=\"refused\"><p class=\"note dirty\">{len(lines)} run record(s) left out: a file name that "
            "leaves the record's folder, or a distilled set that is not the one the record was saved with "
            f"(its SHA-256).</p><ul class=\"note\">{items}</ul></section>")


def run_page(record: RunRecord, files: dict[str, str | None], grid_caption: str | None,
             evals: list | None = None) -> str:
    """A run: what it was, how it was measured, where it comes from, its re-evaluations, its history
    and its distilled set."""
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
    git = record.provenance.git if record.provenance is not None else None
    tree = ("(dirty: uncommitted changes)" if git.get("dirty") else "(clean tree)") if git else ""
    facts.append(("provenance", (f"ddbench {record.provenance.ddbench}" if record.provenance is not None else "-")
                  + (f", commit {str(git.get('commit', ''))[:12]} {tree}" if git else ", no git commit recorded")))
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in facts)
    refs = references_html(record.registry_name)
    if refs:
        rows += f"<tr><th>paper, code</th><td>{refs}</td></tr>"
    links = [f"<a href=\"{escape(files['record'])}\">run record (JSON)</a>"]
    if files.get("distilled"):
        links.append(f"<a href=\"{escape(files['distilled'])}\">distilled set (torch)</a>")
    body = [f"<p><a href=\"../index.html\">&larr; leaderboard</a></p><h1>{escape(record.method)} on "
            f"{escape(record.dataset)}, IPC {record.ipc}, seed {record.seed}</h1>",
            f"<div class=\"scroll\"><table>{rows}</table></div><p>{' &middot; '.join(links)}</p>"]
    if evals:
        again = "".join(
            f"<tr><td>{escape(e.eval.protocol.get('protocol', 'standard'))}</td>"
            f"<td>{escape(str(e.model.get('name', '?')))}</td>"
            f"<td class=\"num\">{escape(_accuracy(e.eval.accuracy_per_model))}</td>"
            f"<td class=\"num\">{len(e.eval.accuracy_per_model)}</td><td>{escape(e.finished_at)}</td>"
            f"<td>{escape(e.eval_id)}</td></tr>" for e in sorted(evals, key=lambda e: (e.finished_at, e.eval_id)))
        body.append("<h2>Re-evaluations (ddbench eval)</h2><div class=\"scroll\"><table><thead><tr><th>protocol</th>"
                    "<th>network</th><th>test accuracy (%)</th><th>networks</th><th>finished</th><th>eval id</th>"
                    f"</tr></thead><tbody>{again}</tbody></table></div>")
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


def _accuracy(values: list[float]) -> str:
    return mean_std_text(values, "github") if values else "-"
