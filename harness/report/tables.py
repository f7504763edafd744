"""Table views: registered renderers of run records, and the helpers they share.

A view is a function ``(records, fmt) -> str`` registered by name with :func:`register_view`
(``ddbench table DIR --view NAME``); it reads typed :class:`RunRecord` s only, never files,
and returns ``""`` when no record has what it shows (its ``hint`` then says what would fill
it). Tables are rendered from records, never typed by hand. Shared here: formats (github,
latex: booktabs, csv), method order (the baseline first), ±, bold and LaTeX text, pooling of
per-model accuracies, one run counted once. Which records may be ranked together is
:mod:`harness.report.compare`; ranks with ties are :mod:`harness.report.ranking`.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from tabulate import tabulate

from harness.core.errors import DDBenchError
from harness.core.registry import Registry
from harness.report.schema import RunRecord

FORMATS = ("github", "latex", "csv")
BASELINE = "random_real"


@dataclass(frozen=True)
class View:
    """A registered table view: ``render(records, fmt) -> str`` ("" when it has nothing to show)."""

    name: str
    render: Callable[[list, str], str]
    order: int  # position in ``--view all``
    help: str
    reads: str = "runs"  # "runs": run records; "evals": evaluation records (ddbench eval)
    hint: str = ""  # what fills an empty view (a suite table, a command)


VIEWS: Registry[View] = Registry("table view", group="ddbench.views", builtins="harness.report.views")


def register_view(name: str, *, order: int = 100, help: str = "", reads: str = "runs", hint: str = ""):
    """Decorator: register ``fn(records, fmt) -> str`` as the view ``name`` (of run records, or of
    evaluation records with ``reads="evals"``); ``hint``: what fills it when it is empty (default:
    "enable [NAME] in the suite")."""

    def decorate(fn: Callable[[list, str], str]):
        VIEWS.register(name, View(name, fn, order, help or _first_line(fn.__doc__), reads,
                                  hint or f"enable [{name}] in the suite"))
        return fn

    return decorate


def _first_line(doc: str | None) -> str:
    return next(iter((doc or "").strip().splitlines()), "")


def view_names() -> list[str]:
    return [v.name for v in sorted((v for _, v in VIEWS.items()), key=lambda v: (v.order, v.name))]


def render_view(records: list[RunRecord], view: str = "main", fmt: str = "github", evals: list | None = None) -> str:
    """One registered view, or ``all``: every non-empty view stacked in order.

    A view with nothing to show returns ``""`` (in every format); asked for alone, that is a
    :class:`DDBenchError` naming ``--view``.
    """
    def run(v: View) -> str:
        return v.render(list(evals or []) if v.reads == "evals" else records, fmt)

    if view == "all":
        parts = [run(VIEWS.get(name)) for name in view_names()]
        return "\n\n".join(part for part in parts if part.strip())
    if view not in VIEWS:
        raise ValueError(f"view must be one of {', '.join([*view_names(), 'all'])}")
    text = run(VIEWS.get(view))
    if not text.strip():
        raise DDBenchError(f"no record here has what the {view!r} view shows ({VIEWS.get(view).hint})", field="--view")
    return text


def check_format(fmt: str) -> None:
    """Raise ``ValueError`` unless ``fmt`` is one of :data:`FORMATS`."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}")


def method_key(method: str) -> tuple[bool, str]:
    """Sort key of a method: the baseline (``random_real``) first, then by name."""
    return (method != BASELINE, method)


def method_order(methods: Iterable[str]) -> list[str]:
    """The distinct ``methods``, baseline first, then by name."""
    return sorted(set(methods), key=method_key)


def pm(fmt: str) -> str:
    """The ± between a mean and its std: ``$\\pm$`` in LaTeX (tables are rendered raw)."""
    return r" $\pm$ " if fmt == "latex" else " ± "


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "<": r"\textless{}", ">": r"\textgreater{}"}  # < > would print as ¡ ¿ in OT1


def latex_text(value: str, fmt: str = "latex") -> str:
    """``value`` as table text: LaTeX-escaped when ``fmt`` is ``latex`` (the default), else as is.

    Tables are rendered raw (``latex_raw``) so that ``$\\pm$`` survives; every name, header,
    title and legend must therefore be escaped here, or ``random_real`` would not compile.
    """
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in value) if fmt == "latex" else value


def pooled(values: Iterable[float]) -> tuple[float, float] | None:
    """Mean and population std of pooled per-model accuracies (std 0 for one value); ``None`` if empty."""
    values = list(values)
    if not values:
        return None
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def bold(text: str, fmt: str) -> str:
    """``text`` in bold: ``**x**`` (github), ``\\textbf{x}`` (latex); as is in csv."""
    if fmt == "github":
        return f"**{text}**"
    if fmt == "latex":
        return rf"\textbf{{{text}}}"
    return text


def tabulate_rows(headers: list[str], rows: list[list[str]], fmt: str) -> str:
    """A github table or a booktabs LaTeX tabular (``\\usepackage{booktabs}``) of already formatted
    text cells: no number parsing, and LaTeX cells as given (escape them with :func:`latex_text`)."""
    if fmt == "latex":
        line = lambda cells: " & ".join(cells) + r" \\"  # noqa: E731
        return "\n".join([rf"\begin{{tabular}}{{{'l' * len(headers)}}}", r"\toprule", line(headers), r"\midrule",
                          *(line(row) for row in rows), r"\bottomrule", r"\end{tabular}"])
    return tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True)


