"""A cell's state while it runs (:class:`CellState`), the one object its checkpoint is written
from and its run record is put together by, for each way a cell can end (finished, diverged,
failed), in the typed schema of ``harness.report``.

The state holds what the cell did so far: outer steps done, distillation seconds and each
step's time, peak memory, the per-step history, when it started, and each analysis' running
state (:meth:`harness.evaluation.Analysis.during`: the anytime curve, say). After every
completed step the runner takes a snapshot (:meth:`CellState.commit`): a checkpoint, written
at the checkpoint interval or when a signal stops the run, is always that snapshot, never half
a step. :meth:`CellState.record` is the only place a record is assembled.

A record travels (it is committed, published, sent to others): it names no absolute path of
the machine that wrote it. The data root is the one the suite gave (``dataset_config.root``,
and ``preprocessing.source_root`` the same, unresolved); a file path an analysis or a method
put in its section (a cache file) becomes its name relative to the cache dir (:func:`portable`);
the record's own files are names in its folder.
"""

from __future__ import annotations

import copy
import math
import os
import statistics
from dataclasses import dataclass, field, replace
from functools import cached_property
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch

from harness.core.errors import CheckpointError
from harness.core.io import atomic_torch_save, cache_name
from harness.core.provenance import BusyMeter, ddbench_version, git_state, hardware_info
from harness.data import DATASETS, DatasetSplits
from harness.engine.memory import PeakMemory, tensor_bytes
from harness.evaluation import EvalResult
from harness.evaluation.analysis import ANALYSES, Analysis, AnalysisContext, DistillContext
from harness.evaluation.protocols import best_on_test
from harness.method import DistilledSet, DistillTask, Method
from harness.report import SCHEMA_VERSION, RunRecord
from harness.run.suite import Cell

# 2: every analysis' running state under "analyses" (format 1, unmarked, kept the anytime
# curve under its own key; such a checkpoint is refused: its cell starts over).
CHECKPOINT_FORMAT = 2
CHECKPOINT_KEYS = ("format", "run_id", "step", "method_state", "elapsed_s", "peak_memory_bytes", "step_times",
                   "history", "history_stride", "started_at", "analyses")
