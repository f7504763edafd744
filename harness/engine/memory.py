"""Peak memory of a region of code.

On CUDA: the peak of ``torch.cuda.max_memory_allocated`` after a reset at the start of the
region, *minus* the bytes already allocated then (``memory_kind =
"cuda_max_allocated_above_start"``): what the region itself allocated at its peak (tensors
only, not the caching allocator's reserve), without the data that were resident before it
(a cell's dataset, say, which the runner records separately). On CPU there is no allocator
counter, so a thread samples the process's resident set size every ``interval`` seconds
(``"cpu_peak_rss"``: the whole process, data and libraries included; peaks shorter than the
interval can be missed).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

import psutil
import torch


class PeakMemory:
    def __init__(self, device: torch.device, interval: float = 0.002):
        self.device = torch.device(device)
        self.interval = interval
        self.peak_bytes = 0
        self.start_bytes = 0  # CUDA: allocated when the region started (not counted in the peak)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._paused = False
        self._earlier = 0  # CUDA: the peak before the last excluded block (its stats were reset after it)

    @property
    def kind(self) -> str:
        return "cuda_max_allocated_above_start" if self.device.type == "cuda" else "cpu_peak_rss"

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = int(torch.cuda.memory_allocated(self.device))
        else:
            process = psutil.Process()
            self.peak_bytes = process.memory_info().rss

            def sample() -> None:
                while not self._stop.wait(self.interval):
                    if not self._paused:
                        self.peak_bytes = max(self.peak_bytes, process.memory_info().rss)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    @contextmanager
    def excluding(self) -> Iterator[None]:
        """Leave the block's memory out of the peak (an evaluation inside a distillation)."""
        if self.device.type == "cuda":
            before = self.current_peak()
            yield
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._earlier = before  # current_peak() already includes the earlier _earlier
        else:
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
        return self.peak_bytes

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = self.current_peak()
        else:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, psutil.Process().memory_info().rss)


def tensor_bytes(*tensors: torch.Tensor) -> int:
    """Bytes held by ``tensors`` (each storage once)."""
    seen, total = set(), 0
    for t in tensors:
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total
