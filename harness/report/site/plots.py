"""The site's figures (matplotlib, Agg): PNG for the page and SVG beside it, byte-identical for
the same records (fixed SVG hash salt, no dates in the files' metadata).

Every method has **one colour in every figure** (:func:`method_color`: a fixed palette for the
registry's names, a hash of the name for any other, so adding a method changes no colour), the
same in both panels of a figure; a method's several configs share it and differ by marker.
Points are never labelled in place (labels collide): each figure has one legend, outside its
axes.
"""

from __future__ import annotations

import colorsys
import hashlib
import statistics
from collections import defaultdict
from pathlib import Path

from harness.report.schema import AnytimePoint, RunRecord
from harness.report.site.rows import Row
from harness.report.tables import method_key

_PNG_META = {"Software": None}
_SVG_META = {"Date": None, "Creator": None}

# Fixed colours of the registry's methods (matplotlib's tab10 and three more); coreset baselines
# in muted tones.
PALETTE = {
    "random_real": "#7f7f7f", "herding": "#8c564b", "kcenter": "#bcbd22", "forgetting": "#e377c2",
    "bptt": "#1f77b4", "tbptt": "#ff7f0e", "rat_bptt": "#2ca02c", "at_bptt": "#d62728", "boost_dd": "#9467bd",
    "dm": "#17becf", "mtt": "#393b79", "frepo": "#e7ba52", "implicit": "#7b4173",
}
MARKERS = "osD^vPX*"
LINESTYLES = ("-", "--", ":", "-.")


def method_color(method: str) -> str:
    """The colour of a method label in every figure: the palette's for a registry name, else one
    from a hash of the label (stable across runs and machines; never Python's salted ``hash``)."""
    if method in PALETTE:
        return PALETTE[method]
    digest = int(hashlib.sha256(method.encode()).hexdigest()[:8], 16)
    hue = (digest % 360) / 360
    lightness = 0.35 + 0.15 * ((digest >> 12) % 3) / 2
    r, g, b = colorsys.hls_to_rgb(hue, lightness, 0.65)
    return f"#{round(255 * r):02x}{round(255 * g):02x}{round(255 * b):02x}"


def text(value: str) -> str:
    """Record text for a figure: a ``$`` would start matplotlib's math mode."""
    return value.replace("$", r"\$")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.hashsalt": "ddbench", "figure.dpi": 100, "font.size": 9, "axes.grid": True,
                         "grid.alpha": 0.3})
    return plt


def save(fig, folder: Path, name: str) -> str:
    """``name.png`` and ``name.svg`` in ``folder``; returns the PNG's file name."""
    folder.mkdir(parents=True, exist_ok=True)
    fig.savefig(folder / f"{name}.png", metadata=_PNG_META, bbox_inches="tight")
    fig.savefig(folder / f"{name}.svg", metadata=_SVG_META, bbox_inches="tight")
    _plt().close(fig)
    return f"{name}.png"


def _legend(fig, axes, fontsize: float = 7) -> None:
    """One legend for the whole figure, just right of its axes (never over the data), entries
    deduplicated; the figure laid out first so that titles do not overlap."""
    seen: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    fig.tight_layout()
    if seen:
        right = max(ax.get_position().x1 for ax in axes)
        top = max(ax.get_position().y1 for ax in axes)
        fig.legend(list(seen.values()), list(seen), loc="upper left", bbox_to_anchor=(right + 0.01, top),
                   fontsize=fontsize, frameon=False, borderaxespad=0.0)


def _styles(rows: list[Row]) -> dict[str, tuple[str, str]]:
    """Row name -> (colour, marker): its method's colour; a method's several rows differ by marker."""
    out, used = {}, defaultdict(int)
    for row in sorted(rows, key=lambda r: (method_key(r.method), r.name)):
        if row.name not in out:
            out[row.name] = (method_color(row.method), MARKERS[used[row.method] % len(MARKERS)])
            used[row.method] += 1
    return out


