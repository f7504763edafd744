"""``ddbench plan SUITE`` (``ddbench run --dry-run``): what a run would do and how long it takes
here, before it starts.

Every selected cell is listed with its state (recorded, diverged, failed, a checkpoint at step
k, new). Of every distinct setting (the cells that differ only by seed) one cell is set up on
this device and a few outer steps are timed after a warm-up, and a few steps of one evaluation
network; the estimate is ``steps x seconds per step`` (capped by the minutes budget) plus the
evaluation, times the pending seeds, plus the DD-Ranking analysis (``[ddranking]``): the
full-data networks and each random baseline while they are not in the cache (counted once for
the suite, as they are trained once), and each cell's own evaluations of its set without
augmentation (and with hard labels). A full-data update is timed on this device too. Nothing
is written.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch
from tabulate import tabulate

from harness.core.process import torch_threads
from harness.engine import inner_loss, make_torch_optimizer
from harness.evaluation.protocols import PROTOCOLS, new_network, train_network
from harness.evaluation.scores import ScoresConfig, pending_work
from harness.method import DistillTask
from harness.report import read_record
from harness.run.cell import cell_method, cell_paths, cell_task, to_device
from harness.run.progress import human_seconds
from harness.run.recording import load_checkpoint
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


def _time_setting(cell: Cell, task: DistillTask, steps: int) -> tuple[float, float, bool]:
    """Seconds per outer step (median of ``steps`` after a warm-up) and of the evaluation, and
    whether the set has soft labels."""
    method = cell_method(cell)
    method.setup(task)
    data, device, dtype = task.data, task.device, task.dtype
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
    return per_step, eval_s, distilled.labels.is_floating_point()


def _full_data_update_seconds(cfg: ScoresConfig, model, data, device, dtype) -> float:
    """Seconds of one minibatch update of a full-data network (median of a few after a warm-up)."""
    net = new_network(model, data, 0, device, dtype)
    opt = make_torch_optimizer(cfg.full_data_optimizer, net.parameters())
    x, y = data.train_x[:cfg.full_data_batch], data.train_y[:cfg.full_data_batch]
    times = []
    for _ in range(EVAL_PROBE_STEPS + 1):
        t0 = time.perf_counter()
        loss = inner_loss(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


class _AnalysisCost:
    """The DD-Ranking analysis' training still to do, each cached part counted once per suite."""

    def __init__(self, device, dtype):
        self.device, self.dtype = device, dtype
        self.counted: set[str] = set()
        self.full_update: dict[str, float] = {}

    def seconds(self, cell: Cell, data, soft: bool, eval_s: float) -> float:
        cfg = cell.analyses.get("ddranking")
        if not isinstance(cfg, ScoresConfig) or not cfg.enabled:
            return 0.0
        model = cell.eval.model or cell.model
        n = cell.ipc * data.num_classes
        per_eval_update = eval_s / max(1, PROTOCOLS.get(cell.eval.protocol)().training_steps(cell.eval, n))
        total = 0.0
        for work in pending_work(cfg, data, model, cell.eval, cell.ipc, cell.seed, soft):
            if work.cache_file is not None:
                if work.cache_file in self.counted:
                    continue
                self.counted.add(work.cache_file)
            if work.kind == "full_data":
                if work.cache_file not in self.full_update:
                    self.full_update[work.cache_file] = _full_data_update_seconds(cfg, model, data, self.device,
                                                                                  self.dtype)
                total += work.updates * self.full_update[work.cache_file]
            else:
                total += work.updates * per_eval_update
        return total


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
    analysis_cost = _AnalysisCost(device, dtype)
    with torch_threads(suite.spec.hardware.threads):
        for group in settings.values():
            first = group[0]
            states = [cell_state(c, out_dir) for c in group]
            pending = [(c, s) for c, s in zip(group, states) if s[0] in ("new", "checkpoint", "failed")]
            name = first.dataset.name
            if pending and name not in loaded:
                loaded[name] = load_cell_dataset(suite, first, progress=False)
            per_step = eval_s = analysis = 0.0
            if pending:
                check_cell(suite, first, loaded[name], dtype)
                data = to_device(loaded[name], device, dtype)
                per_step, eval_s, soft = _time_setting(first, cell_task(first, data, device, dtype), time_steps)
                analysis = sum(analysis_cost.seconds(cell, data, soft, eval_s) for cell, _ in pending)
            steps, limit = first.budget.outer_steps, first.budget.minutes
            estimate = 0.0
            for cell, (_, reached) in pending:
                distill = per_step * max(0, steps - reached) if steps else 0.0
                if limit is not None and per_step:  # a method that distils stops at its minutes
                    distill = min(distill, limit * 60) if steps else limit * 60
                estimate += distill + eval_s
            estimate += analysis
            total += estimate
            done = {s for s, _ in states}
            rows.append([name, first.ipc, first.method_label, len(group),
                         ", ".join(f"{sum(s == d for s, _ in states)} {d}" for d in sorted(done)),
                         f"{per_step:.3g}" if pending and per_step else "-",
                         f"{steps or 'until'}{'' if limit is None else f' / {limit:g} min'}",
                         human_seconds(eval_s) if pending else "-",
                         human_seconds(analysis) if pending else "-",
                         human_seconds(estimate) if pending else "-"])
    table = tabulate(rows, headers=["dataset", "IPC", "method", "seeds", "state", "s / outer step", "budget",
                                    "eval (each)", "DD-Ranking (all seeds)", "estimate"], tablefmt="github",
                     disable_numparse=True)
    hw = f"{device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    return (f"{suite.name}: {len(cells)} cells, timed on {hw} ({time_steps} outer steps per setting after a "
            f"warm-up; the DD-Ranking analysis included, what it caches counted once; hardness and subsets "
            f"not)\n{table}\nestimated total for the pending cells: {human_seconds(total)}")
