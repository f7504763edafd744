"""``ddbench plan SUITE`` (``ddbench run --dry-run``): what a run would do and how long it takes
here, before it starts.

First, before anything is set up, every selected cell is listed with its state (recorded,
diverged, failed, a checkpoint at step k, new), a row per setting (the cells that differ only
by seed), and counted; ``--no-timing`` stops there. Then, of every setting with pending cells,
one cell is set up on this device (its setup timed: a selection method's whole work) and a few
outer steps are timed after a warm-up, and a few steps of one evaluation network after one of
its own. The estimate per pending cell is its setup, ``steps x seconds per step`` (capped by
the minutes budget), the evaluation, and the analyses' own training:

* ``ddranking``: the full-data networks and each random baseline while they are not in the
  cache (counted once for the suite, as they are trained once), and each cell's evaluations of
  its set without augmentation (and with hard labels); a full-data update is timed here;
* ``hardness``: its scoring run on the real training split while it is not cached (once per
  dataset and network), an update of it timed here, plus a test pass per epoch;
* ``subsets``: an evaluation of every distinct subset the cell's set would be cut into;
* ``anytime``: its evaluations during the distillation (every ``every_steps`` steps and
  ``every_minutes`` minutes of the estimated distillation, and one at its end).

An evaluation's network updates are timed under the cell's own protocol; the analyses'
protocols (fewer networks, other steps) are counted by their updates at that rate. Progress is
said on stderr, a plain line per step (so it shows in a log, without a terminal); the 1-minute
load average above the CPU count is warned about (other work then inflates every timing).
Nothing is written (a method's setup may fill ddbench's cache, as the run would).
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tabulate import tabulate

from harness.core.errors import ConfigError
from harness.core.process import torch_threads
from harness.core.provenance import load_average
from harness.engine import inner_loss, make_torch_optimizer
from harness.evaluation.anytime import AnytimeConfig
from harness.evaluation.hardness import HardnessConfig, cache_key, cache_path
from harness.evaluation.protocols import PROTOCOLS, ProtocolConfig, new_network, train_network
from harness.evaluation.scores import ScoresConfig, pending_work
from harness.evaluation.subsets import SubsetEvalConfig, subset_plan, subset_protocol
from harness.method import DistilledSet, DistillTask
from harness.report import read_record
from harness.run.cell import cell_method, cell_paths, cell_task, to_device
from harness.run.progress import human_seconds, say
from harness.run.recording import load_checkpoint
from harness.run.runner import check_cell, load_cell_dataset, resolve_device
from harness.run.suite import Cell, Suite

EVAL_PROBE_STEPS = 3  # updates of a network timed at least (after a warm-up update) ...
PROBE_SECONDS = 0.5  # ... and more, up to this long: a few milliseconds' updates vary on a busy machine
PENDING = ("new", "checkpoint", "failed")


def cell_state(cell: Cell, out_dir: Path) -> tuple[str, int]:
    """``(state, step reached)`` of a cell under ``out_dir``."""
    paths = cell_paths(out_dir, cell)
    if paths["record"].exists():
        record = read_record(paths["record"])
        return ("recorded" if record.status == "ok" else record.status), record.distill.outer_steps
    if paths["checkpoint"].exists():
        return "checkpoint", int(load_checkpoint(paths["checkpoint"], cell.run_id)["step"])
    return "new", 0


@dataclass
class Setting:
    """The cells of one config (they differ by seed only) and the state of each."""

    cells: list[Cell]
    states: list[tuple[str, int]]

    @property
    def first(self) -> Cell:
        return self.cells[0]

    @property
    def pending(self) -> list[tuple[Cell, int]]:
        """``(cell, outer step reached)`` of every cell a run would (re)run."""
        return [(c, reached) for c, (s, reached) in zip(self.cells, self.states) if s in PENDING]

    def state_text(self) -> str:
        done = sorted({s for s, _ in self.states})
        return ", ".join(f"{sum(s == d for s, _ in self.states)} {d}" for d in done)

    def budget_text(self, steps: int | None = None) -> str:
        """The outer steps (the method's, once known: Boost-DD's blocks each take the budget) and minutes."""
        steps = self.first.budget.outer_steps if steps is None else steps
        limit = self.first.budget.minutes
        return f"{steps or 'until'}{'' if limit is None else f' / {limit:g} min'}"


@dataclass
class Probe:
    """What timing one cell of a setting measured."""

    setup_s: float  # the method's setup
    per_step: float  # seconds per outer step (0: the method takes none)
    steps: int  # the method's outer steps (Boost-DD: every block's; 0: until the minutes budget)
    eval_s: float  # the cell's evaluation (every network of its protocol)
    per_update: float  # seconds of one evaluation network update (the cell's protocol)
    distilled: DistilledSet  # the set after the timed steps (its shape, labels, blocks)
    distils: bool


def _time_setting(cell: Cell, task: DistillTask, steps: int) -> Probe:
    """The cell's setup, then ``steps`` outer steps after a warm-up (their median), then a few
    updates of one evaluation network after a warm-up update, scaled to the whole evaluation."""
    method = cell_method(cell)
    t0 = time.perf_counter()
    method.setup(task)
    setup_s = time.perf_counter() - t0
    data, device, dtype = task.data, task.device, task.dtype
    per_step = 0.0
    if method.distils:
        times = []
        for step in range(steps + 1):
            t0 = time.perf_counter()
            method.step(step)
            _sync(device)
            times.append(time.perf_counter() - t0)
        per_step = statistics.median(times[1:])
    distilled = method.distilled()
    protocol = PROTOCOLS.get(cell.eval.protocol)()
    n = distilled.images.shape[0]
    recipe = protocol.recipe(cell.eval, n)
    images, labels = distilled.images.to(device, dtype), distilled.labels.to(device)
    labels = labels.to(dtype) if labels.is_floating_point() else labels

    def train(updates: int) -> None:
        net = new_network(cell.eval.model or cell.model, data, 0, device, dtype)
        train_network(net, images, labels, recipe, torch.Generator().manual_seed(0), stop=updates)

    per_update = _seconds_per_unit(train, recipe.steps, device)
    return Probe(setup_s, per_step, method.outer_steps(task), per_update * protocol.training_steps(cell.eval, n),
                 per_update, distilled, method.distils)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds_per_unit(run: Callable[[int], None], most: int, device) -> float:
    """Seconds per unit of ``run(k)`` (k network updates): after a warm-up unit (first calls,
    allocations), ``EVAL_PROBE_STEPS`` units, then 4x more until they take ``PROBE_SECONDS`` or
    ``most`` units are reached."""
    run(1)
    units = min(EVAL_PROBE_STEPS, max(1, most))
    while True:
        t0 = time.perf_counter()
        run(units)
        _sync(device)
        seconds = time.perf_counter() - t0
        if seconds >= PROBE_SECONDS or units >= most:
            return seconds / units
        units = min(most, 4 * units)


def _update_seconds(model, data, optimizer, batch: int, device, dtype) -> float:
    """Seconds of one minibatch update of a network trained on the real data (:func:`_seconds_per_unit`)."""
    net = new_network(model, data, 0, device, dtype)
    opt = make_torch_optimizer(optimizer, net.parameters())
    x, y = data.train_x[:batch], data.train_y[:batch]

    def train(updates: int) -> None:
        for _ in range(updates):
            loss = inner_loss(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return _seconds_per_unit(train, 1000, device)


def distill_seconds(cell: Cell, per_step: float, reached: int, steps: int) -> tuple[float, int]:
    """``(seconds, outer steps)`` of the distillation still to do: the method's ``steps`` (0: no step
    count) from ``reached`` on, the minutes budget capping both."""
    limit = cell.budget.minutes
    if not per_step:
        return 0.0, 0
    total = steps if steps else math.inf
    if limit is not None:
        total = min(total, int(limit * 60 / per_step))
    left = max(0, total - reached)
    return per_step * left, left


def anytime_points(cfg: AnytimeConfig, per_step: float, reached: int, left: int) -> int:
    """Evaluations the anytime curve makes during the steps ``reached .. reached + left`` (at most:
    one every ``every_steps`` steps and one every ``every_minutes`` of the estimated distillation
    time, and one at the end)."""
    end = reached + left

    def timed(step: int) -> int:  # timed points due by the end of outer step ``step``
        return int(step * per_step // (cfg.every_minutes * 60)) if cfg.every_minutes and per_step else 0

    def stepped(step: int) -> int:
        return step // cfg.every_steps if cfg.every_steps else 0

    points = stepped(end) - stepped(reached) + timed(end) - timed(reached)
    last_had_one = left > 0 and (stepped(end) > stepped(end - 1) or timed(end) > timed(end - 1))
    return min(points, left) + (0 if last_had_one else 1)


class AnalysisCost:
    """The analyses' training still to do, in seconds per analysis; cached parts once per suite."""

    def __init__(self, device, dtype):
        self.device, self.dtype = device, dtype
        self.counted: set[str] = set()
        self.update_s: dict[str, float] = {}

    def _once(self, key: str) -> bool:
        """True the first time ``key`` (a cache file) is counted."""
        if key in self.counted:
            return False
        self.counted.add(key)
        return True

    def _timed(self, key: str, measure: Callable[[], float]) -> float:
        if key not in self.update_s:
            self.update_s[key] = measure()
        return self.update_s[key]

    def seconds(self, cell: Cell, data, probe: Probe, reached: int, left: int) -> dict[str, float]:
        """Each enabled analysis' seconds for ``cell`` (``left`` outer steps to go from ``reached``)."""
        out = {}
        for name, cfg in cell.analyses.items():
            if not getattr(cfg, "enabled", False):
                continue
            if isinstance(cfg, ScoresConfig):
                out[name] = self._ddranking(cfg, cell, data, probe)
            elif isinstance(cfg, HardnessConfig):
                out[name] = self._hardness(cfg, cell, data)
            elif isinstance(cfg, SubsetEvalConfig):
                out[name] = self._subsets(cfg, cell, probe)
            elif isinstance(cfg, AnytimeConfig) and probe.distils:
                points = anytime_points(cfg, probe.per_step, reached, left)
                out[name] = points * self._evaluation(cfg.protocol, probe.distilled.images.shape[0], probe)
        return out

    def _evaluation(self, protocol: ProtocolConfig, n: int, probe: Probe) -> float:
        return PROTOCOLS.get(protocol.protocol)().training_steps(protocol, n) * probe.per_update

    def _ddranking(self, cfg: ScoresConfig, cell: Cell, data, probe: Probe) -> float:
        model = cell.eval.model or cell.model
        total = 0.0
        soft = probe.distilled.labels.is_floating_point()
        for work in pending_work(cfg, data, model, cell.eval, cell.ipc, cell.seed, soft):
            if work.cache_file is not None and not self._once(work.cache_file):
                continue
            if work.kind == "full_data":
                update = self._timed(work.cache_file, lambda: _update_seconds(
                    model, data, cfg.full_data_optimizer, cfg.full_data_batch, self.device, self.dtype))
                total += work.updates * update
            else:
                total += work.updates * probe.per_update
        return total

    def _hardness(self, cfg: HardnessConfig, cell: Cell, data) -> float:
        """The scoring run (epochs of minibatch updates and a test pass each), unless it is cached."""
        model = cfg.model or cell.model
        path = cache_path(cache_key(data, model, cfg))
        if path.is_file() or not self._once(str(path)):
            return 0.0
        update = self._timed(str(path), lambda: _update_seconds(model, data, cfg.optimizer, cfg.batch_size,
                                                                self.device, self.dtype))
        batches = math.ceil(data.train_x.shape[0] / cfg.batch_size)
        test = math.ceil(data.test_x.shape[0] / cfg.batch_size) / 3  # a forward pass: about a third of an update
        return cfg.epochs * (batches + test) * update

    def _subsets(self, cfg: SubsetEvalConfig, cell: Cell, probe: Probe) -> float:
        """An evaluation of every distinct subset (a block prefix that is also a first-k prefix once)."""
        protocol = subset_protocol(cfg, cell.eval)
        classes = probe.distilled.num_classes
        distinct = {tuple(e["positions"]) for e in subset_plan(probe.distilled, cfg, cell.seed)}
        return sum(self._evaluation(protocol, len(positions) * classes, probe) for positions in distinct)