# Added within format 2 (a checkpoint without them reads as before): the peak's kind (a resumed
# run never takes the maximum of two kinds) and the method's setup seconds.
CHECKPOINT_OPTIONAL = {"memory_kind": "none", "setup_s": None}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def environment(device: torch.device, dtype: torch.dtype, busy: BusyMeter) -> dict[str, Any]:
    """A record's ``hardware`` and ``provenance`` sections: where and with what it was made."""
    return {"hardware": {**hardware_info(device), "dtype": str(dtype).removeprefix("torch.")},
            "provenance": {"ddbench": ddbench_version(), "git": git_state(), "busy": busy.report()}}


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN and infinite floats replaced by None: a diverged loss in the history must
    not make the record unwritable (records refuse NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def portable(obj: Any) -> Any:
    """``obj`` with every string that is an absolute path replaced by :func:`~harness.core.io.cache_name`
    (relative to the cache dir, or the file's name alone): what a record keeps of a path an analysis
    or a method reported (a cache file), never a folder of the machine that wrote it."""
    if isinstance(obj, str):
        return cache_name(obj) if os.path.isabs(obj) and "\n" not in obj else obj
    if isinstance(obj, dict):
        return {k: portable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [portable(v) for v in obj]
    return obj


def source_root(cell: Cell, preprocessing: dict[str, Any]) -> dict[str, Any]:
    """The dataset's preprocessing notes with the data root as the suite gave it (or the dataset's
    default root), not as this machine resolved it."""
    if preprocessing.get("source_root") is None:
        return preprocessing
    given = cell.dataset.root if cell.dataset.root is not None else DATASETS.get(cell.dataset.name).default_root
    return {**preprocessing, "source_root": given}


def label_kind(distilled: DistilledSet) -> str:
    """How the set's labels were made: as its method says (``meta["label_kind"]``: a selection
    method's ``teacher``), else learned when they are soft, else hard."""
    kind = distilled.meta.get("label_kind")
    if kind is not None:
        return kind
    return "learned" if distilled.labels.is_floating_point() else "hard"


class History:
    """The record's per-step metrics, about a hundred entries whatever the run's length: every
    ``total // 100``-th step of a step budget; of a run bounded by minutes only, every step at
    first, then every 2nd, 4th, ... (entries thinned as the run goes on)."""

    def __init__(self, total: int, entries: list[dict] | None = None, stride: int | None = None):
        self.total = total
        self.entries = entries or []
        self.stride = stride or max(1, total // 100)

    def add(self, step: int, metrics: dict[str, float]) -> None:
        if step % self.stride == 0 or step == self.total - 1:
            self.entries.append(json_safe({"step": step, **metrics}))
        if self.total == 0 and len(self.entries) > 200:
            self.stride *= 2
            self.entries = [e for e in self.entries if e["step"] % self.stride == 0]


def load_checkpoint(path: Path, run_id: str) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain data: no pickled code
    except Exception as err:  # torch raises many types for a damaged file
        raise CheckpointError(f"corrupt checkpoint ({err.__class__.__name__}); delete it to start the cell over",
                              file=str(path)) from None
    if not isinstance(ckpt, dict) or "run_id" not in ckpt or "step" not in ckpt:
        raise CheckpointError("not a ddbench checkpoint; delete it to start the cell over", file=str(path))
    if ckpt["run_id"] != run_id:
        raise CheckpointError(f"checkpoint belongs to run {ckpt['run_id']}, not {run_id}", file=str(path),
                              field="run_id")
    if ckpt.get("format") != CHECKPOINT_FORMAT or not all(k in ckpt for k in CHECKPOINT_KEYS):
        raise CheckpointError(f"a checkpoint of format {ckpt.get('format', 1)}, written by an earlier ddbench (this "
                              f"one reads format {CHECKPOINT_FORMAT}); delete it to start the cell over",
                              file=str(path), field="format")
    return ckpt


@dataclass
class CellState:
    """What a cell did so far: its checkpoint and its record are written from this one object."""

    cell: Cell
    device: torch.device  # where it runs (the record's hardware)
    dtype: torch.dtype
    total: int = 0  # the method's outer steps (0: until the minutes budget is spent)
    step: int = 0  # outer steps done
    elapsed: float = 0.0  # seconds of distillation (the outer steps only)
    peak: int = 0  # peak memory of the distillation, bytes
    memory_kind: str = "none"  # how the peak was measured (harness.engine.memory; none: not yet)
    setup_s: float | None = None  # the method's setup, seconds (of the run that started the cell)
    step_times: list[float] = field(default_factory=list)
    history: History | None = None
    started_at: str = field(default_factory=now_iso)
    analyses: dict[str, dict[str, Any]] = field(default_factory=dict)  # each analysis' running state, by name
    stopped_by: str = "outer_steps"  # outer_steps | minutes | failed
    diverged: tuple[int, str] | None = None  # (outer step, what was not finite)
    busy: BusyMeter = field(default_factory=BusyMeter)
    good: dict[str, Any] = field(default_factory=dict)  # the last completed step's checkpoint (commit)
    run_id: str = field(init=False)  # the cell's (a digest of its config: computed once)

    def __post_init__(self):
        self.history = self.history or History(self.total)
        self.run_id = self.cell.run_id

    @cached_property
    def hooks(self) -> list[tuple[str, Analysis, Any]]:
        """``(name, analysis, its config)`` of every registered analysis, with the suite's config."""
        return [(name, ANALYSES.get(name)(), cfg) for name, cfg in self.cell.analyses.items()]

    @cached_property
    def measuring(self) -> list[tuple[str, Analysis, Any]]:
        """The hooks with a ``during`` of their own: called after every outer step."""
        return [hook for hook in self.hooks if type(hook[1]).during is not Analysis.during]

    # -- checkpoints

    def to_checkpoint(self, method_state: dict[str, Any]) -> dict[str, Any]:
        return {"format": CHECKPOINT_FORMAT, "run_id": self.run_id, "step": self.step,
                "method_state": method_state, "elapsed_s": self.elapsed, "peak_memory_bytes": self.peak,
                "step_times": list(self.step_times), "history": list(self.history.entries),
                "history_stride": self.history.stride, "started_at": self.started_at,
                "analyses": copy.deepcopy(self.analyses), "memory_kind": self.memory_kind, "setup_s": self.setup_s}

    @classmethod
    def from_checkpoint(cls, cell: Cell, task: DistillTask, total: int, ckpt: dict[str, Any]) -> "CellState":
        ckpt = {**CHECKPOINT_OPTIONAL, **ckpt}
        return cls(cell, task.device, task.dtype, total, step=ckpt["step"], elapsed=ckpt["elapsed_s"],
                   peak=ckpt["peak_memory_bytes"], memory_kind=ckpt["memory_kind"], setup_s=ckpt["setup_s"],
                   step_times=ckpt["step_times"], history=History(total, ckpt["history"], ckpt["history_stride"]),
                   started_at=ckpt["started_at"], analyses=ckpt["analyses"])

    @classmethod
    def resume(cls, cell: Cell, task: DistillTask, method: Method, path: Path, setup_s: float) -> "CellState":
        """The state of ``path``'s checkpoint (its method state loaded into ``method``), or a new one
        whose method's setup took ``setup_s`` seconds; committed (the state an interruption before
        the first step keeps)."""
        total = method.outer_steps(task)
        if path.exists():
            ckpt = load_checkpoint(path, cell.run_id)
            method.load_state_dict(ckpt["method_state"])
            state = cls.from_checkpoint(cell, task, total, ckpt)
        else:
            state = cls(cell, task.device, task.dtype, total)
        if state.setup_s is None:
            state.setup_s = setup_s
        state.commit(method)
        return state

    def commit(self, method: Method | None = None) -> None:
        """The state after a completed step: what a checkpoint holds until the next commit. Without
        ``method``, the last commit's method state is kept (only the analyses moved on since)."""
        self.good = self.to_checkpoint(self.good["method_state"] if method is None else method.state_dict())

    def save(self, path: Path) -> None:
        """The last commit as the cell's checkpoint (with the peak memory measured so far)."""
        atomic_torch_save({**self.good, "peak_memory_bytes": self.peak, "memory_kind": self.memory_kind}, path)

    def measured(self, meter: PeakMemory, start: int) -> None:
        """The distillation's peak memory so far: ``meter``'s (this run's, which began at outer step
        ``start``) with the checkpoint's of the same kind. A run that took no outer step measured
        none of the distillation: a resumed one keeps its checkpoint's peak; kinds are never mixed
        (a run resumed on another device keeps its own)."""
        if self.step == start and self.memory_kind != "none":
            return
        if self.memory_kind != meter.kind and self.memory_kind != "none":
            self.peak = 0
        self.peak, self.memory_kind = max(self.peak, meter.current_peak()), meter.kind

    # -- the distillation

    def goes_on(self, limit_s: float | None) -> bool:
        """Whether another outer step is due (the step budget, then the minutes budget)."""
        if self.total and self.step >= self.total:
            return False
        if limit_s is not None and self.elapsed >= limit_s:
            self.stopped_by = "minutes"
            return False
        return True

    def stepped(self, metrics: dict[str, float], seconds: float, divergence: str | None) -> bool:
        """Outer step ``self.step`` took ``seconds``; False when it diverged (it is then not done)."""
        self.elapsed += seconds
        self.step_times.append(seconds)
        self.history.add(self.step, metrics)
        if divergence is not None:
            self.diverged = (self.step, divergence)
            return False
        self.step += 1
        return True

    def during(self, ctx: DistillContext) -> None:
        """Every analysis' ``during`` hook; the running state of each that measured is kept."""
        for name, analysis, cfg in self.measuring:
            new = analysis.during(cfg, self.analyses.get(name, {}), ctx)
            if new is not None:
                self.analyses[name] = new

    def analyse(self, ctx: AnalysisContext, phase: Callable[[str], None]) -> dict[str, Any]:
        """Every analysis' record section (None: none), each given its running state."""
        sections = {}
        for name, analysis, cfg in self.hooks:
            phase(f"analysing: {name}")
            section = analysis.run(cfg, replace(ctx, during=self.analyses.get(name, {})))
            if section is not None:
                sections[analysis.section] = json_safe(section)
        return sections

    # -- the record

    def record(self, status: str, *, data: DatasetSplits | None = None, method: Method | None = None,
               result: EvalResult | None = None, sections: dict[str, Any] | None = None,
               distilled: DistilledSet | None = None, distilled_file: str | None = None, **extra: Any) -> RunRecord:
        """The cell's run record, ended with ``status``; without ``result`` (diverged, failed) its
        accuracies are absent, never a number. ``distilled``: the set evaluated (its label kind)."""
        cell, steps = self.cell, self.step
        distill = {"outer_steps": steps, "stopped_by": self.stopped_by, "wall_clock_s": self.elapsed,
                   "seconds_per_outer_step": self.elapsed / steps if steps else 0.0,
                   "median_seconds_per_outer_step": statistics.median(self.step_times) if self.step_times else 0.0,
                   "peak_memory_bytes": int(self.peak), "memory_kind": self.memory_kind, "setup_seconds": self.setup_s,
                   "resident_data_bytes": None if data is None else tensor_bytes(data.train_x, data.train_y,
                                                                                   data.test_x, data.test_y),
                   "history": self.history.entries,
                   "method_summary": portable(json_safe({} if method is None else method.summary()))}
        if self.diverged is not None:
            distill.update(diverged_at=self.diverged[0], divergence=self.diverged[1])
        evaluation = {"protocol": cell.eval.model_dump(mode="json"), "accuracy_mean": None, "accuracy_std": None,
                      "accuracy_per_model": []}
        if result is not None:
            evaluation.update(accuracy_mean=result.accuracy_mean, accuracy_std=result.accuracy_std,
                              accuracy_per_model=result.accuracy_per_model, details=portable(json_safe(result.details)))
            if (best := self.test_selected(result)) is not None:
                evaluation["test_selected"] = best  # "as published: test-selected upper bound", beside accuracy_mean
        wraps = None if method is None or method.wraps is None else getattr(cell.method_config, method.wraps[0])
        return RunRecord.model_validate({
            "schema_version": SCHEMA_VERSION, "run_id": self.run_id, "config_id": cell.config_id,
            "suite": cell.suite, "dataset": cell.dataset.name, "dataset_config": cell.dataset.model_dump(mode="json"),
            "preprocessing": {} if data is None else source_root(cell, portable(data.preprocessing)),
            "class_names": [] if data is None else list(data.class_names), "ipc": cell.ipc,
            "method": cell.method_label, "method_name": cell.method,
            "method_config": cell.method_config.model_dump(mode="json"), "wraps": wraps, "seed": cell.seed,
            "model": cell.model.model_dump(mode="json"), "budget": cell.budget.model_dump(mode="json"),
            "suite_overrides": list(cell.overrides), "eval": evaluation, "distill": distill,
            **portable(sections or {}), "label_kind": None if distilled is None else label_kind(distilled),
            "distilled_file": distilled_file, **environment(self.device, self.dtype, self.busy),
            "started_at": self.started_at, "finished_at": now_iso(), "status": status, **extra})

    def test_selected(self, result: EvalResult) -> dict[str, Any] | None:
        """The record's ``eval.test_selected``: the best budget on the test set of the final
        evaluation (``result``, at this outer step) and of each evaluation the analyses made under
        the same protocol during the distillation (the earlier one on a tie). "as published:
        test-selected upper bound"; None for a protocol without budgets."""
        if result.test_selected is None:
            return None
        during = [c for name, analysis, cfg in self.hooks
                  for c in analysis.evaluations_during(cfg, self.analyses.get(name, {}), self.cell.eval)]
        # A point at this step is the final evaluation itself (the same networks): not counted twice.
        checkpoints = [(step, budgets) for step, budgets in during if step < self.step]
        return json_safe(best_on_test([*checkpoints, (self.step, result.details["budgets"])]))
