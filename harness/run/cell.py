"""One cell: distil, evaluate, analyse and record it, resuming from its checkpoint.

:func:`execute_cell` is what an executor calls for a cell: it takes the cell's lock (a second
driver on the same folder, or a Ray retry racing a slow worker, skips a cell that is running),
removes temp files an interrupted write left, runs :func:`run_cell`, and turns a crash into a
``failed`` record. :func:`run_cell` is the only function that writes a cell's files
(checkpoint, distilled set, record), each atomically. Outer step t draws its randomness from
``(seed, t)``, so a cell resumed from its checkpoint ends exactly where an uninterrupted run ends.

How a cell can end: ``ok`` (evaluated and analysed); ``diverged`` (a non-finite outer loss,
meta-gradient or synthetic set at some step: recorded with the step, no accuracy, no rerun);
``failed`` (an exception: recorded with the reason, rerun by the next ``ddbench run``, resuming
from its checkpoint); interrupted (SIGTERM, SIGINT: the last completed step checkpointed,
no record); a full disk (one line, nothing partial, resumable).
"""

from __future__ import annotations

import logging
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from filelock import FileLock, Timeout

from harness.core.errors import CheckpointError, StorageError, one_line
from harness.core.io import atomic_torch_save, atomic_write, remove_stale_temp_files
from harness.core.provenance import BusyMeter
from harness.data import DatasetSplits
from harness.engine.memory import PeakMemory
from harness.evaluation import ANALYSES, AnalysisContext, evaluate
from harness.method import DistillTask, method_class
from harness.report import read_record, record_stem, write_record
from harness.run.anytime import AnytimeCurve, best_on_test_over_checkpoints
from harness.run.interrupt import StopRequested, stop_on_signals
from harness.run.progress import INNER_AFTER_S, CellProgress, budget_warning, human_seconds, say
from harness.run.recording import build_record, distill_section, json_safe, now_iso
from harness.run.suite import Cell

log = logging.getLogger("ddbench")


def cell_desc(cell: Cell) -> str:
    return f"{cell.dataset.name} ipc{cell.ipc} {cell.method_label} s{cell.seed}"


def cell_paths(out_dir: Path, cell: Cell) -> dict[str, Path]:
    stem = out_dir / record_stem(cell.suite, cell.dataset.name, cell.ipc, cell.method_label, cell.seed, cell.run_id)
    return {"record": stem.with_suffix(".json"), "distilled": stem.with_suffix(".distilled.pt"),
            "checkpoint": stem.with_suffix(".ckpt.pt"), "lock": stem.with_suffix(".lock"),
            "error": stem.with_suffix(".error.txt")}


def cell_method(cell: Cell):
    """The cell's method, built from its already validated config."""
    return method_class(cell.method)(cell.method_config)


def cell_task(cell: Cell, data: DatasetSplits, device: torch.device, dtype: torch.dtype) -> DistillTask:
    return DistillTask(data=data, ipc=cell.ipc, seed=cell.seed, model=cell.model,
                       outer_steps=cell.budget.outer_steps, device=device, dtype=dtype)


# ------------------------------------------------------------------------------------ outcomes


@dataclass
class CellOutcome:
    """How a cell ended, for the driver's per-cell line and summary (JSON-able: it crosses Ray)."""

    desc: str
    status: str  # ok | diverged | failed | skipped | locked
    record: str | None = None
    accuracy_mean: float | None = None
    accuracy_std: float | None = None
    outer_steps: int = 0
    seconds: float = 0.0
    message: str = ""

    def line(self) -> str:
        if self.status == "ok":
            return (f"{self.desc}: {100 * self.accuracy_mean:.2f}% ± {100 * self.accuracy_std:.2f}, "
                    f"{self.outer_steps} outer steps in {human_seconds(self.seconds)}")
        if self.status == "skipped":
            return f"{self.desc}: skipped (its record exists)"
        if self.status == "locked":
            return f"{self.desc}: skipped (running in another process on this folder)"
        return f"{self.desc}: {self.status}: {self.message}"


