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
networks' initialisations (paired comparisons). The :class:`Subsets` analysis adds the curve to
a run record (its ``subset_curve`` section) and the ``subsets`` table view
(``harness.report.views.subsets``) sets it beside the records of sets distilled directly at
each size.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, field_validator
from tqdm.auto import tqdm

from harness.core.rng import subset_seed
from harness.data import DatasetSplits
from harness.evaluation.analysis import Analysis, AnalysisContext, register_analysis
from harness.evaluation.protocols import AnyProtocol, ProtocolConfig, evaluate
from harness.method import DistilledSet
from harness.models import ModelConfig


class SubsetEvalConfig(BaseModel):
    """Which subsets of a distilled set to evaluate (a suite-level ``[subsets]`` table)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    sizes: list[int] | None = None  # subset IPCs; None: every size 1..ipc-1 (sizes >= ipc are skipped)
    prefixes: bool = True  # evaluate the first k positions of every class
    draws: int = 2  # random position subsets per size
    protocol: AnyProtocol | None = None  # None: the run's own evaluation protocol
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


def subset_protocol(cfg: SubsetEvalConfig, protocol: ProtocolConfig) -> ProtocolConfig:
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
    gen = torch.Generator().manual_seed(subset_seed(seed, cfg_seed, size, draw))
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


def subset_curve(distilled: DistilledSet, data: DatasetSplits, protocol: ProtocolConfig, model_cfg: ModelConfig,
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
                                 device=device, dtype=dtype)
        result = done[key]
        curve.append({**entry, "accuracy_mean": result.accuracy_mean, "accuracy_std": result.accuracy_std,
                      "accuracy_per_model": list(result.accuracy_per_model)})
    return curve


@register_analysis("subsets")
class Subsets(Analysis):
    """Subset curves: prefixes, random subsets and block prefixes of every distilled set."""

    Config = SubsetEvalConfig
    section = "subset_curve"

    def networks(self, cfg: SubsetEvalConfig, model: ModelConfig) -> list[tuple[str, ModelConfig]]:
        if cfg.enabled and cfg.protocol is not None and cfg.protocol.model is not None:
            return [("subsets.protocol.model", cfg.protocol.model)]
        return []

    def protocols(self, cfg: SubsetEvalConfig) -> list[tuple[str, ProtocolConfig]]:
        return [("subsets.protocol", cfg.protocol)] if cfg.enabled and cfg.protocol is not None else []

    def run(self, cfg: SubsetEvalConfig, ctx: AnalysisContext) -> dict[str, Any]:
        """The record section. The curve's last entry, kind ``full``, is the whole set as the
        record's own evaluation measured it (the run's protocol)."""
        if not cfg.enabled:
            return {"config": cfg.model_dump(mode="json"), "skipped": "disabled in the suite"}
        d = ctx.distilled
        curve = subset_curve(d, ctx.data, ctx.protocol, ctx.model, cfg, ctx.seed, ctx.device, ctx.dtype,
                             ctx.progress)
        res = ctx.eval_result
        curve.append({"kind": "full", "size": d.ipc, "positions": list(range(d.ipc)),
                      "accuracy_mean": res.accuracy_mean, "accuracy_std": res.accuracy_std,
                      "accuracy_per_model": list(res.accuracy_per_model)})
        return {"config": cfg.model_dump(mode="json"),
                "protocol": subset_protocol(cfg, ctx.protocol).model_dump(mode="json"),
                "ipc": d.ipc, "blocks": None if d.blocks is None else int(d.blocks.unique().numel()), "curve": curve}
