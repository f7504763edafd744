"""Peak bytes of live tensors created in a region, on any device (the CPU included).

CUDA has an allocator counter (``torch.cuda.max_memory_allocated``); the CPU has none, and its
resident set size hides small allocations behind memory the process already holds. This meter
counts tensors directly: a ``TorchDispatchMode`` sees every tensor an aten op creates (forward,
backward and optimizer alike), adds its storage's bytes when the storage is first seen, and
subtracts them when the last tensor on that storage is freed. The peak of that sum is the
memory the region itself needed, exactly and deterministically, which is what comparing two
ways of computing the same meta-gradient needs. Tensors that existed before the region (data,
parameters) are not counted.

It slows every op by a Python callback: measure memory and time in separate runs.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class TensorMemoryMeter(TorchDispatchMode):
    """``with TensorMemoryMeter() as meter: ...`` then ``meter.peak_bytes``."""

    kind = "tensor_peak_bytes"

    def __init__(self):
        super().__init__()
        self.live_bytes = 0
        self.peak_bytes = 0
        self._refs: dict[int, list[int]] = {}  # storage address -> [bytes, live tensors]

    def _release(self, key: int) -> None:
        entry = self._refs.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.live_bytes -= entry[0]
            del self._refs[key]

    def _track(self, tensor: torch.Tensor) -> None:
        if tensor.device.type == "meta":
            return
        storage = tensor.untyped_storage()
        key, nbytes = storage.data_ptr(), storage.nbytes()
        if nbytes == 0:
            return
        entry = self._refs.get(key)
        if entry is None:
            entry = self._refs[key] = [nbytes, 0]
            self.live_bytes += nbytes
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        entry[1] += 1
        weakref.finalize(tensor, self._release, key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        input_ids = {id(t) for t in inputs}
        input_storages = {t.untyped_storage().data_ptr() for t in inputs if t.device.type != "meta"}
        for leaf in tree_flatten(out)[0]:
            # An op that returns one of its inputs (in-place ops, out=) allocates nothing new,
            # and neither does a view (slice, detach) of a tensor from before the region.
            if not isinstance(leaf, torch.Tensor) or id(leaf) in input_ids:
                continue
            key = leaf.untyped_storage().data_ptr() if leaf.device.type != "meta" else None
            if key in input_storages and key not in self._refs:
                continue
            self._track(leaf)
        return out