def accuracy_vs_ipc(rows: list[Row], dataset: str, folder: Path) -> str | None:
    """Accuracy against IPC: a line per row name and setting (groups of another setting apart)."""
    lines: dict[tuple[str, str], list[Row]] = defaultdict(list)
    for r in rows:
        if r.dataset == dataset and r.accuracy_mean is not None:
            lines[(r.name, r.setting)].append(r)
    if not lines:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    settings = sorted({s for _, s in lines})
    for (name, setting) in sorted(lines, key=lambda k: (method_key(lines[k][0].method), k)):
        rs = sorted(lines[(name, setting)], key=lambda r: r.ipc)
        label = name + (f" ({setting})" if setting else "")
        ax.errorbar([r.ipc for r in rs], [100 * r.accuracy_mean for r in rs], yerr=[100 * r.accuracy_std for r in rs],
                    marker=MARKERS[settings.index(setting) % len(MARKERS)], capsize=3, color=method_color(rs[0].method),
                    linestyle=LINESTYLES[settings.index(setting) % len(LINESTYLES)], label=text(label))
    ax.set_xscale("log")
    ax.set_xlabel("images per class (IPC)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(text(f"{dataset}: accuracy vs IPC"))
    _legend(fig, [ax])
    return save(fig, folder, f"accuracy-vs-ipc-{dataset}")


def _baseline_line(axes, rows: list[Row]) -> None:
    """The best baseline's accuracy as a dashed line in every panel (what a distilled row must beat)."""
    best = next((r for r in rows if r.baseline and r.name == r.best_baseline and r.accuracy_mean is not None), None)
    if best is None:
        return
    for ax in axes:
        ax.axhline(100 * best.accuracy_mean, color=method_color(best.method), linestyle="--", linewidth=1,
                   label=text(f"best coreset: {best.name}"))


def _front(ax, points: list[tuple[float, float]]) -> None:
    front, best = [], float("-inf")
    for x, y in sorted(points):  # cheapest first: a point is on the front if it beats every cheaper one
        if y > best:
            front.append((x, y))
            best = y
    if len(front) > 1:
        ax.step([x for x, _ in front], [y for _, y in front], where="post", color="gray", alpha=0.5, zorder=1,
                label="Pareto front")


def pareto(rows: list[Row], title: str, folder: Path, name: str) -> str | None:
    """A step-bounded group: accuracy against seconds per outer step and against peak memory (the
    front marked); one colour per method in both panels; the best baseline dashed."""
    rs = [r for r in rows if r.accuracy_mean is not None and r.seconds_per_step is not None]
    if not rs:
        return None
    plt = _plt()
    styles = _styles(rows)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4), sharey=True)
    kinds = "/".join(sorted({r.memory_kind for r in rs}))
    for ax, (attr, label) in zip(axes, (("seconds_per_step", "seconds per outer step"),
                                        ("peak_memory_mib", f"peak memory (MiB, {kinds})"))):
        for r in rs:
            color, marker = styles[r.name]
            ax.scatter([getattr(r, attr)], [100 * r.accuracy_mean], color=color, marker=marker, s=36, zorder=3,
                       label=text(r.name))
        _front(ax, [(getattr(r, attr), 100 * r.accuracy_mean) for r in rs])
        ax.set_xlabel(text(label))
    _baseline_line(axes, rows)
    axes[0].set_ylabel("test accuracy (%)")
    fig.suptitle(text(f"{title}: cost Pareto front"))
    _legend(fig, axes)
    return save(fig, folder, name)


def _due(points: list[AnytimePoint], seconds: float) -> AnytimePoint | None:
    """The evaluation due at ``seconds`` (the first point at or after it; ``inf``: the last point), as
    :mod:`harness.report.views.budget` picks it."""
    if seconds == float("inf"):
        return points[-1] if points else None
    return next((p for p in points if p.seconds >= seconds * (1 - 1e-9)), None)


