"""Executors: who runs the pending cells of a suite. The runner checks every cell first, then
hands them to one executor and gets one :class:`CellOutcome` per cell back. ``local`` (the
default) runs them one after another in this process; ``ray`` (``harness.run.ray_executor``)
runs each as a Ray task, on this machine or a cluster. A cell writes only its own files under
its lock, so executors may run cells in any order or at once."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from harness.data import DatasetSplits
from harness.run.cell import CellOutcome, cell_desc, execute_cell, to_device
from harness.run.livelog import Tee
from harness.run.progress import BarProgress, CellProgress, say


class Executor(Protocol):
    def run(self, cells: list, datasets: dict[str, DatasetSplits], device: torch.device, dtype: torch.dtype,
            out_dir: Path, progress: bool) -> list[CellOutcome]:
        """Run every cell (``datasets`` holds each cell's dataset on the CPU, by name)."""


class LocalExecutor:
    """The cells one after another in this process, each dataset moved to the device while its
    cells run (and only then); one line per finished cell."""

    def __init__(self, live_log=None):
        self.live_log = live_log  # a harness.run.livelog.LiveLog, or None

    def run(self, cells, datasets, device, dtype, out_dir, progress) -> list[CellOutcome]:
        resident: tuple[str, DatasetSplits] | None = None
        outcomes = []
        for cell in cells:
            name = cell.dataset.name

            def data(name=name) -> DatasetSplits:
                nonlocal resident
                if resident is None or resident[0] != name:
                    resident = None  # free the previous dataset's device copy first
                    resident = (name, to_device(datasets[name], device, dtype))
                return resident[1]

            sink = BarProgress() if progress else CellProgress()
            if self.live_log is not None:
                sink = Tee([sink, self.live_log.sink(cell_desc(cell), cell.normalized())])
            outcome = execute_cell(cell, data, device, dtype, out_dir, sink)
            say(outcome.line())
            outcomes.append(outcome)
        return outcomes
