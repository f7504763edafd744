"""Table views: registered renderers of run records, and the helpers they share.

A view is a function ``(records, fmt) -> str`` registered by name with :func:`register_view`
(``ddbench table DIR --view NAME``); it reads typed :class:`RunRecord` s only, never files,
and returns ``""`` when no record has what it shows. Tables are rendered from records, never
typed by hand. Shared here: formats (github, latex, csv), method order (the baseline first),
± and LaTeX text, pooling of per-model accuracies, the refusal to pool different configs.
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
    render: Callable[[list[RunRecord], str], str]
    order: int  # position in ``--view all``
    help: str


VIEWS: Registry[View] = Registry("table view", builtins=("harness.report.views",))


def register_view(name: str, *, order: int = 100, help: str = ""):
    """Decorator: register ``fn(records, fmt) -> str`` as the view ``name``."""

    def decorate(fn: Callable[[list[RunRecord], str], str]):
        VIEWS.register(name, View(name, fn, order, help or _first_line(fn.__doc__)))
        return fn

    return decorate


def _first_line(doc: str | None) -> str:
    return next(iter((doc or "").strip().splitlines()), "")


def view_names() -> list[str]:
    return [v.name for v in sorted((v for _, v in VIEWS.items()), key=lambda v: (v.order, v.name))]


def render_view(records: list[RunRecord], view: str = "main", fmt: str = "github") -> str:
    """One registered view, or ``all``: every non-empty view stacked in order.

    A view with nothing to show returns ``""`` (in every format); asked for alone, that is a
    :class:`DDBenchError` naming ``--view``.
    """
    if view == "all":
        parts = [VIEWS.get(name).render(records, fmt) for name in view_names()]
        return "\n\n".join(part for part in parts if part.strip())
    if view not in VIEWS:
        raise ValueError(f"view must be one of {', '.join([*view_names(), 'all'])}")
    text = VIEWS.get(view).render(records, fmt)
    if not text.strip():
        raise DDBenchError(f"no record here has a {view!r} section (enable [{view}] in the suite)", field="--view")
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
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


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


def tabulate_rows(headers: list[str], rows: list[list[str]], fmt: str) -> str:
    """A github or (raw) LaTeX table of already formatted text cells (no number parsing)."""
    return tabulate(rows, headers=headers, tablefmt="latex_raw" if fmt == "latex" else fmt, disable_numparse=True)


def group(records: Iterable[RunRecord]) -> dict[tuple[str, str, int], list[RunRecord]]:
    """Records by (method, dataset, ipc): the seeds of one setting.

    Records of one cell made with different configs (their ``config_id``: the run id without
    the seed) would be pooled as if they were seeds: refused, naming the cell.
    """
    cells: dict[tuple[str, str, int], list[RunRecord]] = defaultdict(list)
    for r in records:
        cells[(r.method, r.dataset, r.ipc)].append(r)
    for (method, dataset, ipc), rs in cells.items():
        configs = sorted({str(r.config_id) for r in rs})
        if len(configs) > 1:
            raise DDBenchError(f"{method} on {dataset} IPC {ipc}: records of {len(configs)} different configs "
                               f"({', '.join(configs)}) would be pooled as seeds; render them from separate folders",
                               field="config_id")
    return cells


def summarize(cell_records: list[RunRecord]) -> dict[str, Any]:
    """Pooled accuracy and median cost of one (method, dataset, ipc) cell."""
    accs = [a for r in cell_records for a in r.eval.accuracy_per_model]
    mean, std = pooled(accs)
    distill = [r.distill for r in cell_records]
    return {
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
