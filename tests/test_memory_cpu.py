"""Peak memory on the CPU from ddbench's tensor meter over marked outer steps: it tells methods apart
as their stored activations say it must, meters a bounded share of the time spread over the run,
and falls back to the resident set size where no step is marked."""

from __future__ import annotations

import pytest
import torch

import harness.engine.memory as memory
from harness.data import DataConfig, load_dataset
from harness.engine.memory import CPU_RSS, CPU_TENSORS, PeakMemory
from harness.method import DistillTask, create_method
from harness.models import ModelConfig


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataConfig(name="digits"))


def _peak(data, method: str, **config) -> PeakMemory:
    m = create_method(method, real_batch=64, **config)
    m.setup(DistillTask(data=data, ipc=2, seed=0, model=ModelConfig(width=8, depth=1), outer_steps=2))
    with PeakMemory(torch.device("cpu")) as meter:
        for step in range(2):
            with meter.step():
                m.step(step)
    return meter


def test_tensor_peak_differs_by_method_as_the_stored_activations_say(digits):
    """Backpropagating through W inner steps stores W steps of activations: the peak grows by the same
    amount per step of window (4 -> 8 -> 16), and bptt (T = 8), tbptt and rat_bptt (W = 8 of T = 16)
    store the same 8 steps: equal peaks, whatever the unroll before the window."""
    rat = {w: _peak(digits, "rat_bptt", unroll=16, window=w) for w in (4, 8, 16)}
    assert all(m.kind == CPU_TENSORS and m.metered_steps >= 1 for m in rat.values())
    per_step = (rat[8].peak_bytes - rat[4].peak_bytes) / 4
    assert per_step > 0
    assert rat[16].peak_bytes - rat[8].peak_bytes == pytest.approx(8 * per_step, rel=0.02)
    tbptt = _peak(digits, "tbptt", unroll=16, window=8).peak_bytes
    bptt = _peak(digits, "bptt", unroll=8).peak_bytes
    assert tbptt == pytest.approx(rat[8].peak_bytes, rel=0.01) and bptt == pytest.approx(rat[8].peak_bytes, rel=0.01)
    # Far below the process's resident set (libraries, data, whatever the allocator kept).
    assert rat[16].peak_bytes < 0.1 * __import__("psutil").Process().memory_info().rss


def test_without_marked_steps_the_resident_set_is_measured_and_named():
    with PeakMemory(torch.device("cpu")) as meter:
        x = torch.ones(1000)
    assert meter.kind == CPU_RSS and meter.metered_steps == 0 and meter.peak_bytes > 0
    del x


def test_metered_steps_are_a_bounded_share_spread_over_the_run(monkeypatch):
    """A fake clock: an outer step takes 1 s, 3 s under the meter; at duty 5% about 5% of the time is
    metered, the first step included, and metering goes on to the end of the run."""
    clock = [0.0]
    monkeypatch.setattr(memory.time, "perf_counter", lambda: clock[0])
    metered_at = []
    with PeakMemory(torch.device("cpu"), duty=0.05) as meter:
        for step in range(400):
            with meter.step() as metered:
                clock[0] += 3.0 if metered else 1.0
            if metered:
                metered_at.append(step)
    total = clock[0]
    assert metered_at[0] == 0 and meter.metered_steps == len(metered_at)
    assert 3.0 * len(metered_at) <= 0.05 * total + 3.0  # at most one step beyond the share
    assert 3.0 * len(metered_at) >= 0.05 * total - 3.0
    assert metered_at[-1] > 300 and len(metered_at) >= 5  # spread over the run, not only at its start
    assert meter.kind == CPU_TENSORS
