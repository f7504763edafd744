"""Running a suite: check every pending cell, then hand them to an executor.

:func:`run_suite` does what can be checked first (existing records and checkpoints, datasets,
networks, every pending method's ``check``), so that a mistake stops the run before anything
is written; then an executor (:mod:`.executors`) runs the pending cells (:mod:`.cell`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from harness.core.errors import CheckpointError, ConfigError, DDBenchError
from harness.core.process import torch_threads
from harness.core.progress import showing_progress
from harness.data import DatasetSplits, load_dataset
from harness.engine.optim import optimizer_without_lr
from harness.evaluation import ANALYSES
from harness.evaluation.protocols import PROTOCOLS, check_learned_lr
from harness.models import create_model
from harness.report import read_record
from harness.run.cell import CellOutcome, cell_desc, cell_method, cell_paths, cell_task
from harness.run.executors import Executor, LocalExecutor
from harness.run.progress import human_seconds, say
from harness.run.recording import load_checkpoint
from harness.run.suite import Cell, Suite, dataset_error_field

log = logging.getLogger("ddbench")


def resolve_device(name: str, field: str = "hardware.device", instead: str = "--set hardware.device=cpu",
                   ) -> torch.device:
    """The device ``name`` (``auto``: CUDA when there is one); CUDA asked for on a machine without
    it is a :class:`ConfigError` naming ``field`` and saying how to run on the CPU (``instead``)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if torch.device(name).type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{name!r} requested but no CUDA device is available (torch {torch.__version__}, "
                          f"built {'with CUDA ' + torch.version.cuda if torch.version.cuda else 'without CUDA'}); "
                          f"run on the CPU with {instead}", field=field)
    return torch.device(name)


@dataclass
class SuiteReport:
    """What a ``ddbench run`` did: every cell's record path, and how each pending cell ended."""

    records: list[Path]
    already: int  # cells whose record existed before the run
    outcomes: list[CellOutcome] = field(default_factory=list)
    seconds: float = 0.0

    def counts(self) -> Counter:
        return Counter(o.status for o in self.outcomes)

    @property
    def exit_status(self) -> int:
        """0 when every cell is recorded or running elsewhere; 1 when one diverged or failed."""
        return 1 if self.counts()["diverged"] or self.counts()["failed"] else 0

    def summary(self) -> str:
        c = self.counts()
        parts = [f"{c['ok']} done", f"{self.already + c['skipped']} skipped (record exists)"]
        if c["locked"]:
            parts.append(f"{c['locked']} running elsewhere")
        parts += [f"{c['diverged']} diverged", f"{c['failed']} failed"]
        lines = [f"suite: {', '.join(parts)} in {human_seconds(self.seconds)}"]
        lines += [f"  {o.line()}" for o in self.outcomes if o.status in ("diverged", "failed")]
        return "\n".join(lines)


def run_suite(suite: Suite, out_dir: Path, methods: list[str] | None = None, progress: bool = True,
              executor: Executor | None = None, *, datasets: list[str] | None = None,
              ipcs: list[int] | None = None, seeds: list[int] | None = None) -> SuiteReport:
    """Run every selected cell of ``suite`` not yet recorded under ``out_dir``.

    Everything that can be checked before the first cell runs is checked first (existing
    records and checkpoints, the datasets, networks, every pending method's ``check``), so that
    a mistake stops the run before anything is written.
    """
    started = time.perf_counter()
    hw = suite.spec.hardware
    try:
        device = resolve_device(hw.device)
    except ConfigError as err:
        raise err.located(file=str(suite.path)) from None
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError("the output folder is a file", file=str(out_dir), field="--out")
    dtype = getattr(torch, hw.dtype)
    with torch_threads(hw.threads), showing_progress(progress):
        written, pending = pending_cells(suite, suite.cells(methods, datasets=datasets, ipcs=ipcs, seeds=seeds),
                                         out_dir)
        loaded: dict[str, DatasetSplits] = {}  # on the CPU: moved to the device by the cells that use them
        for cell in pending:
            name = cell.dataset.name
            if name not in loaded:
                loaded[name] = load_cell_dataset(suite, cell, progress)
            check_cell(suite, cell, loaded[name], dtype)
        report = SuiteReport(written, already=len(written) - len(pending))
        report.outcomes = (executor or LocalExecutor()).run(pending, loaded, device, dtype, out_dir, progress)
    report.seconds = time.perf_counter() - started
    return report


