"""Subset curves: how well do the parts of a distilled set train a network on their own?

RaT-BPTT (Feng, Vedantam, Kempe, ICLR 2024, Sec. 6) finds distilled images strongly
intercorrelated: the first k images per class of a set distilled at IPC n are much worse than
a set distilled directly at IPC k, and Boost-DD (``methods/boost_dd.py``) closes most of the
gap. :func:`subset_curve` measures this for any distilled set, evaluating

* ``block_prefix``: every proper prefix of blocks, when the set has ``blocks`` (Boost-DD);
* ``prefix``: the first k positions of every class, for each size k;
* ``random``: ``draws`` random sets of k positions (the same positions in every class).

Every subset is a ``DistilledSet.select`` of the set, trained and tested by
``harness.evaluation.evaluate`` with the run's seed, so all subsets and the full set share the
networks' initialisations (paired comparisons). :func:`subset_extension` adds the curve to a
run record and :func:`subset_table` sets it beside the records of sets distilled directly at
each size.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, field_validator
from tqdm.auto import tqdm

from harness.data import DatasetSplits
from harness.evaluation import EvalProtocol, evaluate
from harness.method import DistilledSet
from harness.models import ModelConfig
from harness.tables import BASELINE, check_format, latex_text, pm, pooled, tabulate_rows

# Tags the random draws' SeedSequence [seed, 23, cfg.seed, size, draw]: 23 is none of the runs' streams
# (harness.method: 0-5, STREAM_STEP .. STREAM_SKETCH) nor hardness's (17), and the entropy has five
# words where step_seed's [seed, step, stream] has three.
_STREAM = 23


class SubsetEvalConfig(BaseModel):
    """Which subsets of a distilled set to evaluate (a suite-level ``[subsets]`` table)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    sizes: list[int] | None = None  # subset IPCs; None: every size 1..ipc-1 (sizes >= ipc are skipped)
    prefixes: bool = True  # evaluate the first k positions of every class
    draws: int = 2  # random position subsets per size
    protocol: EvalProtocol | None = None  # None: the run's own evaluation protocol
    models: int | None = None  # networks per subset, replacing the protocol's (fewer, to save time)
    seed: int = 0  # of the random draws

    @field_validator("sizes")
    @classmethod
    def _sizes_positive(cls, sizes: list[int] | None) -> list[int] | None:
        if sizes is not None:
            if any(k < 1 for k in sizes):
                raise ValueError(f"sizes must be >= 1, got {sizes}")
            sizes = sorted(set(sizes))
        return sizes

    @field_validator("draws", "seed")
    @classmethod
    def _non_negative(cls, value: int) -> int:
        if value < 0:
            raise ValueError(f"must be >= 0, got {value}")
        return value

    @field_validator("models")
    @classmethod
    def _models_positive(cls, models: int | None) -> int | None:
        if models is not None and models < 1:
            raise ValueError(f"models must be >= 1, got {models}")
        return models


def subset_protocol(cfg: SubsetEvalConfig, protocol: EvalProtocol) -> EvalProtocol:
    """The protocol the subsets are evaluated with: ``cfg.protocol`` or the run's, with ``cfg.models``."""
    protocol = cfg.protocol or protocol
    return protocol.model_copy(update={"models": cfg.models}) if cfg.models else protocol


def block_prefixes(distilled: DistilledSet) -> list[tuple[int, list[int]]]:
    """``(j, positions)`` for the first j blocks, j = 1..K-1 (none without ``blocks``)."""
    if distilled.blocks is None:
        return []
    per_class = distilled.blocks.cpu().view(distilled.num_classes, distilled.ipc)
    if not (per_class == per_class[0]).all():
        raise ValueError("the blocks of a distilled set must be the same positions in every class")
    ids = per_class[0].unique(sorted=True)
    return [(j, (per_class[0] <= ids[j - 1]).nonzero().flatten().tolist()) for j in range(1, len(ids))]


