"""Executors: who runs the pending cells of a suite. The runner checks every cell first, then
hands them to one executor; ``local`` (the default) runs them one after another in this
process. A cell writes only its own files, so executors may run cells in any order or at once."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from harness.data import DatasetSplits
from harness.run.cell import run_cell, to_device


class Executor(Protocol):
    def run(self, cells: list, datasets: dict[str, DatasetSplits], device: torch.device, dtype: torch.dtype,
            out_dir: Path, progress: bool) -> None:
        """Run every cell (``datasets`` holds each cell's dataset on the CPU, by name)."""


class LocalExecutor:
    """The cells one after another in this process, each dataset moved to the device while its
    cells run (and only then)."""

    def run(self, cells, datasets, device, dtype, out_dir, progress) -> None:
        resident: tuple[str, DatasetSplits] | None = None
        for cell in cells:
            name = cell.dataset.name
            if resident is None or resident[0] != name:
                resident = None  # free the previous dataset's device copy first
                resident = (name, to_device(datasets[name], device, dtype))
            run_cell(cell, resident[1], device, dtype, out_dir, progress)