def load_cell_dataset(suite: Suite, cell: Cell, progress: bool) -> DatasetSplits:
    name = cell.dataset.name
    t0 = time.perf_counter()
    if progress:
        say(f"loading {name} ...")
    try:
        data = load_dataset(cell.dataset)
    except DDBenchError as err:
        raise err.at(dataset_error_field(name, err)).located(file=str(suite.path)) from None
    if progress:
        say(f"loaded {name}: {data.train_x.shape[0]} train / {data.test_x.shape[0]} test images "
            f"{'x'.join(map(str, data.image_shape))} in {human_seconds(time.perf_counter() - t0)}")
    return data


def pending_cells(suite: Suite, cells: list[Cell], out_dir: Path) -> tuple[list[Path], list[Cell]]:
    """Every cell's record path, and the cells without a final record (their checkpoints
    checked); a ``failed`` record is final for nothing: that cell runs again."""
    written, pending = [], []
    for cell in cells:
        paths = cell_paths(out_dir, cell)
        if paths["record"].exists():
            record = read_record(paths["record"])  # a corrupt record is an error, not a silent skip
            if record.run_id != cell.run_id:
                raise CheckpointError(f"record belongs to run {record.run_id}, not {cell.run_id}",
                                      file=str(paths["record"]), field="run_id")
            log.info("skip %s (record exists)", paths["record"])
        if not paths["record"].exists() or record.status == "failed":
            if paths["checkpoint"].exists():
                load_checkpoint(paths["checkpoint"], cell.run_id)  # refuse a bad one before any work
            pending.append(cell)
        written.append(paths["record"])
    return written, pending


def check_cell(suite: Suite, cell: Cell, data: DatasetSplits, dtype: torch.dtype) -> None:
    """Build the cell's networks and run its method's ``check``, so that a config that cannot run
    on this dataset (a ConvNet too deep for the image size, more images per class than the data
    has) is reported before any cell writes a file. Nothing is set up or moved to a device."""
    where = f"{cell.dataset.name} IPC {cell.ipc}"
    networks = [("model", cell.model)]
    if cell.eval.model is not None:
        networks.append(("eval.model", cell.eval.model))
    for name, cfg in cell.analyses.items():
        networks += ANALYSES.get(name)().networks(cfg, cell.model)
    for field, model in networks:
        try:
            create_model(model, data.image_shape, data.num_classes)
        except ValueError as err:
            raise ConfigError(f"{where}: {err}", file=str(suite.path), field=field) from None
    label = f"methods.{cell.method_label}"
    method = cell_method(cell)
    if cell.budget.outer_steps == 0 and method.distils:
        if cell.budget.minutes is None:
            raise ConfigError(f"{cell_desc(cell)}: 0 outer steps and no minutes budget: {cell.method} would not "
                              "distil (give outer_steps, or minutes to run until they are spent)",
                              file=str(suite.path), field="budget.outer_steps")
        if not method.runs_by_minutes:
            raise ConfigError(f"{cell_desc(cell)}: {cell.method} plans by its number of outer steps and cannot run "
                              "until a minutes budget only: give outer_steps", file=str(suite.path),
                              field="budget.outer_steps")
    if PROTOCOLS.get(cell.eval.protocol).selects_on_validation(cell.eval):
        if not cell.dataset.validation_size:
            raise ConfigError(f"the {cell.eval.protocol!r} protocol selects on a validation split held out of the "
                              f"training set: set data.{cell.dataset.name}.validation_size", file=str(suite.path),
                              field="eval.protocol")
    learned_for = method.learned_lr_optimizer()
    protocols = [("eval", cell.eval)] + [pair for name, cfg in cell.analyses.items()
                                         for pair in ANALYSES.get(name)().protocols(cfg)]
    for prefix, protocol in protocols:  # every protocol the cell trains with, analyses' included
        if learned_for is not None and protocol.use_learned_lr and hasattr(protocol, "optimizer"):
            try:
                check_learned_lr(optimizer_without_lr(learned_for), protocol.optimizer, where=prefix)
            except ConfigError as err:
                raise ConfigError(f"{label}: {err.message}", file=str(suite.path), field=err.field) from None
    try:
        method.check(cell_task(cell, data, torch.device("cpu"), dtype))
    except DDBenchError as err:  # a method's own config check that needs the task (its field named)
        raise ConfigError(f"{where}: {err.message}", file=str(suite.path),
                          field=f"{label}.{err.field}" if err.field else label) from None
    except ValueError as err:
        raise ConfigError(f"{where}: {err}", file=str(suite.path), field=label) from None


