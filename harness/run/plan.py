"""``ddbench plan SUITE`` (``ddbench run --dry-run``): what a run would do and how long it takes
here, before it starts.

Every selected cell is listed with its state (recorded, diverged, failed, a checkpoint at step
k, new). Of every distinct setting (the cells that differ only by seed) one cell is set up on
this device and a few outer steps are timed after a warm-up, and a few steps of one evaluation
network; the estimate is ``steps x seconds per step`` (capped by the minutes budget) plus the
evaluation, times the pending seeds. Nothing is written.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch
from tabulate import tabulate

from harness.core.process import torch_threads
from harness.evaluation.protocols import PROTOCOLS, new_network, train_network
from harness.report import read_record
from harness.run.cell import cell_method, cell_paths, cell_task, load_checkpoint, to_device
from harness.run.progress import human_seconds
from harness.run.runner import check_cell, load_cell_dataset, resolve_device
from harness.run.suite import Cell, Suite

EVAL_PROBE_STEPS = 3


def cell_state(cell: Cell, out_dir: Path) -> tuple[str, int]:
    """``(state, step reached)`` of a cell under ``out_dir``."""
    paths = cell_paths(out_dir, cell)
    if paths["record"].exists():
        record = read_record(paths["record"])
        return ("recorded" if record.status == "ok" else record.status), record.distill.outer_steps
    if paths["checkpoint"].exists():
        return "checkpoint", int(load_checkpoint(paths["checkpoint"], cell.run_id)["step"])
    return "new", 0


def _time_setting(cell: Cell, data, device, dtype, steps: int) -> tuple[float, float]:
    """Seconds per outer step (median of ``steps`` after a warm-up) and of the evaluation."""
    method = cell_method(cell)
    method.setup(cell_task(cell, data, device, dtype))
    per_step = 0.0
    if method.distils:
        times = []
        for step in range(steps + 1):
            t0 = time.perf_counter()
            method.step(step)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
        per_step = statistics.median(times[1:])
    # The evaluation: a few updates of one network under the protocol's recipe, scaled to its total.
    distilled = method.distilled()
    protocol = PROTOCOLS.get(cell.eval.protocol)()
    n = distilled.images.shape[0]
    recipe = protocol.recipe(cell.eval, n)
    net = new_network(cell.eval.model or cell.model, data, 0, device, dtype)
    images, labels = distilled.images.to(device, dtype), distilled.labels.to(device)
    labels = labels.to(dtype) if labels.is_floating_point() else labels
    t0 = time.perf_counter()
    train_network(net, images, labels, recipe, torch.Generator().manual_seed(0), stop=EVAL_PROBE_STEPS)
    eval_s = (time.perf_counter() - t0) / EVAL_PROBE_STEPS * protocol.training_steps(cell.eval, n)
    return per_step, eval_s


def plan_suite(suite: Suite, out_dir: Path, *, time_steps: int = 2, methods=None, datasets=None, ipcs=None,
               seeds=None) -> str:
    cells = suite.cells(methods, datasets=datasets, ipcs=ipcs, seeds=seeds)
    device = resolve_device(suite.spec.hardware.device)
    dtype = getattr(torch, suite.spec.hardware.dtype)
    settings: dict[str, list[Cell]] = defaultdict(list)
    for cell in cells:
        settings[cell.config_id].append(cell)
    rows, total = [], 0.0
    loaded = {}
    with torch_threads(suite.spec.hardware.threads):
        for group in settings.values():
            first = group[0]
            states = [cell_state(c, out_dir) for c in group]
            pending = [(c, s) for c, s in zip(group, states) if s[0] in ("new", "checkpoint", "failed")]
            name = first.dataset.name
            if pending and name not in loaded:
                loaded[name] = load_cell_dataset(suite, first, progress=False)
            per_step = eval_s = 0.0
            if pending:
                check_cell(suite, first, loaded[name], dtype)
                per_step, eval_s = _time_setting(first, to_device(loaded[name], device, dtype), device, dtype,
                                                 time_steps)
            steps, limit = first.budget.outer_steps, first.budget.minutes
            estimate = 0.0
            for cell, (_, reached) in pending:
                distill = per_step * max(0, steps - reached) if steps else 0.0
                if limit is not None and per_step:  # a method that distils stops at its minutes
                    distill = min(distill, limit * 60) if steps else limit * 60
                estimate += distill + eval_s
            total += estimate
            done = {s for s, _ in states}
            rows.append([name, first.ipc, first.method_label, len(group),
                         ", ".join(f"{sum(s == d for s, _ in states)} {d}" for d in sorted(done)),
                         f"{per_step:.3g}" if pending and per_step else "-",
                         f"{steps or 'until'}{'' if limit is None else f' / {limit:g} min'}",
                         human_seconds(eval_s) if pending else "-",
                         human_seconds(estimate) if pending else "-"])
    table = tabulate(rows, headers=["dataset", "IPC", "method", "seeds", "state", "s / outer step", "budget",
                                    "eval (each)", "estimate"], tablefmt="github", disable_numparse=True)
    hw = f"{device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    return (f"{suite.name}: {len(cells)} cells, timed on {hw} ({time_steps} outer steps per setting after a "
            f"warm-up; analyses not included)\n{table}\nestimated total for the pending cells: "
            f"{human_seconds(total)}")