def outcome_of(cell: Cell, record, path: Path) -> CellOutcome:
    status = record.status
    message = {"diverged": f"at outer step {record.distill.diverged_at} ({record.distill.divergence})",
               "failed": record.error or ""}.get(status, "")
    return CellOutcome(cell_desc(cell), status, str(path), record.eval.accuracy_mean, record.eval.accuracy_std,
                       record.distill.outer_steps, record.distill.wall_clock_s, message)


# ------------------------------------------------------------------------------------ checkpoints

CHECKPOINT_KEYS = ("run_id", "step", "method_state", "elapsed_s", "peak_memory_bytes", "step_times", "history",
                   "started_at")


def load_checkpoint(path: Path, run_id: str) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain data: no pickled code
    except Exception as err:  # torch raises many types for a damaged file
        raise CheckpointError(f"corrupt checkpoint ({err.__class__.__name__}); delete it to start the cell over",
                              file=str(path)) from None
    if not isinstance(ckpt, dict) or not all(k in ckpt for k in CHECKPOINT_KEYS):
        raise CheckpointError("not a ddbench checkpoint; delete it to start the cell over", file=str(path))
    if ckpt["run_id"] != run_id:
        raise CheckpointError(f"checkpoint belongs to run {ckpt['run_id']}, not {run_id}", file=str(path),
                              field="run_id")
    return ckpt


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


# ------------------------------------------------------------------------------------ running


def execute_cell(cell: Cell, data: Callable[[], DatasetSplits], device: torch.device, dtype: torch.dtype,
                 out_dir: Path, progress: CellProgress) -> CellOutcome:
    """Run ``cell`` unless it is recorded or running elsewhere; ``data()`` gives its dataset on
    ``device``. Interruptions and storage errors propagate; any other exception becomes a
    ``failed`` record (the traceback beside it), and the suite goes on."""
    paths, desc = cell_paths(out_dir, cell), cell_desc(cell)
    paths["lock"].parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(paths["lock"]))
    try:
        lock.acquire(timeout=0)  # released by the OS if this process dies
    except Timeout:
        return CellOutcome(desc, "locked")
    try:
        if paths["record"].exists():
            record = read_record(paths["record"])
            if record.status != "failed":  # a failed cell is run again; a finished or diverged one is final
                return CellOutcome(desc, "skipped", str(paths["record"]))
        removed = remove_stale_temp_files(paths["record"], paths["distilled"], paths["checkpoint"])
        if removed:
            say(f"{desc}: removed {len(removed)} temp file(s) an interrupted write left: "
                f"{', '.join(p.name for p in removed)}")
        try:
            record = run_cell(cell, data(), device, dtype, out_dir, progress)
        except (StorageError, CheckpointError):
            raise
        except Exception as err:  # noqa: BLE001 - recorded as the cell's failure; the suite goes on
            return _record_failure(cell, paths, device, dtype, err)
        return outcome_of(cell, record, paths["record"])
    finally:
        if paths["record"].exists():
            # A recorded cell needs no lock any more: whoever takes a lock checks for the record
            # first, so removing the file (while still holding it) is safe.
            paths["lock"].unlink(missing_ok=True)
        lock.release()


def _record_failure(cell: Cell, paths: dict[str, Path], device, dtype, err: Exception) -> CellOutcome:
    reason = one_line(err)[:500]
    text = "".join(traceback.format_exception(err))
    atomic_write(paths["error"], lambda f: f.write(text.encode()))
    record = build_record(cell, status="failed", eval_section=None, preprocessing={}, device=device, dtype=dtype,
                          started_at=now_iso(), busy=BusyMeter(), wraps=None, error=reason,
                          error_file=paths["error"].name,
                          distill=distill_section(steps_done=0, stopped_by="failed", elapsed=0.0, step_times=[],
                                                  peak=0, memory_kind="none", data=None, history=[], summary={}))
    write_record(paths["record"], record)
    return outcome_of(cell, record, paths["record"])


