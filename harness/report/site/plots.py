"""The site's figures (matplotlib, Agg): PNG for the page and SVG beside it, byte-identical for
the same records (fixed SVG hash salt, no dates in the files' metadata)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from harness.report.schema import RunRecord
from harness.report.site.rows import Row
from harness.report.tables import method_key

_PNG_META = {"Software": None}
_SVG_META = {"Date": None, "Creator": None}


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


def accuracy_vs_ipc(rows: list[Row], dataset: str, folder: Path) -> str | None:
    by_method: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        if r.dataset == dataset and r.accuracy_mean is not None:
            by_method[r.method].append(r)
    if not by_method:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for method in sorted(by_method, key=method_key):
        rs = sorted(by_method[method], key=lambda r: r.ipc)
        ax.errorbar([r.ipc for r in rs], [100 * r.accuracy_mean for r in rs], yerr=[100 * r.accuracy_std for r in rs],
                    marker="o", capsize=3, label=method)
    ax.set_xscale("log")
    ax.set_xlabel("images per class (IPC)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{dataset}: accuracy vs IPC")
    ax.legend(fontsize=7)
    return save(fig, folder, f"accuracy-vs-ipc-{dataset}")


def pareto(rows: list[Row], dataset: str, ipc: int, folder: Path) -> str | None:
    """Accuracy against seconds per outer step and against peak memory, the front marked."""
    rs = [r for r in rows if (r.dataset, r.ipc) == (dataset, ipc) and r.accuracy_mean is not None
          and r.seconds_per_step is not None]
    if not rs:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4), sharey=True)
    for ax, (attr, label) in zip(axes, (("seconds_per_step", "seconds per outer step"),
                                        ("peak_memory_mib", f"peak memory (MiB, {rs[0].memory_kind})"))):
        points = sorted(((getattr(r, attr), 100 * r.accuracy_mean, r.method) for r in rs))
        for x, y, name in points:
            ax.scatter([x], [y])
            ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        front, best = [], float("-inf")
        for x, y, _ in points:  # cheapest first: a point is on the front if it beats every cheaper one
            if y > best:
                front.append((x, y))
                best = y
        ax.step([x for x, _ in front], [y for _, y in front], where="post", color="gray", alpha=0.6)
        ax.set_xlabel(label)
    axes[0].set_ylabel("test accuracy (%)")
    fig.suptitle(f"{dataset} IPC {ipc}: cost Pareto front")
    return save(fig, folder, f"pareto-{dataset}-ipc{ipc}")


def anytime(records: list[RunRecord], dataset: str, ipc: int, folder: Path) -> str | None:
    curves = [r for r in records if (r.dataset, r.ipc) == (dataset, ipc) and r.anytime is not None
              and r.anytime.curve]
    if not curves:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for r in sorted(curves, key=lambda r: (method_key(r.method), r.seed)):
        ax.errorbar([p.seconds for p in r.anytime.curve], [100 * p.accuracy_mean for p in r.anytime.curve],
                    yerr=[100 * p.accuracy_std for p in r.anytime.curve], marker=".", capsize=2,
                    label=f"{r.method} s{r.seed}")
    ax.set_xlabel("distillation wall-clock (s)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{dataset} IPC {ipc}: accuracy at budget "
                 f"({curves[0].anytime.protocol.get('protocol', 'standard')} protocol)")
    ax.legend(fontsize=7)
    return save(fig, folder, f"anytime-{dataset}-ipc{ipc}")


def subset_curves(records: list[RunRecord], dataset: str, folder: Path) -> str | None:
    curves = [r for r in records if r.dataset == dataset and r.subset_curve is not None
              and any(e.kind != "full" for e in r.subset_curve.curve)]
    if not curves:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for r in sorted(curves, key=lambda r: (method_key(r.method), r.ipc, r.seed)):
        for kind, style in (("prefix", "-o"), ("random", ":x"), ("block_prefix", "--s")):
            points = sorted((e.size, 100 * e.accuracy_mean) for e in r.subset_curve.curve
                            if e.kind == kind or (e.kind == "full" and kind == "prefix"))
            if len(points) > 1 or (points and kind != "prefix"):
                ax.plot([p[0] for p in points], [p[1] for p in points], style,
                        label=f"{r.method} IPC {r.ipc}: {kind.replace('_', ' ')}")
    ax.set_xlabel("subset IPC")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{dataset}: subsets of distilled sets")
    ax.legend(fontsize=6)
    return save(fig, folder, f"subsets-{dataset}")


def hardness(records: list[RunRecord], dataset: str, folder: Path) -> str | None:
    rs = [r for r in records if r.dataset == dataset and r.hardness is not None and r.hardness.buckets]
    if not rs:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    labels = [b.label for b in rs[0].hardness.buckets]
    cells = sorted({(r.method, r.ipc) for r in rs}, key=lambda c: (c[1], method_key(c[0])))
    width = 0.8 / len(cells)
    for i, (method, ipc) in enumerate(cells):
        values = []
        for k in range(len(labels)):
            accs = [a for r in rs if (r.method, r.ipc) == (method, ipc) for a in r.hardness.buckets[k].accuracy_per_model]
            values.append(100 * sum(accs) / len(accs))
        ax.bar([k + i * width for k in range(len(labels))], values, width, label=f"{method} IPC {ipc}")
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(labels))], labels)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{dataset}: accuracy per hardness bucket (easiest to hardest)")
    ax.legend(fontsize=6, ncol=2)
    return save(fig, folder, f"hardness-{dataset}")


def history(record: RunRecord, folder: Path, name: str) -> str | None:
    """The distillation's history: outer loss, meta-gradient norm, window (and unroll)."""
    entries = record.distill.history
    if not entries:
        return None
    plt = _plt()
    panels = [("outer_loss", "outer loss"), ("grad_norm", "meta-gradient norm"), ("window", "window / unroll")]
    fig, axes = plt.subplots(1, 3, figsize=(10, 2.8))
    for ax, (key, title) in zip(axes, panels):
        steps = [e["step"] for e in entries if e.get(key) is not None]
        ax.plot(steps, [e[key] for e in entries if e.get(key) is not None], label=key)
        if key == "window":
            ax.plot([e["step"] for e in entries if e.get("unroll") is not None],
                    [e["unroll"] for e in entries if e.get("unroll") is not None], alpha=0.6, label="unroll")
            ax.legend(fontsize=7)
        ax.set_title(title)
        ax.set_xlabel("outer step")
    return save(fig, folder, name)
