"""``ddbench publish RESULTS_DIR... --out SITE_DIR``: the static site, from run records.

A leaderboard is built from records other people send: a record whose file names leave its
folder, or whose distilled set is not the one it was saved with (its ``distilled_sha256``), is
left out with one line naming it (:func:`harness.report.records.checked_distilled_file`), noted
on the index page, and the rest of the site is built."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from harness.core.errors import CheckpointError, DDBenchError
from harness.core.progress import progress_bar
from harness.report.compare import select_records
from harness.report.records import checked_distilled_file, iter_eval_records, iter_records
from harness.report.site import exports, grids, pages, plots
from harness.report.site.boards import board_ids
from harness.report.site.rows import leaderboard_rows, ranked_boards
from harness.report.tables import unique_runs

GENERATED = ("assets", "figures", "runs", "index.html", "leaderboard.md", "leaderboard.tex")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def _records(sources: list[Path]) -> tuple[list, list[str], dict[Path, Path | None]]:
    """``(path, record)`` of every run record under ``sources`` that holds together, a line for each
    that does not (its file names, its set's SHA-256), and each kept record's distilled set."""
    found, refused, sets = [], [], {}
    for source in sources:
        if not Path(source).is_dir():
            raise DDBenchError("not a directory of run records", file=str(source))
        for path, record in iter_records(Path(source)):  # a malformed record: one line naming it
            try:
                sets[path] = checked_distilled_file(path, record)
            except CheckpointError as err:  # a record someone sent that does not hold together
                refused.append(str(err))
                continue
            found.append((path, record))
    if not found:
        raise DDBenchError("no run records found" if not refused else
                           f"every run record was refused, e.g. {refused[0]}", file=", ".join(map(str, sources)))
    return found, refused, sets


def _run_pages(records: list, files_of: dict[str, tuple[Path, Path | None]], evals: dict[str, list],
               runs_dir: Path) -> tuple[dict[str, str], list]:
    """A page per run in ``runs_dir`` (its record and distilled set copied beside it, the set's grid,
    its history); returns each run's page and the grids (dataset, label, image, page)."""
    run_pages, grid_list = {}, []
    runs_dir.mkdir()
    for record in progress_bar(records, desc="publish: runs", unit="run"):
        stem = _slug(f"{record.suite}-{record.dataset}-ipc{record.ipc}-{record.method}-s{record.seed}-{record.run_id}")
        source, distilled = files_of[record.run_id]
        files = {"record": f"{stem}.json"}
        shutil.copyfile(source, runs_dir / files["record"])
        grid_caption = None
        label = f"{record.dataset} IPC {record.ipc}: {record.method} s{record.seed}"
        if distilled is not None and distilled.is_file():
            files["distilled"] = f"{stem}.distilled.pt"
            shutil.copyfile(distilled, runs_dir / files["distilled"])
            names = record.class_names or None
            files["grid"], grid_caption = grids.image_grid(distilled, names, runs_dir, f"{stem}-grid", title=label)
            grid_list.append((record.dataset, label, f"runs/{files['grid']}", f"runs/{stem}.html"))
        files["history"] = plots.history(record, runs_dir, f"{stem}-history")
        (runs_dir / f"{stem}.html").write_text(pages.run_page(record, files, grid_caption, evals.get(record.run_id)))
        run_pages[record.run_id] = f"runs/{stem}.html"
    return run_pages, grid_list


def publish(sources: list[Path], out: Path, configs: list[str] = (), latest: bool = False) -> dict:
    """Build the site in ``out`` from the records under ``sources`` (those of ``configs`` / the
    latest config per cell: :func:`~harness.report.compare.select_records`) and the evaluation
    records (``ddbench eval``) of those runs found beside them; returns what it wrote, with the
    records it refused (``refused``: one line each, naming the record).

    Figures per comparable group: a step-bounded group's cost Pareto front (seconds per outer
    step, peak memory) and anytime curves; a minutes-bounded group's accuracy at equal
    wall-clock (every method had the same minutes) and final accuracy against peak memory."""
    found, refused, sets = _records(sources)
    paths = {}
    for path, record in found:
        paths.setdefault(record.run_id, path)
    records = sorted(select_records(unique_runs(r for _, r in found), configs, latest),
                     key=lambda r: (r.dataset, r.ipc, r.method, r.seed, r.run_id))
    kept = {r.run_id for r in records}
    evals: dict[str, list] = {}
    for source in sources:  # re-evaluations (ddbench eval) of the runs shown, each once
        for _, e in iter_eval_records(Path(source)):
            if e.of_run in kept and all(o.eval_id != e.eval_id for o in evals.get(e.of_run, [])):
                evals.setdefault(e.of_run, []).append(e)
    rows = leaderboard_rows(records)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in GENERATED:  # what an earlier build wrote; nothing else in the folder is touched
        target = out / name
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    (out / "assets").mkdir()
    (out / "assets" / "site.css").write_text(pages.CSS.lstrip())
    (out / "assets" / "site.js").write_text(pages.JS.lstrip())

    figures_dir = out / "figures"
    run_pages, grid_list = _run_pages(records, {run_id: (path, sets[path]) for run_id, path in paths.items()}, evals,
                                      out / "runs")
    boards = ranked_boards(rows)
    board_figures, dataset_figures = {}, {}
    for board, anchor in progress_bar(list(zip(boards, board_ids(boards))), desc="publish: figures", unit="board"):
        stem = anchor.removeprefix("board-")
        budget = board.rows[0].budget
        if budget is not None and budget[0] == "minutes":
            figs = [(plots.budget_curves(board.rows, board.heading, figures_dir, f"cost-{stem}", budget[1]),
                     f"accuracy at equal wall-clock (every method had {budget[1]:g} min): the anytime curves pooled "
                     "over seeds at the times they were due, and the final accuracy against peak memory; dashed: "
                     "the best coreset")]
        else:
            figs = [(plots.pareto(board.rows, board.heading, figures_dir, f"pareto-{stem}"),
                     "accuracy against seconds per outer step and against peak memory; grey: the Pareto front; "
                     "dashed: the best coreset"),
                    (plots.anytime(board.rows, board.heading, figures_dir, f"anytime-{stem}"),
                     "accuracy at budget: the anytime curves")]
        board_figures[board.key] = [(f"figures/{src}", caption) for src, caption in figs if src]
    for dataset in sorted({r.dataset for r in rows}):
        figs = [(plots.accuracy_vs_ipc(rows, dataset, figures_dir), "accuracy against IPC, mean ± std"),
                (plots.subset_curves(records, dataset, figures_dir), "subsets of distilled sets (prefixes, random "
                                                                     "subsets, block prefixes) by subset IPC"),
                (plots.hardness(records, dataset, figures_dir), "accuracy per hardness bucket (forgetting scores)")]
        dataset_figures[dataset] = [(f"figures/{src}", caption) for src, caption in figs if src]
    n_evals = sum(len(es) for es in evals.values())
    (out / "index.html").write_text(pages.index_page(boards, board_figures, dataset_figures, grid_list, run_pages,
                                                     evals, len(records), n_evals, [str(s) for s in sources], refused))
    (out / "leaderboard.md").write_text(exports.markdown(rows))
    (out / "leaderboard.tex").write_text(exports.latex(rows))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"records": len(records), "boards": len(boards), "runs": len(run_pages), "evaluations": n_evals,
            "bytes": size, "refused": refused}