def unique_runs(records: Iterable[RunRecord]) -> list[RunRecord]:
    """One record per run: the same record found twice (a local and a published copy of one
    folder) counts once, not as twice the models. Two *different* results under one run id (a
    rerun after a deleted record, on another machine) are refused, naming the run."""
    seen: dict[str, RunRecord] = {}
    for r in records:
        old = seen.setdefault(r.run_id, r)
        if old is not r and _result(old) != _result(r):
            raise DDBenchError(f"run {r.run_id} ({r.method} on {r.dataset} IPC {r.ipc}, seed {r.seed}) is recorded "
                               f"twice with different results (finished {old.finished_at} and {r.finished_at}); "
                               "render them from separate folders", field="run_id")
    return list(seen.values())


def _result(r: RunRecord) -> tuple:
    return r.finished_at, r.status, tuple(r.eval.accuracy_per_model)


def group(records: Iterable[RunRecord], key: Callable[[RunRecord], tuple] = lambda r: (r.method, r.dataset, r.ipc),
          ) -> dict[tuple, list[RunRecord]]:
    """Records by ``key`` (default (method, dataset, ipc): the seeds of one setting), each run once.

    Records of one group made with different configs (their ``config_id``: the run id without
    the seed) would be pooled as if they were seeds: refused, naming the group. The built-in
    views group by comparable setting instead (:func:`harness.report.compare.comparable_groups`),
    which splits such records into named groups and rows rather than refusing them.
    """
    cells: dict[tuple, list[RunRecord]] = defaultdict(list)
    for r in unique_runs(records):
        cells[key(r)].append(r)
    for cell, rs in cells.items():
        configs = sorted({str(r.config_id) for r in rs})
        if len(configs) > 1:
            first = rs[0]
            raise DDBenchError(f"{first.method} on {first.dataset} IPC {first.ipc}: records of {len(configs)} "
                               f"different configs ({', '.join(configs)}) would be pooled as seeds; render them "
                               "from separate folders", field="config_id")
    return cells


def failed_text(cell_records: list[RunRecord]) -> str | None:
    """``"diverged"`` / ``"failed"`` (with how many seeds) when a run of the cell did not finish:
    such a cell shows no number at all."""
    bad = [r for r in cell_records if r.status != "ok"]
    if not bad:
        return None
    status = "/".join(sorted({r.status for r in bad}))
    return status if len(bad) == len(cell_records) else f"{status} ({len(bad)} of {len(cell_records)} seeds)"


def count_text(cell_records: list[RunRecord]) -> str:
    """How many networks stand behind a pooled number: ``5x2`` (models x seeds), or
    ``7 models, 2 seeds`` when the seeds evaluated different numbers of models."""
    per_seed = {len(r.eval.accuracy_per_model) for r in cell_records}
    if len(per_seed) == 1:
        return f"{per_seed.pop()}x{len(cell_records)}"
    return f"{sum(len(r.eval.accuracy_per_model) for r in cell_records)} models, {len(cell_records)} seeds"


def mean_std_text(values: list[float], fmt: str) -> str:
    """Mean ± std (%) of pooled per-model accuracies; a single value has no ± (it is not 0)."""
    mean, std = pooled(values)
    return f"{100 * mean:.2f}" if len(values) == 1 else f"{100 * mean:.2f}{pm(fmt)}{100 * std:.2f}"


def accuracy_text(cell_records: list[RunRecord], fmt: str, steps: bool = True) -> str:
    """A cell: ``96.61 ± 0.73 (5x1, 120 steps)``, or what went wrong."""
    failed = failed_text(cell_records)
    if failed:
        return failed
    values = [a for r in cell_records for a in r.eval.accuracy_per_model]
    notes = [count_text(cell_records)]
    outer = statistics.median(r.distill.outer_steps for r in cell_records)
    if steps and outer:
        notes.append(f"{outer:g} steps")
    return f"{mean_std_text(values, fmt)} ({', '.join(notes)})"


def summarize(cell_records: list[RunRecord]) -> dict[str, Any]:
    """Pooled accuracy and median cost of one (method, dataset, ipc) cell; no accuracy (None)
    when a run of it did not finish (``status``)."""
    ok = failed_text(cell_records) is None
    accs = [a for r in cell_records for a in r.eval.accuracy_per_model] if ok else []
    mean, std = pooled(accs) or (None, None)
    distill = [r.distill for r in cell_records]
    return {
        "status": failed_text(cell_records) or "ok",
        "accuracy_mean": mean,
        "accuracy_std": std,
        "n_models": len(accs),
        "n_seeds": len(cell_records),
        "peak_memory_bytes": statistics.median(d.peak_memory_bytes for d in distill),
        "memory_kind": "/".join(sorted({d.memory_kind for d in distill})),
        "seconds_per_outer_step": statistics.median(d.seconds_per_outer_step for d in distill),
        "outer_steps": statistics.median(d.outer_steps for d in distill),
        "devices": sorted({r.hardware.device_name for r in cell_records}),
    }