def _draw_positions(ipc: int, size: int, seed: int, cfg_seed: int, draw: int) -> list[int]:
    # One generator per (size, draw): a draw does not change when other sizes are added.
    state = np.random.SeedSequence([seed, _STREAM, cfg_seed, size, draw]).generate_state(1, dtype=np.uint64)[0]
    gen = torch.Generator().manual_seed(int(state >> np.uint64(1)))
    return torch.randperm(ipc, generator=gen)[:size].sort().values.tolist()


def subset_plan(distilled: DistilledSet, cfg: SubsetEvalConfig, seed: int) -> list[dict[str, Any]]:
    """The subsets :func:`subset_curve` evaluates: kind, size (IPC), positions, and blocks or draw."""
    ipc = distilled.ipc
    sizes = [k for k in (cfg.sizes or range(1, ipc)) if k < ipc]
    plan = [{"kind": "block_prefix", "size": len(pos), "positions": pos, "blocks": j}
            for j, pos in block_prefixes(distilled)]
    for k in sizes:
        if cfg.prefixes:
            plan.append({"kind": "prefix", "size": k, "positions": list(range(k))})
        plan += [{"kind": "random", "size": k, "positions": _draw_positions(ipc, k, seed, cfg.seed, d), "draw": d}
                 for d in range(cfg.draws)]
    return plan


def subset_curve(distilled: DistilledSet, data: DatasetSplits, protocol: EvalProtocol, model_cfg: ModelConfig,
                 cfg: SubsetEvalConfig, seed: int, device: torch.device, dtype: torch.dtype = torch.float32,
                 progress: bool = False) -> list[dict[str, Any]]:
    """Evaluate every subset of :func:`subset_plan`; each entry gains accuracy mean, std and per model.

    ``protocol`` is the run's protocol (``cfg.protocol`` / ``cfg.models`` override it). A subset
    named twice (a block prefix is also a first-k prefix) is evaluated once.
    """
    protocol = subset_protocol(cfg, protocol)
    done: dict[tuple[int, ...], Any] = {}
    curve = []
    plan = subset_plan(distilled, cfg, seed)
    for entry in tqdm(plan, desc="subsets", leave=False, disable=not progress):
        key = tuple(entry["positions"])
        if key not in done:
            done[key] = evaluate(distilled.select(entry["positions"]), data, protocol, model_cfg, seed=seed,
                                 device=device, dtype=dtype, progress=False)
        result = done[key]
        curve.append({**entry, "accuracy_mean": result.accuracy_mean, "accuracy_std": result.accuracy_std,
                      "accuracy_per_model": list(result.accuracy_per_model)})
    return curve


def subset_extension(ctx) -> dict[str, Any]:
    """``RECORD_EXTENSIONS`` entry (``ctx``: a ``harness.runner.CellContext``): the record's subset curve.

    The config is ``ctx.cell.subsets`` (a :class:`SubsetEvalConfig`, ``harness.suite.Cell``) when
    the cell has one, else the defaults (disabled). The curve's last entry, kind ``full``, is the
    whole set as the record's own evaluation measured it (the run's protocol).
    """
    cfg = ctx.cell.subsets or SubsetEvalConfig()
    if not cfg.enabled:
        return {"config": cfg.model_dump(mode="json"), "skipped": "disabled in the suite"}
    d = ctx.distilled
    curve = subset_curve(d, ctx.data, ctx.cell.eval, ctx.cell.model, cfg, ctx.cell.seed, ctx.device, ctx.dtype,
                         ctx.progress)
    res = ctx.eval_result
    curve.append({"kind": "full", "size": d.ipc, "positions": list(range(d.ipc)), "accuracy_mean": res.accuracy_mean,
                  "accuracy_std": res.accuracy_std, "accuracy_per_model": list(res.accuracy_per_model)})
    return {"config": cfg.model_dump(mode="json"),
            "protocol": subset_protocol(cfg, ctx.cell.eval).model_dump(mode="json"),
            "ipc": d.ipc, "blocks": None if d.blocks is None else int(d.blocks.unique().numel()), "curve": curve}


