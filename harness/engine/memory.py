"""Peak memory of a region of code.

On CUDA: the peak of ``torch.cuda.max_memory_allocated`` after a reset at the start of the
region, *minus* the bytes already allocated then (``memory_kind =
"cuda_max_allocated_above_start"``): what the region itself allocated at its peak (tensors
only, not the caching allocator's reserve), without the data that were resident before it
(a cell's dataset, say, which the runner records separately).

On CPU there is no allocator counter, and the process's resident set size says little: it
holds the libraries, the data, and whatever the allocator kept from earlier cells of the same
process (measured: 896-1022 MiB for every digits method; 3164 vs 2042 MiB for two methods of
identical shapes on cifar10-jpeg). So the CPU peak is ddbench's tensor meter
(:class:`~harness.engine.tensor_memory.TensorMemoryMeter`: every tensor an aten op creates,
counted until it is freed) over the outer steps the caller marks with :meth:`PeakMemory.step`
(``memory_kind = "cpu_tensor_peak_sampled"``): the peak bytes of live tensors those steps
created, tensors from before the region (data, parameters, the initial set) not counted, and
tensors a metered step created counted while they live (an optimizer's state created in step 0,
say). The meter slows the steps it watches 2-3x (a Python callback per op: measured on the
smoke suite's shapes), so it does not watch every step: the first, then whenever the metered
steps' time is below ``duty`` (5%) of the region's time so far: spread over the run (a
method whose memory grows, Boost-DD's later blocks or AT-BPTT's window, is seen later too),
at ``duty`` x (1 - 1/slowdown) < 5% more wall-clock (about 3% at a 2.6x slowdown), plus the
first step's (what is metered depends on timing; the peak of a step does not). A
region whose caller marks no step falls back to sampling the resident set size
(``"cpu_peak_rss"``, as before: every ``interval`` seconds, the whole process).
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

import psutil
import torch

from harness.engine.tensor_memory import TensorMemoryMeter

CPU_TENSORS = "cpu_tensor_peak_sampled"
CPU_RSS = "cpu_peak_rss"
CUDA = "cuda_max_allocated_above_start"


class PeakMemory:
    def __init__(self, device: torch.device, interval: float = 0.002, duty: float = 0.05):
        self.device = torch.device(device)
        self.interval = interval
        self.duty = duty  # CPU: the share of the region's time its steps may run under the tensor meter
        self.peak_bytes = 0
        self.start_bytes = 0  # CUDA: allocated when the region started (not counted in the peak)
        self.metered_steps = 0  # CPU: outer steps measured by the tensor meter
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._paused = False
        self._earlier = 0  # CUDA: the peak before the last excluded block (its stats were reset after it)
        self._rss_peak = 0
        self._tensors = TensorMemoryMeter()
        self._started = 0.0
        self._metered_s = 0.0

    @property
    def kind(self) -> str:
        if self.device.type == "cuda":
            return CUDA
        return CPU_TENSORS if self.metered_steps else CPU_RSS

    def __enter__(self) -> "PeakMemory":
        self._started = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = int(torch.cuda.memory_allocated(self.device))
        else:
            process = psutil.Process()
            self._rss_peak = process.memory_info().rss

            def sample() -> None:
                while not self._stop.wait(self.interval):
                    if not self._paused:
                        self._rss_peak = max(self._rss_peak, process.memory_info().rss)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def _due(self) -> bool:
        """Whether the next step is metered: the first, then while the metered share is below ``duty``."""
        return self.metered_steps == 0 or self._metered_s < self.duty * (time.perf_counter() - self._started)

    @contextmanager
    def step(self) -> Iterator[bool]:
        """One outer step of the region; on CPU it runs under the tensor meter when due (yields whether)."""
        if self.device.type == "cuda" or not self._due():
            yield False
            return
        t0 = time.perf_counter()
        with self._tensors:
            yield True
        self._metered_s += time.perf_counter() - t0
        self.metered_steps += 1

    @contextmanager
    def excluding(self) -> Iterator[None]:
        """Leave the block's memory out of the peak (an evaluation inside a distillation)."""
        if self.device.type == "cuda":
            before = self.current_peak()
            yield
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._earlier = before  # current_peak() already includes the earlier _earlier
        else:  # the tensor meter watches marked steps only; the RSS sampler pauses
            self._paused = True
            try:
                yield
            finally:
                self._paused = False

    def current_peak(self) -> int:
        """The peak so far, while the region is still running (for checkpoints)."""
        if self.device.type == "cuda":
            now = max(0, int(torch.cuda.max_memory_allocated(self.device)) - self.start_bytes)
            return max(now, self._earlier)
        return self._tensors.peak_bytes if self.metered_steps else self._rss_peak

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self._rss_peak = max(self._rss_peak, psutil.Process().memory_info().rss)
        self.peak_bytes = self.current_peak()


def tensor_bytes(*tensors: torch.Tensor) -> int:
    """Bytes held by ``tensors`` (each storage once)."""
    seen, total = set(), 0
    for t in tensors:
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total
