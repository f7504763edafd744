"""The Ray executor: every pending cell of a suite a Ray task (``ddbench run SUITE --executor ray``).

Why Ray core and not Ray Tune: a cell is already a complete, resumable unit with its own
checkpoint, lock and record, and a suite is a fixed grid, not a search; Tune's trials,
schedulers and result folders would duplicate that and own the results layout. Core tasks give
what is missing: placement by resources (``[hardware.ray]``: GPUs, fractional ones included, and
CPUs per cell), retries of a task whose worker died, and a cluster.

* Without ``--address`` a local Ray instance is started with this machine's CPUs and GPUs; with
  one, the driver joins that cluster (``ray start --head`` on one node, ``ray start --address``
  on the others). Every node needs ddbench installed and the results folder on **shared
  storage**: the driver checks at start that a task on every node can read and write there.
* A worker that dies (node lost, OOM-killed, preempted) is rerun up to ``max_retries`` times;
  the rerun resumes from the cell's last checkpoint, so its record equals an uninterrupted
  run's. A retry that races a still-running attempt finds the cell's lock taken and stops.
* The driver shows a line per running cell (dataset, IPC, method, step, ETA), one line per
  finished cell, and the runner's summary at the end.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

import torch

from harness.core.errors import ConfigError, DDBenchError, StorageError
from harness.core.process import torch_threads
from harness.core.registry import check_not_shadowed
from harness.data import load_dataset
from harness.run.cell import CellOutcome, cell_desc, execute_cell, to_device
from harness.run.livelog import Tee
from harness.run.progress import CellProgress, human_seconds, say
from harness.run.suite import Cell, RayResources, Suite

_DATASETS: dict[str, Any] = {}  # a worker process keeps the datasets it loaded (by config)


def _ray():
    try:
        import ray
    except ImportError:
        raise DDBenchError("the Ray executor needs Ray: pip install 'ddbench[ray]'", field="--executor") from None
    return ray


# --------------------------------------------------------------------------- in the workers


class BoardProgress(CellProgress):
    """A cell's progress, sent to the driver's board (at most every ``every`` seconds)."""

    def __init__(self, board, key: str, every: float = 1.0):
        super().__init__()
        self.board, self.key, self.every, self.last = board, key, every, 0.0
        self.state: dict[str, Any] = {}

    def _send(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last >= self.every:
            self.last = now
            self.board.update.remote(self.key, dict(self.state))

    def begin(self, desc, total, initial, limit_s):
        super().begin(desc, total, initial, limit_s)
        self.state = {"desc": desc, "step": initial, "total": total, "limit_s": limit_s, "elapsed": 0.0,
                      "phase": "distilling", "pid": os.getpid()}
        self._send(force=True)

    def step(self, step, elapsed, metrics):
        self.state.update(step=step + 1, elapsed=elapsed, phase="distilling")
        self._send()

    def inner(self, done, total, phase):
        self.state["phase"] = f"{phase} {done}/{total}"
        self._send()

    def phase(self, text):
        self.state["phase"] = text
        self._send(force=True)


def _cell_task(cell: Cell, out_dir: str, board, threads: int | None, live_log=None) -> CellOutcome:
    """One cell on a Ray worker: its dataset (loaded once per worker process), its device (the
    GPU Ray gave this task, if any), the cell run under its lock."""
    from harness.run.runner import resolve_device

    device = resolve_device(cell.hardware.device)
    dtype = getattr(torch, cell.hardware.dtype)
    key = cell.dataset.model_dump_json()
    with torch_threads(threads):
        if key not in _DATASETS:
            _DATASETS[key] = load_dataset(cell.dataset)
        sink = BoardProgress(board, cell.run_id)
        if live_log is not None:
            sink = Tee([sink, live_log.sink(cell_desc(cell), cell.normalized())])
        return execute_cell(cell, lambda: to_device(_DATASETS[key], device, dtype), device, dtype, Path(out_dir), sink)


def _storage_probe(token: str, expected: str) -> str | None:
    """On one node: read the driver's token file and write a file beside it (None when both work)."""
    import platform

    try:
        if Path(token).read_text() != expected:
            return "sees another file at the results folder's path"
        mine = Path(f"{token}.{platform.node()}.{os.getpid()}")
        mine.write_text("ok")
        mine.unlink()
    except OSError as err:
        return f"{type(err).__name__}: {err.strerror or err}"
    return None


# --------------------------------------------------------------------------- in the driver