# ---------------------------------------------------------------------------------------- table


def _cell(values: list[float], fmt: str) -> str:
    stats = pooled(values)
    if stats is None:
        return "-"
    return f"{100 * stats[0]:.2f}{pm(fmt)}{100 * stats[1]:.2f}"


def _subset_series(curve_records: list[dict]) -> dict[str, dict[int, list[float]]]:
    """series -> size -> per-model accuracies pooled over seeds (and draws); the full set is a prefix."""
    series: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in curve_records:
        section = r["subset_curve"]
        for e in section["curve"]:
            kinds = [e["kind"]]
            if e["kind"] == "full":
                kinds = ["prefix", "block_prefix"] if section.get("blocks") else ["prefix"]
            for kind in kinds:
                series[kind][e["size"]].extend(e["accuracy_per_model"])
    return series


def _has_subsets(record: dict) -> bool:
    """Whether the record's curve has a subset besides the full set (an IPC-1 curve is only ``full``)."""
    curve = (record.get("subset_curve") or {}).get("curve") or []
    return any(e["kind"] != "full" for e in curve)


def subset_table(records: list[dict], fmt: str = "github") -> str:
    """Subset accuracy (%) by size, beside directly distilled records of the same size.

    One table per (dataset, method, IPC) with a subset curve; rows are subset IPCs; columns
    the set's block prefixes (when it has blocks), first-k prefixes and random subsets, then
    the records distilled directly at that IPC: the same method, its ``base`` method (Boost-DD),
    and random_real. Per-model accuracies are pooled over seeds (and draws), as in
    ``harness.tables``. ``csv`` gives one tidy row per (table, size, series). Curves holding only
    the full set (IPC 1) are skipped; ``""`` when no record has a curve left (in every format).
    """
    check_format(fmt)
    direct: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    curves: dict[tuple[str, str, int], list[dict]] = defaultdict(list)
    for r in records:
        direct[(r["method"], r["dataset"], r["ipc"])].extend(r["eval"]["accuracy_per_model"])
        if _has_subsets(r):
            curves[(r["dataset"], r["method"], r["ipc"])].append(r)

    tidy: list[dict[str, Any]] = []
    parts = []
    for (dataset, method, ipc), group in sorted(curves.items()):
        series = _subset_series(group)
        columns = [kind for kind in ("block_prefix", "prefix", "random") if series.get(kind)]
        base = group[0]["method_config"].get("base")
        compare = [m for m in dict.fromkeys([method, base if isinstance(base, str) else None, BASELINE]) if m]
        sizes = sorted({k for kind in columns for k in series[kind]})
        headers = [latex_text(h, fmt) for h in
                   ["IPC", *(kind.replace("_", " ") for kind in columns), *(f"direct {m}" for m in compare)]]
        rows = []
        for k in sizes:
            values = [series[kind].get(k, []) for kind in columns] + [direct.get((m, dataset, k), []) for m in compare]
            rows.append([str(k)] + [_cell(v, fmt) for v in values])
            for name, v in zip(columns + [f"direct:{m}" for m in compare], values):
                if v:
                    mean, std = pooled(v)
                    tidy.append({"dataset": dataset, "method": method, "ipc": ipc, "size": k, "series": name,
                                 "accuracy_mean": mean, "accuracy_std": std, "n": len(v)})
        if not rows:
            continue
        title = (latex_text(f"{dataset}, {method} IPC {ipc}: test accuracy (%) of subsets, mean", fmt) + pm(fmt)
                 + "std over models x seeds")
        table = tabulate_rows(headers, rows, fmt)
        parts.append(f"% {title}\n{table}" if fmt == "latex" else f"{title}:\n{table}")
    if not parts:
        return ""
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=["dataset", "method", "ipc", "size", "series", "accuracy_mean",
                                                 "accuracy_std", "n"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(tidy)
        return out.getvalue()
    return "\n\n".join(parts)
