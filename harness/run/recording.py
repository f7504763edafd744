"""A cell's run record: built from what the cell did, for each way it can end (finished,
diverged, failed), in the typed schema of ``harness.report``."""

from __future__ import annotations

import math
import statistics
from datetime import datetime, timezone
from typing import Any

import torch

from harness.core.provenance import BusyMeter, ddbench_version, git_state, hardware_info
from harness.data import DatasetSplits
from harness.engine.memory import tensor_bytes
from harness.report import SCHEMA_VERSION, RunRecord
from harness.run.suite import Cell


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


def distill_section(*, steps_done: int, stopped_by: str, elapsed: float, step_times: list[float], peak: int,
                    memory_kind: str, data: DatasetSplits | None, history: list[dict], summary: dict,
                    **extra: Any) -> dict[str, Any]:
    return {
        "outer_steps": steps_done,
        "stopped_by": stopped_by,
        "wall_clock_s": elapsed,
        "seconds_per_outer_step": elapsed / steps_done if steps_done else 0.0,
        "median_seconds_per_outer_step": statistics.median(step_times) if step_times else 0.0,
        "peak_memory_bytes": int(peak),
        "memory_kind": memory_kind,
        "resident_data_bytes": None if data is None else tensor_bytes(data.train_x, data.train_y, data.test_x,
                                                                        data.test_y),
        "history": history,
        "method_summary": json_safe(summary),
        **extra,
    }


def build_record(cell: Cell, *, status: str, distill: dict[str, Any], eval_section: dict[str, Any] | None,
                 preprocessing: dict, class_names: tuple[str, ...] = (), device: torch.device, dtype: torch.dtype, started_at: str, busy: BusyMeter,
                 wraps: str | None, sections: dict[str, Any] | None = None, distilled_file: str | None = None,
                 **extra: Any) -> RunRecord:
    """The record of a cell that ended with ``status``; ``eval_section`` None for one that was
    not evaluated (diverged, failed): its accuracies are then absent, never a number."""
    evaluation = eval_section or {"protocol": cell.eval.model_dump(mode="json"), "accuracy_mean": None,
                                  "accuracy_std": None, "accuracy_per_model": []}
    return RunRecord.model_validate({
        "schema_version": SCHEMA_VERSION,
        "run_id": cell.run_id,
        "config_id": cell.config_id,
        "suite": cell.suite,
        "dataset": cell.dataset.name,
        "dataset_config": cell.dataset.model_dump(mode="json"),
        "preprocessing": preprocessing,
        "class_names": list(class_names),
        "ipc": cell.ipc,
        "method": cell.method_label,
        "method_name": cell.method,
        "method_config": cell.method_config.model_dump(mode="json"),
        "wraps": wraps,
        "seed": cell.seed,
        "model": cell.model.model_dump(mode="json"),
        "budget": cell.budget.model_dump(mode="json"),
        "suite_overrides": list(cell.overrides),
        "eval": evaluation,
        "distill": distill,
        **(sections or {}),
        "distilled_file": distilled_file,
        **environment(device, dtype, busy),
        "started_at": started_at,
        "finished_at": now_iso(),
        "status": status,
        **extra,
    })
