"""One cell: distil, evaluate, analyse and record it, resuming from its checkpoint.

:func:`execute_cell` is what an executor calls for a cell: it takes the cell's lock (a second
driver on the same folder, or a Ray retry racing a slow worker, skips a cell that is running),
removes temp files an interrupted write left, runs :func:`run_cell`, and turns a crash into a
``failed`` record. :func:`run_cell` is one loop of outer steps around the cell's
:class:`~harness.run.recording.CellState` (steps, seconds, memory, history, the analyses'
running state), which writes the checkpoint and assembles the record; after every step the
analyses' ``during`` hooks may measure the set (the anytime curve), apart from the
distillation's time and memory. Only this module writes a cell's files (checkpoint, distilled
set, record), each atomically. Outer step t draws its randomness from ``(seed, t)``, so a cell
resumed from its checkpoint ends exactly where an uninterrupted run ends.

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
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from filelock import FileLock, Timeout

from harness.core.errors import CheckpointError, StorageError, one_line
from harness.core.io import atomic_write, remove_stale_temp_files
from harness.data import DatasetSplits
from harness.engine.memory import PeakMemory
from harness.evaluation import EvalResult, evaluate
from harness.evaluation.analysis import AnalysisContext, DistillContext
from harness.method import DistilledSet, DistillTask, method_class
from harness.report import RunRecord, read_record, record_stem, write_record
from harness.report.records import file_sha256
from harness.run.interrupt import StopRequested, raise_if_stop_requested, stop_on_signals
from harness.run.progress import INNER_AFTER_S, CellProgress, budget_warning, human_seconds, say
from harness.run.recording import CellState
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
            record = run_cell(cell, cell_task(cell, data(), device, dtype), out_dir, progress)
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


def _record_failure(cell: Cell, paths: dict[str, Path], device: torch.device, dtype: torch.dtype,
                    err: Exception) -> CellOutcome:
    text = "".join(traceback.format_exception(err))
    atomic_write(paths["error"], lambda f: f.write(text.encode()))
    record = CellState(cell, device, dtype, stopped_by="failed").record(
        "failed", error=one_line(err)[:500], error_file=paths["error"].name)
    write_record(paths["record"], record)
    return outcome_of(cell, record, paths["record"])


def run_cell(cell: Cell, task: DistillTask, out_dir: Path, progress: CellProgress) -> RunRecord:
    """Distil, evaluate and record one cell (resuming from its checkpoint if there is one);
    returns its record. ``task.data`` is on ``task.device`` in ``task.dtype``."""
    paths, desc = cell_paths(out_dir, cell), cell_desc(cell)
    method = cell_method(cell)
    try:
        state = CellState.resume(cell, task, method, paths["checkpoint"], _set_up(method, task, progress, desc))
        start, limit_s = state.step, cell.budget.minutes * 60 if cell.budget.minutes else None
        if start:
            say(f"resuming {desc} from outer step {start}")
        progress.begin(desc, state.total, start, limit_s)
        with PeakMemory(task.device) as meter, stop_on_signals(), _checkpointed_on_stop(state, meter, paths, start,
                                                                                         desc):
            apart, saved_at = partial(_apart, progress, meter), time.perf_counter()
            while method.distils and state.goes_on(limit_s):
                with meter.step():  # on a CPU, sampled steps run under ddbench's tensor meter
                    t0 = time.perf_counter()
                    metrics = method.step(state.step)
                    if task.device.type == "cuda":
                        torch.cuda.synchronize(task.device)
                    seconds = time.perf_counter() - t0
                raise_if_stop_requested()  # a signal whose raise landed in a finalizer and was swallowed
                if not state.stepped(metrics, seconds, method.divergence(metrics)):
                    break  # diverged
                progress.step(state.step - 1, state.elapsed, metrics)
                state.during(DistillContext(task, method, state.step, state.elapsed, apart=apart))
                state.commit(method)
                _watch(state, method, progress, desc, start, limit_s)
                if time.perf_counter() - saved_at > cell.checkpoint_minutes * 60:
                    state.measured(meter, start)
                    state.save(paths["checkpoint"])
                    saved_at = time.perf_counter()
        state.measured(meter, start)
        if state.diverged is not None:  # final: the same run diverges again; no accuracy is recorded
            return _record_divergence(state, task, method, paths, desc)
        if method.distils:  # the analyses' look at the end of the distillation (the meter has stopped)
            state.during(DistillContext(task, method, state.step, state.elapsed, final=True,
                                        apart=partial(_apart, progress, None)))
        if state.step > start:  # the distillation is done: an interruption from here resumes at the evaluation
            state.commit()  # the last step's method state; the analyses gained the end
            state.save(paths["checkpoint"])
        distilled, result, sections = _evaluate(cell, task, method, state, progress, desc)
    finally:
        progress.end()
    record = state.record("ok", data=task.data, method=method, result=result, sections=sections,
                          distilled=distilled, distilled_file=paths["distilled"].name)
    # The distilled set just before its record: a failure before this point leaves neither.
    distilled.save(paths["distilled"])
    record.distilled_sha256 = file_sha256(paths["distilled"])  # what publish and eval check the file against
    write_record(paths["record"], record)
    paths["checkpoint"].unlink(missing_ok=True)
    paths["error"].unlink(missing_ok=True)  # a failure of an earlier attempt, now superseded
    return record


def _set_up(method, task: DistillTask, progress: CellProgress, desc: str) -> float:
    """``method.setup(task)``, its seconds (a selection method's whole work: part of the cost); a
    method with a ``report`` attribute (a selection's full-data training) shows its progress."""
    if hasattr(method, "report"):
        method.report = progress.work
    progress.begin(desc, 0, 0, None)  # begun again once the steps are known (after the setup)
    progress.phase("setting up")
    t0 = time.perf_counter()
    method.setup(task)
    return time.perf_counter() - t0


def _watch(state: CellState, method, progress: CellProgress, desc: str, start: int, limit_s: float | None) -> None:
    """After a step: the budget warning (once two steps are timed); a long step's inner steps shown
    from the next step on."""
    if state.step == start + 2 and (warning := budget_warning(desc, str(state.device), state.step_times, state.step,
                                                              state.total, limit_s)):
        say(f"ddbench: warning: {warning}")
    if hasattr(method, "inner_progress") and state.step_times[-1] > INNER_AFTER_S:
        method.inner_progress = progress.inner


def _record_divergence(state: CellState, task: DistillTask, method, paths: dict[str, Path], desc: str) -> RunRecord:
    record = state.record("diverged", data=task.data, method=method)
    say(f"ddbench: {desc} diverged at outer step {state.diverged[0]}: {state.diverged[1]}")
    write_record(paths["record"], record)
    paths["checkpoint"].unlink(missing_ok=True)
    return record


def _evaluate(cell: Cell, task: DistillTask, method, state: CellState, progress: CellProgress,
              desc: str) -> tuple[DistilledSet, EvalResult, dict[str, Any]]:
    """The distilled set, its evaluation and the analyses' record sections."""
    with stop_on_signals(), _reported_as(f"{desc}: stopped in its evaluation; its distillation is "
                                         "checkpointed: run the same command to resume"):
        progress.phase("evaluating")
        distilled, data = method.distilled(), task.data
        distilled.meta.update({"run_id": cell.run_id, "method": cell.method, "dataset": cell.dataset.name,
                               "pixels": "normalization and ZCA undone; after ZCA each image min-max scaled"})
        if data.to_pixels is not None:
            distilled.pixels = data.to_pixels(distilled.images)
        result = evaluate(distilled, data, cell.eval, task.model, seed=task.seed, device=task.device, dtype=task.dtype)
        ctx = AnalysisContext(data=data, distilled=distilled, eval_result=result, protocol=cell.eval, model=task.model,
                              seed=task.seed, device=task.device, dtype=task.dtype, progress=False,
                              report=progress.work)
        return distilled, result, state.analyse(ctx, progress.phase)


@contextmanager
def _apart(progress: CellProgress, meter: PeakMemory | None, what: str) -> Iterator[None]:
    """``DistillContext.apart``: an analysis' measurement shown as the cell's phase, its memory
    left out of the distillation's peak (``meter``, while it runs)."""
    progress.phase(what)
    with nullcontext() if meter is None else meter.excluding():
        yield


@contextmanager
def _checkpointed_on_stop(state: CellState, meter: PeakMemory, paths: dict[str, Path], start: int,
                          desc: str) -> Iterator[None]:
    """A signal, or a Ray cancellation (KeyboardInterrupt), in the distillation: the last
    completed step checkpointed (unless it is where the run started), and said."""
    try:
        yield
    except (StopRequested, KeyboardInterrupt) as stop:
        state.measured(meter, start)
        if state.good["step"] > start:
            state.save(paths["checkpoint"])
        name = stop.name if isinstance(stop, StopRequested) else "interrupted"
        say(f"ddbench: {name}: {desc} checkpointed at outer step {state.good['step']}; run the same "
            "command to resume")
        if isinstance(stop, StopRequested):
            stop.reported = True
        raise


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
