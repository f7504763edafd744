"""Peak memory of a cell counts the cell's own allocations; the data resident before it are
recorded apart; datasets reach the device only when their cells run."""

from __future__ import annotations

from types import SimpleNamespace

import torch

import harness.run.executors as executors
from harness.engine.memory import PeakMemory, tensor_bytes


def test_cuda_peak_is_measured_above_what_was_resident(monkeypatch):
    """The CUDA arithmetic, with the allocator's counters stood in for (no GPU here)."""
    allocated = {"now": 700 * 2**20, "max": 0}
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: allocated.update(max=allocated["now"]))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: allocated["now"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: allocated["max"])
    with PeakMemory(torch.device("cuda")) as meter:  # 700 MiB of dataset already on the device
        allocated["max"] = 700 * 2**20 + 96 * 2**20  # the cell's own peak: 96 MiB more
        assert meter.current_peak() == 96 * 2**20
    assert meter.peak_bytes == 96 * 2**20 and meter.kind == "cuda_max_allocated_above_start"


def test_tensor_bytes_counts_each_storage_once():
    x = torch.zeros(10, 4)
    assert tensor_bytes(x, x[2:], torch.zeros(3, dtype=torch.int64)) == 10 * 4 * 4 + 3 * 8


def test_local_executor_moves_a_dataset_to_the_device_only_for_its_cells(monkeypatch, tmp_path):
    events = []
    monkeypatch.setattr(executors, "to_device", lambda data, device, dtype: events.append(("move", data)) or data)
    monkeypatch.setattr(executors, "execute_cell", lambda cell, data, *a: events.append(("run", cell.name, data()))
                        or SimpleNamespace(line=lambda: ""))
    cells = [SimpleNamespace(name=n, dataset=SimpleNamespace(name=d)) for n, d in
             (("a1", "A"), ("a2", "A"), ("b1", "B"))]
    executors.LocalExecutor().run(cells, {"A": "data-A", "B": "data-B"}, torch.device("cpu"), torch.float32,
                                  tmp_path, False)
    assert events == [("move", "data-A"), ("run", "a1", "data-A"), ("run", "a2", "data-A"), ("move", "data-B"),
                      ("run", "b1", "data-B")]