class RayExecutor:
    def __init__(self, resources: RayResources, address: str | None = None, progress: bool = True, live_log=None):
        self.resources, self.address, self.progress, self.live_log = resources, address, progress, live_log

    @classmethod
    def from_options(cls, suite: Suite, *, address: str | None = None, gpus_per_cell: float | None = None,
                     cpus_per_cell: float | None = None, max_retries: int | None = None,
                     progress: bool = True) -> "RayExecutor":
        """The suite's ``[hardware.ray]``, with the command line's values over it (validated alike)."""
        given = {"gpus_per_cell": gpus_per_cell, "cpus_per_cell": cpus_per_cell, "max_retries": max_retries}
        try:
            resources = RayResources(**{**suite.spec.hardware.ray.model_dump(),
                                        **{k: v for k, v in given.items() if v is not None}})
        except ValueError as err:
            raise ConfigError(" ".join(str(err).split()), field="--executor ray") from None
        return cls(resources, address, progress)

    def run(self, cells, datasets, device, dtype, out_dir, progress) -> list[CellOutcome]:
        check_not_shadowed("harness", [Path.cwd()],
                           where="by the Ray workers (they put the driver's working folder first on sys.path)")
        ray = _ray()
        started_here = not ray.is_initialized()
        if started_here:
            env = {k: v for k, v in os.environ.items() if k.startswith("DDBENCH_")}
            if self.address is None and "PYTHONPATH" in os.environ:  # a local instance shares this machine's paths
                env["PYTHONPATH"] = os.environ["PYTHONPATH"]
            ray.init(address=self.address, include_dashboard=False, log_to_driver=True,
                     runtime_env={"env_vars": env} if env else None)
        try:
            out_dir = Path(out_dir).resolve()
            check_shared_storage(ray, out_dir)
            return self._run(ray, cells, out_dir)
        finally:
            if started_here:
                ray.shutdown()

    def _run(self, ray, cells: list[Cell], out_dir: Path) -> list[CellOutcome]:
        board = ray.remote(num_cpus=0)(_Board).remote()
        res = self.resources
        task = ray.remote(_cell_task).options(num_cpus=res.cpus_per_cell, num_gpus=res.gpus_per_cell,
                                               max_retries=res.max_retries, retry_exceptions=False)
        threads = max(1, int(res.cpus_per_cell))
        refs = {task.remote(cell, str(out_dir), board, cell.hardware.threads or threads, self.live_log): cell
                for cell in cells}
        display = _Display(self.progress)
        outcomes: list[CellOutcome] = []
        try:
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1, timeout=1.0)
                for ref in ready:
                    cell = refs.pop(ref)
                    outcome = self._outcome(ray, ref, cell)
                    display.finished(cell.run_id)
                    say(outcome.line())
                    outcomes.append(outcome)
                display.show(ray.get(board.snapshot.remote()), set(c.run_id for c in refs.values()))
        finally:
            display.close()
            if refs:  # an interrupted driver: the running cells checkpoint their last step and stop
                for ref in refs:
                    ray.cancel(ref, force=False)
                ray.wait(list(refs), num_returns=len(refs), timeout=60)
        return outcomes

    def _outcome(self, ray, ref, cell: Cell) -> CellOutcome:
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as err:
            cause = err.cause if hasattr(err, "cause") else None
            if isinstance(cause, DDBenchError):
                raise cause from None  # a full disk or a bad checkpoint: the whole run stops with one line
            return CellOutcome(cell_desc(cell), "failed", message=" ".join(str(cause or err).split())[:300])
        except ray.exceptions.RayError as err:  # a dead worker or node, after its retries
            return CellOutcome(cell_desc(cell), "failed", message=f"its worker died {self.resources.max_retries + 1} "
                               f"times ({type(err).__name__}); the next run resumes it from its checkpoint")


class _Board:
    """A Ray actor: the latest progress of every running cell, for the driver's display."""

    def __init__(self):
        self.cells: dict[str, dict] = {}

    def update(self, key: str, state: dict) -> None:
        self.cells[key] = state

    def snapshot(self) -> dict[str, dict]:
        return dict(self.cells)


class _Display:
    """A tqdm bar per running cell in the driver: step of steps (or seconds of minutes), ETA, phase."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bars: dict[str, Any] = {}

    def show(self, states: dict[str, dict], running: set[str]) -> None:
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        for key, state in states.items():
            if key not in running:
                continue
            by_time = state["total"] == 0 and state["limit_s"]
            bar = self.bars.get(key)
            total = int(state["limit_s"]) if by_time else state["total"]
            if bar is None:
                bar = self.bars[key] = tqdm(total=total, desc=state["desc"], leave=False, dynamic_ncols=True,
                                            unit="s" if by_time else "step")
            elif bar.total != total:  # the cell began again once its setup knew its steps
                bar.total, bar.unit = total, "s" if by_time else "step"
            bar.n = min(state["elapsed"], state["limit_s"]) if by_time else state["step"]
            done, total, elapsed = state["step"], state["total"], state["elapsed"]
            eta = (elapsed / done * (total - done)) if done and total else (
                (state["limit_s"] or 0) - elapsed if by_time else 0)
            bar.set_postfix_str(f"{state['phase']}, ETA {human_seconds(max(eta, 0))}", refresh=True)

    def finished(self, key: str) -> None:
        bar = self.bars.pop(key, None)
        if bar is not None:
            bar.close()

    def close(self) -> None:
        for key in list(self.bars):
            self.finished(key)


def check_shared_storage(ray, out_dir: Path) -> None:
    """Every alive node must read and write ``out_dir`` (a cluster needs shared storage there):
    a one-line :class:`ConfigError` naming the first node that cannot."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        expected = uuid.uuid4().hex
        token = out_dir / f".ddbench-storage-check-{expected}"
        token.write_text(expected)
    except OSError as err:
        raise StorageError(f"cannot write the results folder ({err.strerror or err})", file=str(out_dir)) from None
    try:
        probe = ray.remote(num_cpus=0)(_storage_probe)
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        results = ray.get([probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                           .remote(str(token), expected) for n in nodes], timeout=120)
    finally:
        token.unlink(missing_ok=True)
    for node, problem in zip(nodes, results):
        if problem:
            raise ConfigError(f"the results folder must be shared storage that every Ray node can write; node "
                              f"{node.get('NodeManagerAddress')} {problem}", file=str(out_dir), field="--out")