def _settings(suite: Suite, out_dir: Path, **selection) -> list[Setting]:
    settings: dict[str, list[Cell]] = defaultdict(list)
    for cell in suite.cells(**selection):
        settings[cell.config_id].append(cell)
    return [Setting(cells, [cell_state(c, out_dir) for c in cells]) for cells in settings.values()]


def _listing(suite: Suite, settings: list[Setting]) -> str:
    rows = [[s.first.dataset.name, s.first.ipc, s.first.method_label, len(s.cells), s.state_text(), s.budget_text()]
            for s in settings]
    n = sum(len(s.cells) for s in settings)
    pending = sum(len(s.pending) for s in settings)
    table = tabulate(rows, headers=["dataset", "IPC", "method", "seeds", "state", "budget"], tablefmt="github",
                     disable_numparse=True)
    return (f"{suite.name}: {n} cells in {len(settings)} settings, {pending} pending (new, checkpointed or "
            f"failed), {n - pending} recorded or diverged\n{table}")


def busy_warning(threads: int | None) -> str | None:
    """A warning when the 1-minute load average exceeds the CPU count: the timings would be too high
    (and a suite's several threads per process, waiting on each other, far too high)."""
    load, cores = load_average(), os.cpu_count()
    if not (load and cores and load[0] > cores):
        return None
    text = (f"the 1-minute load average is {load[0]:.1f} on {cores} CPUs: other work competes for them, so these "
            "timings, and the estimate, are too high; plan on an idle machine for a better one")
    if threads is None or threads > 1:
        text += (f" (the suite's hardware.threads = {threads or 'all'} threads wait on each other on busy cores: "
                 "--set hardware.threads=1 may well run faster)")
    return text