def _at_equal_time(runs: list[RunRecord], budget_minutes: float) -> list[tuple[float, list[float]]]:
    """``(minutes, per-model accuracies pooled over seeds)`` at each time the anytime curve was due
    (every ``every_minutes``), and at the budget's end; each seed's own points when the runs
    were due at different times."""
    every = {r.anytime.config.get("every_minutes") for r in runs}
    curves = [r.anytime.curve for r in runs]
    if len(every) == 1 and None not in every:
        step = 60 * every.pop()
        limit = 60 * budget_minutes
        times = [step * k for k in range(1, int(limit / step + 1e-9) + 1) if step * k < limit * (1 - 1e-9)]
        out = []
        for t in [*times, float("inf")]:
            points = [_due(c, t) for c in curves]
            if all(p is not None for p in points):
                out.append((budget_minutes if t == float("inf") else t / 60,
                            [a for p in points for a in p.accuracy_per_model]))
        return out
    return [(p.seconds / 60, list(p.accuracy_per_model)) for c in curves for p in c]


def budget_curves(rows: list[Row], title: str, folder: Path, name: str, minutes: float) -> str | None:
    """A minutes-bounded group (every method had the same wall-clock): anytime accuracy at equal
    wall-clock up to the budget, and final accuracy against peak memory; one colour per method."""
    curved = [r for r in rows if r.status == "ok" and r.runs and all(x.anytime is not None and x.anytime.curve
                                                                      for x in r.runs)]
    costed = [r for r in rows if r.accuracy_mean is not None and r.peak_memory_mib is not None]
    if not curved and not costed:
        return None
    plt = _plt()
    styles = _styles(rows)
    fig, (left, right) = plt.subplots(1, 2, figsize=(8.5, 3.4))
    protocols = sorted({x.anytime.protocol.get("protocol", "standard") for r in curved for x in r.runs})
    for r in curved:
        color, marker = styles[r.name]
        points = _at_equal_time(r.runs, minutes)
        left.errorbar([t for t, _ in points], [100 * statistics.fmean(a) for _, a in points],
                      yerr=[100 * statistics.pstdev(a) if len(a) > 1 else 0 for _, a in points], color=color,
                      marker=marker, markersize=4, capsize=2, label=text(r.name))
    left.axvline(minutes, color="gray", linestyle=":", linewidth=1)
    left.set_xlim(0, minutes * 1.05)
    left.set_xlabel(f"distillation wall-clock (min; budget {minutes:g})")
    left.set_ylabel(text(f"anytime test accuracy (%, {', '.join(protocols) or '-'} protocol)"))
    left.set_title("at equal wall-clock", fontsize=9)
    for r in costed:
        color, marker = styles[r.name]
        right.scatter([r.peak_memory_mib], [100 * r.accuracy_mean], color=color, marker=marker, s=36, zorder=3,
                      label=text(r.name))
    _front(right, [(r.peak_memory_mib, 100 * r.accuracy_mean) for r in costed])
    _baseline_line([right], rows)
    kinds = "/".join(sorted({r.memory_kind for r in costed})) or "-"
    right.set_xlabel(text(f"peak memory (MiB, {kinds})"))
    right.set_ylabel("test accuracy (%, the record's protocol)")
    right.set_title("at the end of the budget", fontsize=9)
    fig.suptitle(text(f"{title}: accuracy at equal wall-clock ({minutes:g} min each)"))
    _legend(fig, [left, right])
    return save(fig, folder, name)


def anytime(rows: list[Row], title: str, folder: Path, name: str) -> str | None:
    """Accuracy at budget (the anytime curves), per seed; a method's seeds share its colour."""
    runs = [(r, x) for r in rows for x in r.runs if x.anytime is not None and x.anytime.curve]
    if not runs:
        return None
    plt = _plt()
    styles = _styles(rows)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for i, (r, x) in enumerate(sorted(runs, key=lambda rx: (method_key(rx[0].method), rx[0].name, rx[1].seed))):
        color, marker = styles[r.name]
        seeds = sorted(y.seed for y in r.runs)
        ax.errorbar([p.seconds for p in x.anytime.curve], [100 * p.accuracy_mean for p in x.anytime.curve],
                    yerr=[100 * p.accuracy_std for p in x.anytime.curve], marker=marker, markersize=3, capsize=2,
                    color=color, linestyle=LINESTYLES[seeds.index(x.seed) % len(LINESTYLES)],
                    label=text(f"{r.name} s{x.seed}"))
    ax.set_xlabel("distillation wall-clock (s)")
    ax.set_ylabel("test accuracy (%)")
    protocol = runs[0][1].anytime.protocol.get("protocol", "standard")
    ax.set_title(text(f"{title}: accuracy at budget ({protocol} protocol)"))
    _legend(fig, [ax])
    return save(fig, folder, name)