def run_cell(cell: Cell, data: DatasetSplits, device: torch.device, dtype: torch.dtype, out_dir: Path,
             progress: CellProgress):
    """Distil, evaluate and record one cell (resuming from its checkpoint if there is one);
    returns its :class:`RunRecord`. ``data`` is on ``device`` in ``dtype``."""
    busy = BusyMeter()
    paths, desc = cell_paths(out_dir, cell), cell_desc(cell)
    task = cell_task(cell, data, device, dtype)
    method = cell_method(cell)
    method.setup(task)
    total = method.outer_steps(task)  # 0 for a method that distils: until the minutes budget

    start, elapsed, peak, step_times, started_at = 0, 0.0, 0, [], now_iso()
    history, curve = History(total), AnytimeCurve(cell.anytime)
    if paths["checkpoint"].exists():
        ckpt = load_checkpoint(paths["checkpoint"], cell.run_id)
        method.load_state_dict(ckpt["method_state"])
        start, elapsed, peak = ckpt["step"], ckpt["elapsed_s"], ckpt["peak_memory_bytes"]
        step_times, started_at = ckpt["step_times"], ckpt["started_at"]
        history = History(total, ckpt["history"], ckpt.get("history_stride"))
        curve = AnytimeCurve(cell.anytime, **ckpt.get("anytime", {}))
        say(f"resuming {desc} from outer step {start}")

    def save_checkpoint(step: int, method_state: dict, seconds: float, times: list, entries: list,
                        curve_state: dict) -> None:
        atomic_torch_save({"run_id": cell.run_id, "step": step, "method_state": method_state, "elapsed_s": seconds,
                           "peak_memory_bytes": peak, "step_times": times, "history": entries,
                           "history_stride": history.stride, "started_at": started_at, "anytime": curve_state},
                          paths["checkpoint"])

    def snapshot() -> tuple:
        return step, method.state_dict(), elapsed, list(step_times), list(history.entries), curve.state()

    limit_s = cell.budget.minutes * 60 if cell.budget.minutes else None
    stopped_by, diverged, step = "outer_steps", None, start
    # The last completed step's state: what an interruption in the middle of a step checkpoints.
    last_good = snapshot()
    last_ckpt = time.perf_counter()
    wants_inner = hasattr(method, "inner_progress")
    progress.begin(desc, total, start, limit_s)
    try:
        with PeakMemory(device) as meter, stop_on_signals():
            try:
                while method.distils and (total == 0 or step < total):
                    if limit_s is not None and elapsed >= limit_s:
                        stopped_by = "minutes"
                        break
                    t0 = time.perf_counter()
                    metrics = method.step(step)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    dt = time.perf_counter() - t0
                    elapsed += dt
                    step_times.append(dt)
                    history.add(step, metrics)
                    reason = method.divergence(metrics)
                    if reason is not None:
                        diverged = (step, reason)
                        break
                    progress.step(step, elapsed, metrics)
                    step += 1
                    if curve.due(step, elapsed):
                        progress.phase(f"anytime evaluation at step {step}")
                        with meter.excluding():
                            curve.measure(method, data, cell, step, elapsed, device, dtype)
                    last_good = snapshot()
                    if step == start + 2 and (warning := budget_warning(desc, str(device), step_times, step, total,
                                                                          limit_s)):
                        say(f"ddbench: warning: {warning}")
                    if wants_inner and dt > INNER_AFTER_S:
                        method.inner_progress = progress.inner
                    if time.perf_counter() - last_ckpt > cell.checkpoint_minutes * 60:
                        peak = max(peak, meter.current_peak())
                        save_checkpoint(*last_good)
                        last_ckpt = time.perf_counter()
            except (StopRequested, KeyboardInterrupt) as stop:  # KeyboardInterrupt: a Ray cancellation
                peak = max(peak, meter.current_peak())
                if last_good[0] > start:
                    save_checkpoint(*last_good)
                name = stop.name if isinstance(stop, StopRequested) else "interrupted"
                say(f"ddbench: {name}: {desc} checkpointed at outer step {last_good[0]}; run the same "
                    "command to resume")
                if isinstance(stop, StopRequested):
                    stop.reported = True
                raise
        peak = max(peak, meter.peak_bytes)
        steps_done = step
        wraps = None if method.wraps is None else getattr(cell.method_config, method.wraps[0])
        common = dict(device=device, dtype=dtype, started_at=started_at, busy=busy, wraps=wraps,
                      preprocessing=data.preprocessing, class_names=data.class_names)

        def section(**extra: Any) -> dict[str, Any]:
            return distill_section(steps_done=steps_done, stopped_by=stopped_by, elapsed=elapsed,
                                   step_times=step_times, peak=peak, memory_kind=meter.kind, data=data,
                                   history=history.entries, summary=method.summary(), **extra)

        if diverged is not None:  # final: the same run diverges again; no accuracy is recorded
            record = build_record(cell, status="diverged", eval_section=None, **common,
                                  distill=section(diverged_at=diverged[0], divergence=diverged[1]))
            say(f"ddbench: {desc} diverged at outer step {diverged[0]}: {diverged[1]}")
            write_record(paths["record"], record)
            paths["checkpoint"].unlink(missing_ok=True)
            return record
        if curve.cfg is not None and method.distils:  # the curve's last point: the end of the distillation
            curve.measure(method, data, cell, steps_done, elapsed, device, dtype)
        if steps_done > start:  # the distillation is done: an interruption from here resumes at the evaluation
            save_checkpoint(*last_good[:5], curve.state())  # last_good is this state; the curve gained its end

        with stop_on_signals(), _reported_as(f"{desc}: stopped in its evaluation; its distillation is "
                                             "checkpointed: run the same command to resume"):
            progress.phase("evaluating")
            distilled = method.distilled()
            distilled.meta.update({"run_id": cell.run_id, "method": cell.method, "dataset": cell.dataset.name,
                                   "pixels": "normalization and ZCA undone; after ZCA each image min-max scaled"})
            if data.to_pixels is not None:
                distilled.pixels = data.to_pixels(distilled.images)
            result = evaluate(distilled, data, cell.eval, cell.model, seed=cell.seed, device=device, dtype=dtype)
            ctx = AnalysisContext(data=data, distilled=distilled, eval_result=result, protocol=cell.eval,
                                  model=cell.model, seed=cell.seed, device=device, dtype=dtype, progress=False,
                                  report=progress.work)
            sections = {}
            for name, cfg in cell.analyses.items():
                progress.phase(f"analysing: {name}")
                analysis = ANALYSES.get(name)()
                sections[analysis.section] = json_safe(analysis.run(cfg, ctx))
    finally:
        progress.end()
    evaluation = {"protocol": cell.eval.model_dump(mode="json"), "accuracy_mean": result.accuracy_mean,
                  "accuracy_std": result.accuracy_std, "accuracy_per_model": result.accuracy_per_model,
                  "details": json_safe(result.details)}
    if (best := best_on_test_over_checkpoints(result, cell.eval, steps_done, curve)) is not None:
        evaluation["test_selected"] = best  # "as published: test-selected upper bound", beside accuracy_mean
    if curve.cfg is not None:
        sections["anytime"] = curve.section()
    record = build_record(cell, status="ok", eval_section=evaluation, distill=section(), sections=sections,
                          distilled_file=paths["distilled"].name, **common)
    # The distilled set just before its record: a failure before this point leaves neither.
    distilled.save(paths["distilled"])
    write_record(paths["record"], record)
    paths["checkpoint"].unlink(missing_ok=True)
    paths["error"].unlink(missing_ok=True)  # a failure of an earlier attempt, now superseded
    return record


@contextmanager
def _reported_as(text: str) -> Iterator[None]:
    """Say ``text`` (with the signal's name) when a signal stops the block."""
    try:
        yield
    except StopRequested as stop:
        say(f"ddbench: {stop.name}: {text}")
        stop.reported = True
        raise


def to_device(data: DatasetSplits, device: torch.device, dtype: torch.dtype) -> DatasetSplits:
    """``data`` on ``device`` in ``dtype`` (the same object when it already is)."""
    if data.train_x.device == device and data.train_x.dtype == dtype:
        return data
    return data.to(device, dtype)
