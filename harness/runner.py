"""Running a suite: every cell distilled, evaluated and recorded, resumable at any point.

For each cell (dataset, ipc, method, seed) the runner

1. skips it when its record already exists (same run id = same normalized config);
2. builds the method through the registry and calls ``setup``; if a checkpoint of this run
   id exists, restores it and continues from its step;
3. runs outer steps until the budget (steps, and optionally minutes) is spent, saving a
   checkpoint every ``budget.checkpoint_minutes``; measures wall-clock and peak memory;
4. checkpoints the finished distillation (an interruption from here on resumes at the
   evaluation), evaluates the distilled set and runs the record extensions (hardness, subset
   curves), then saves the distilled set and writes the JSON record, both atomically, and
   deletes the checkpoint.

Files of a cell, under the output folder: ``SUITE/DATASET/ipcK/METHOD/seedS-RUNID.json``
(the record), ``.distilled.pt`` beside it, and ``.ckpt.pt`` while it runs.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from harness.data import DatasetSplits, load_dataset
from harness.errors import CheckpointError, ConfigError, DDBenchError
from harness.evaluation import EvalResult, evaluate
from harness.hardness import hardness_extension
from harness.memory import PeakMemory
from harness.models import create_model
from harness.method import DistilledSet, DistillTask, atomic_torch_save
from harness.records import (RECORD_KIND, SCHEMA_VERSION, hardware_info, now_iso, read_record, record_stem,
                             write_json_atomic)
from harness.registry import method_class
from harness.subsets import subset_extension
from harness.suite import Cell, Suite, dataset_error_field

log = logging.getLogger("ddbench")

# Analyses of a distilled set, each adding a section (its name) to the record; a new analysis
# registers here without other changes to the runner.
RecordExtension = Callable[["CellContext"], dict[str, Any]]
RECORD_EXTENSIONS: dict[str, RecordExtension] = {"hardness": hardness_extension, "subset_curve": subset_extension}


@dataclass
class CellContext:
    """What a record extension may look at."""

    cell: Cell
    data: DatasetSplits
    distilled: DistilledSet
    eval_result: EvalResult
    device: torch.device
    dtype: torch.dtype
    out_dir: Path
    progress: bool


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("'cuda' requested but no CUDA device is available", field="hardware.device")
    return torch.device(name)


def _json_safe(obj: Any) -> Any:
    """``obj`` with NaN and infinite floats replaced by None: a diverged loss in the history must
    not make the record unwritable (records refuse NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def cell_paths(out_dir: Path, cell: Cell) -> dict[str, Path]:
    stem = out_dir / record_stem(cell.suite, cell.dataset.name, cell.ipc, cell.method_label, cell.seed, cell.run_id)
    return {"record": stem.with_suffix(".json"), "distilled": stem.with_suffix(".distilled.pt"),
            "checkpoint": stem.with_suffix(".ckpt.pt")}


def run_suite(suite: Suite, out_dir: Path, methods: list[str] | None = None, progress: bool = True) -> list[Path]:
    """Run every cell of ``suite`` not yet recorded under ``out_dir``; returns the record paths.

    Everything that can be checked before the first cell runs is checked first (existing
    records and checkpoints, the datasets, every pending method's setup), so that a mistake
    stops the run before anything is written.
    """
    hw = suite.spec.hardware
    try:
        device = resolve_device(hw.device)
    except ConfigError as err:
        raise err.located(file=str(suite.path)) from None
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError("the output folder is a file", file=str(out_dir), field="--out")
    dtype = getattr(torch, hw.dtype)
    if hw.threads:
        torch.set_num_threads(hw.threads)

    written, pending = [], []
    for cell in suite.cells(methods):
        paths = cell_paths(out_dir, cell)
        if paths["record"].exists():
            record = read_record(paths["record"])  # a corrupt record is an error, not a silent skip
            if record["run_id"] != cell.run_id:
                raise CheckpointError(f"record belongs to run {record['run_id']}, not {cell.run_id}",
                                      file=str(paths["record"]), field="run_id")
            log.info("skip %s (record exists)", paths["record"])
        else:
            if paths["checkpoint"].exists():
                _load_checkpoint(paths["checkpoint"], cell.run_id)  # refuse a bad one before any work
            pending.append(cell)
        written.append(paths["record"])

    datasets: dict[str, DatasetSplits] = {}
    for cell in pending:
        name = cell.dataset.name
        if name not in datasets:
            try:
                datasets[name] = load_dataset(cell.dataset).to(device, dtype)
            except DDBenchError as err:
                raise err.at(dataset_error_field(name, err)).located(file=str(suite.path)) from None
        _check_cell(suite, cell, datasets[name], device, dtype)
    for cell in pending:
        run_cell(cell, datasets[cell.dataset.name], device, dtype, out_dir, progress)
    return written


def _method(cell: Cell):
    """The cell's method, built from its already validated config."""
    return method_class(cell.method)(cell.method_config)


def _task(cell: Cell, data: DatasetSplits, device: torch.device, dtype: torch.dtype) -> DistillTask:
    return DistillTask(data=data, ipc=cell.ipc, seed=cell.seed, model=cell.model,
                       outer_steps=cell.budget.outer_steps, device=device, dtype=dtype)


def _check_cell(suite: Suite, cell: Cell, data: DatasetSplits, device: torch.device, dtype: torch.dtype) -> None:
    """Build the cell's networks and set its method up once, so that a config that cannot run on
    this dataset (a ConvNet too deep for the image size, more images per class than the data
    has) is reported before any cell writes a file."""
    where = f"{cell.dataset.name} IPC {cell.ipc}"
    networks = [("model", cell.model)]
    if cell.eval.model is not None:
        networks.append(("eval.model", cell.eval.model))
    if cell.hardness is not None and cell.hardness.enabled and cell.hardness.model is not None:
        networks.append(("hardness.model", cell.hardness.model))
    if cell.subsets is not None and cell.subsets.enabled and cell.subsets.protocol is not None \
            and cell.subsets.protocol.model is not None:
        networks.append(("subsets.protocol.model", cell.subsets.protocol.model))
    for field, model in networks:
        try:
            create_model(model, data.image_shape, data.num_classes)
        except ValueError as err:
            raise ConfigError(f"{where}: {err}", file=str(suite.path), field=field) from None
    label = f"methods.{cell.method_label}"
    try:
        _method(cell).setup(_task(cell, data, device, dtype))
    except DDBenchError as err:  # a method's own config check that needs the task (its field named)
        raise ConfigError(f"{where}: {err.message}", file=str(suite.path),
                          field=f"{label}.{err.field}" if err.field else label) from None
    except ValueError as err:
        raise ConfigError(f"{where}: {err}", file=str(suite.path), field=label) from None


CHECKPOINT_KEYS = ("run_id", "step", "method_state", "elapsed_s", "peak_memory_bytes", "step_times", "history",
                   "started_at")


def _load_checkpoint(path: Path, run_id: str) -> dict[str, Any]:
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
             progress: bool = True) -> dict[str, Any]:
    """Distil, evaluate and record one cell (resuming from its checkpoint if there is one)."""
    paths = cell_paths(out_dir, cell)
    task = _task(cell, data, device, dtype)
    method = _method(cell)
    method.setup(task)
    total_steps = method.outer_steps(task)

    start, elapsed, peak, step_times, history, started_at = 0, 0.0, 0, [], [], now_iso()
    if paths["checkpoint"].exists():
        ckpt = _load_checkpoint(paths["checkpoint"], cell.run_id)
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
                    history.append(_json_safe({"step": step, **metrics}))
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
    ctx = CellContext(cell, data, distilled, result, device, dtype, out_dir, progress)
    extensions = {name: _json_safe(fn(ctx)) for name, fn in RECORD_EXTENSIONS.items()}

    record = {
        "schema_version": SCHEMA_VERSION,
        "kind": RECORD_KIND,
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
            "history": history,
            "method_summary": _json_safe(method.summary()),
        },
        **extensions,
        "distilled_file": paths["distilled"].name,
        "hardware": {**hardware_info(device), "dtype": str(dtype).removeprefix("torch.")},
        "started_at": started_at,
        "finished_at": now_iso(),
        "status": "ok",
    }
    # The distilled set just before its record: a failure before this point leaves neither.
    distilled.save(paths["distilled"])
    write_json_atomic(paths["record"], record)
    paths["checkpoint"].unlink(missing_ok=True)
    log.info("%s: %.2f%% +- %.2f", desc, 100 * result.accuracy_mean, 100 * result.accuracy_std)
    return record