def plan_suite(suite: Suite, out_dir: Path, *, time_steps: int = 2, timing: bool = True,
               show: Callable[[str], None] = print, methods=None, datasets=None, ipcs=None,
               seeds=None) -> float | None:
    """List the selected cells (``show``), then, with ``timing``, time every setting with pending
    cells and show the estimate; returns it (seconds; None without timing)."""
    settings = _settings(suite, out_dir, methods=methods, datasets=datasets, ipcs=ipcs, seeds=seeds)
    show(_listing(suite, settings))
    if not timing:
        return None
    try:
        device = resolve_device(suite.spec.hardware.device)
    except ConfigError as err:
        raise err.located(file=str(suite.path)) from None
    dtype = getattr(torch, suite.spec.hardware.dtype)
    warning = busy_warning(suite.spec.hardware.threads)
    if warning:
        say(f"ddbench: warning: {warning}")
    rows, total, by_analysis, loaded = [], 0.0, defaultdict(float), {}
    cost = AnalysisCost(device, dtype)
    timed = [s for s in settings if s.pending]
    with torch_threads(suite.spec.hardware.threads):
        for i, setting in enumerate(timed, 1):
            first, name = setting.first, setting.first.dataset.name
            if name not in loaded:
                say(f"plan: loading {name} ...")
                loaded[name] = load_cell_dataset(suite, first, progress=False)
            say(f"plan: timing {name} IPC {first.ipc} {first.method_label} ({i}/{len(timed)}) ...")
            check_cell(suite, first, loaded[name], dtype)
            data = to_device(loaded[name], device, dtype)
            probe = _time_setting(first, cell_task(first, data, device, dtype), time_steps)
            estimate, analyses = 0.0, defaultdict(float)
            for cell, reached in setting.pending:
                distill, left = distill_seconds(cell, probe.per_step, reached, probe.steps)
                for analysis, seconds in cost.seconds(cell, data, probe, reached, left).items():
                    analyses[analysis] += seconds
                estimate += probe.setup_s + distill + probe.eval_s
            estimate += sum(analyses.values())
            for analysis, seconds in analyses.items():
                by_analysis[analysis] += seconds
            total += estimate
            rows.append([name, first.ipc, first.method_label, len(setting.pending), human_seconds(probe.setup_s),
                         f"{probe.per_step:.3g}" if probe.per_step else "-", setting.budget_text(probe.steps),
                         human_seconds(probe.eval_s), _analyses_text(analyses), human_seconds(estimate)])
    table = tabulate(rows, headers=["dataset", "IPC", "method", "pending", "setup (each)", "s / outer step", "budget",
                                    "eval (each)", "analyses (all pending)", "estimate"], tablefmt="github",
                     disable_numparse=True)
    hw = f"{device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    lines = [f"timed on {hw}: {time_steps} outer steps per setting after a warm-up; an evaluation network's "
             "updates after one of its own; the analyses' training counted (what they cache, once)", table]
    if by_analysis:
        lines.append("analyses: " + _analyses_text(by_analysis))
    if warning:
        lines.append(f"warning: {warning}")
    lines.append(f"estimated total for the pending cells: {human_seconds(total)}")
    show("\n".join(lines))
    return total


def _analyses_text(seconds: dict[str, float]) -> str:
    if not seconds:
        return "-"
    return ", ".join(f"{name} {human_seconds(s)}" for name, s in sorted(seconds.items()))
