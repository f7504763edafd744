"""One cell: distil, evaluate, analyse and record it, resuming from its checkpoint.

:func:`run_cell` is the only function that writes a cell's files (checkpoint, distilled set,
record), each atomically (``harness.core.io``); an executor may run cells in any order or at
once, since a cell touches only its own files.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from harness.core.errors import CheckpointError
from harness.core.io import atomic_torch_save
from harness.core.provenance import BusyMeter, ddbench_version, git_state, hardware_info
from harness.data import DatasetSplits
from harness.engine.memory import PeakMemory, tensor_bytes
from harness.evaluation import ANALYSES, AnalysisContext, evaluate
from harness.method import DistillTask, method_class
from harness.report import SCHEMA_VERSION, RunRecord, record_stem, write_record
from harness.run.suite import Cell

log = logging.getLogger("ddbench")


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


def cell_paths(out_dir: Path, cell: Cell) -> dict[str, Path]:
    stem = out_dir / record_stem(cell.suite, cell.dataset.name, cell.ipc, cell.method_label, cell.seed, cell.run_id)
    return {"record": stem.with_suffix(".json"), "distilled": stem.with_suffix(".distilled.pt"),
            "checkpoint": stem.with_suffix(".ckpt.pt")}


def cell_method(cell: Cell):
    """The cell's method, built from its already validated config."""
    return method_class(cell.method)(cell.method_config)


def cell_task(cell: Cell, data: DatasetSplits, device: torch.device, dtype: torch.dtype) -> DistillTask:
    return DistillTask(data=data, ipc=cell.ipc, seed=cell.seed, model=cell.model,
                       outer_steps=cell.budget.outer_steps, device=device, dtype=dtype)


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


def run_cell(cell: Cell, data: DatasetSplits, device: torch.device, dtype: torch.dtype, out_dir: Path,
             progress: bool = True) -> RunRecord:
    """Distil, evaluate and record one cell (resuming from its checkpoint if there is one).

    ``data`` is on ``device`` in ``dtype``.
    """
    busy = BusyMeter()
    paths = cell_paths(out_dir, cell)
    task = cell_task(cell, data, device, dtype)
    method = cell_method(cell)
    method.setup(task)
    total_steps = method.outer_steps(task)

    start, elapsed, peak, step_times, history, started_at = 0, 0.0, 0, [], [], _now()
    if paths["checkpoint"].exists():
        ckpt = load_checkpoint(paths["checkpoint"], cell.run_id)
        method.load_state_dict(ckpt["method_state"])
        start, elapsed, peak = ckpt["step"], ckpt["elapsed_s"], ckpt["peak_memory_bytes"]
        step_times, history, started_at = ckpt["step_times"], ckpt["history"], ckpt["started_at"]
        log.info("resume %s at step %d", paths["checkpoint"], start)

    def save_checkpoint(step: int) -> None:
        atomic_torch_save({"run_id": cell.run_id, "step": step, "method_state": method.state_dict(),
                           "elapsed_s": elapsed, "peak_memory_bytes": peak, "step_times": step_times,
                           "history": history, "started_at": started_at}, paths["checkpoint"])

    limit_s = cell.budget.minutes * 60 if cell.budget.minutes else None
    stopped_by = "outer_steps"
    step = start
    last_ckpt = time.perf_counter()
    desc = f"{cell.dataset.name} ipc{cell.ipc} {cell.method_label} s{cell.seed}"
    with PeakMemory(device) as meter:
        bar = tqdm(range(start, total_steps), desc=desc, leave=False, disable=not progress, initial=start,
                   total=total_steps)
        try:
            for step in bar:
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
                if step % max(1, total_steps // 100) == 0 or step == total_steps - 1:
                    history.append(json_safe({"step": step, **metrics}))
                bar.set_postfix({k: f"{v:.3g}" for k, v in metrics.items() if k in ("outer_loss", "outer_acc")})
                if time.perf_counter() - last_ckpt > cell.checkpoint_minutes * 60:
                    peak = max(peak, meter.current_peak())
                    save_checkpoint(step + 1)
                    last_ckpt = time.perf_counter()
            else:
                step = total_steps
        finally:
            bar.close()
    peak = max(peak, meter.peak_bytes)
    steps_done = step if stopped_by == "minutes" else total_steps
    if steps_done > start:  # the distillation is done: an interruption from here resumes at the evaluation
        save_checkpoint(steps_done)

    distilled = method.distilled()
    distilled.meta.update({"run_id": cell.run_id, "method": cell.method, "dataset": cell.dataset.name})
    result = evaluate(distilled, data, cell.eval, cell.model, seed=cell.seed, device=device, dtype=dtype,
                      progress=progress, desc=f"{desc} eval")
    ctx = AnalysisContext(data=data, distilled=distilled, eval_result=result, protocol=cell.eval, model=cell.model,
                          seed=cell.seed, device=device, dtype=dtype, progress=progress)
    sections = {}
    for name, cfg in cell.analyses.items():
        analysis = ANALYSES.get(name)()
        sections[analysis.section] = json_safe(analysis.run(cfg, ctx))

    wraps = None if method.wraps is None else getattr(cell.method_config, method.wraps[0])
    record = RunRecord.model_validate({
        "schema_version": SCHEMA_VERSION,
        "run_id": cell.run_id,
        "config_id": cell.config_id,
        "suite": cell.suite,
        "dataset": cell.dataset.name,
        "dataset_config": cell.dataset.model_dump(mode="json"),
        "preprocessing": data.preprocessing,
        "ipc": cell.ipc,
        "method": cell.method_label,
        "method_name": cell.method,
        "method_config": cell.method_config.model_dump(mode="json"),
        "wraps": wraps,
        "seed": cell.seed,
        "model": cell.model.model_dump(mode="json"),
        "budget": cell.budget.model_dump(mode="json"),
        "eval": {
            "protocol": cell.eval.model_dump(mode="json"),
            "accuracy_mean": result.accuracy_mean,
            "accuracy_std": result.accuracy_std,
            "accuracy_per_model": result.accuracy_per_model,
        },
        "distill": {
            "outer_steps": steps_done,
            "stopped_by": stopped_by,
            "wall_clock_s": elapsed,
            "seconds_per_outer_step": elapsed / steps_done if steps_done else 0.0,
            "median_seconds_per_outer_step": statistics.median(step_times) if step_times else 0.0,
            "peak_memory_bytes": int(peak),
            "memory_kind": meter.kind,
            "resident_data_bytes": tensor_bytes(data.train_x, data.train_y, data.test_x, data.test_y),
            "history": history,
            "method_summary": json_safe(method.summary()),
        },
        **sections,
        "distilled_file": paths["distilled"].name,
        "hardware": {**hardware_info(device), "dtype": str(dtype).removeprefix("torch.")},
        "provenance": {"ddbench": ddbench_version(), "git": git_state(), "busy": busy.report()},
        "started_at": started_at,
        "finished_at": _now(),
        "status": "ok",
    })
    # The distilled set just before its record: a failure before this point leaves neither.
    distilled.save(paths["distilled"])
    write_record(paths["record"], record)
    paths["checkpoint"].unlink(missing_ok=True)
    log.info("%s: %.2f%% +- %.2f", desc, 100 * result.accuracy_mean, 100 * result.accuracy_std)
    return record


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def to_device(data: DatasetSplits, device: torch.device, dtype: torch.dtype) -> DatasetSplits:
    """``data`` on ``device`` in ``dtype`` (the same object when it already is)."""
    if data.train_x.device == device and data.train_x.dtype == dtype:
        return data
    return data.to(device, dtype)