def subset_curves(records: list[RunRecord], dataset: str, folder: Path) -> str | None:
    curves = [r for r in records if r.dataset == dataset and r.subset_curve is not None
              and any(e.kind != "full" for e in r.subset_curve.curve)]
    if not curves:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for r in sorted(curves, key=lambda r: (method_key(r.method), r.ipc, r.seed)):
        for kind, (style, marker) in (("prefix", ("-", "o")), ("random", (":", "x")), ("block_prefix", ("--", "s"))):
            points = sorted((e.size, 100 * e.accuracy_mean) for e in r.subset_curve.curve
                            if e.kind == kind or (e.kind == "full" and kind == "prefix"))
            if len(points) > 1 or (points and kind != "prefix"):
                ax.plot([p[0] for p in points], [p[1] for p in points], linestyle=style, marker=marker,
                        color=method_color(r.method), label=text(f"{r.method} IPC {r.ipc}: {kind.replace('_', ' ')}"))
    ax.set_xlabel("subset IPC")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(text(f"{dataset}: subsets of distilled sets"))
    _legend(fig, [ax], fontsize=6)
    return save(fig, folder, f"subsets-{dataset}")


def hardness(records: list[RunRecord], dataset: str, folder: Path) -> str | None:
    """Accuracy per hardness bucket: a panel per IPC, a bar per method in its colour, the legend outside."""
    rs = [r for r in records if r.dataset == dataset and r.hardness is not None and r.hardness.buckets]
    if not rs:
        return None
    plt = _plt()
    labels = [b.label for b in rs[0].hardness.buckets]
    ipcs = sorted({r.ipc for r in rs})
    fig, axes = plt.subplots(1, len(ipcs), figsize=(0.4 + 4.2 * len(ipcs), 3.4), sharey=True, squeeze=False)
    for ax, ipc in zip(axes[0], ipcs):
        methods = sorted({r.method for r in rs if r.ipc == ipc}, key=method_key)
        width = 0.8 / len(methods)
        for i, method in enumerate(methods):
            values = []
            for k in range(len(labels)):
                accs = [a for r in rs if (r.method, r.ipc) == (method, ipc) and k < len(r.hardness.buckets)
                        for a in r.hardness.buckets[k].accuracy_per_model]
                values.append(100 * statistics.fmean(accs) if accs else float("nan"))
            ax.bar([k + i * width for k in range(len(labels))], values, width, color=method_color(method),
                   label=text(method))
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(labels))], [text(lab) for lab in labels])
        ax.set_title(f"IPC {ipc}", fontsize=9)
    axes[0][0].set_ylabel("test accuracy (%)")
    fig.suptitle(text(f"{dataset}: accuracy per hardness bucket (easiest to hardest)"))
    _legend(fig, list(axes[0]))
    return save(fig, folder, f"hardness-{dataset}")


def history(record: RunRecord, folder: Path, name: str) -> str | None:
    """The distillation's history: outer loss, meta-gradient norm, window (and unroll)."""
    entries = record.distill.history
    if not entries:
        return None
    plt = _plt()
    panels = [("outer_loss", "outer loss"), ("grad_norm", "meta-gradient norm"), ("window", "window / unroll")]
    fig, axes = plt.subplots(1, 3, figsize=(10, 2.8))
    color = method_color(record.method)
    for ax, (key, title) in zip(axes, panels):
        steps = [e["step"] for e in entries if e.get(key) is not None]
        ax.plot(steps, [e[key] for e in entries if e.get(key) is not None], label=key, color=color)
        if key == "window":
            ax.plot([e["step"] for e in entries if e.get("unroll") is not None],
                    [e["unroll"] for e in entries if e.get("unroll") is not None], alpha=0.6, label="unroll",
                    color="gray")
            ax.legend(fontsize=7)
        ax.set_title(title)
        ax.set_xlabel("outer step")
    return save(fig, folder, name)
