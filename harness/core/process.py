"""Process-wide settings a run changes, each inside a context that restores it.

Torch keeps global state: the number of intra-op threads, the TF32 flags of matmuls and
convolutions, the default random generator. A run sets what it needs inside these contexts,
so a caller (a test, a notebook, a second suite in the same process) finds its settings as
it left them.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` inside the block (``None``: unchanged)."""
    import torch

    saved = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


@contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    """TF32 for CUDA matmuls *and* cuDNN convolutions inside the block, restored afterwards.

    ``enabled=False`` turns both off (torch's cuDNN default is on): exact float32 is what the
    engine's checks assume; TF32 is an explicit speed option (``engine.tf32``).
    """
    import torch

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@contextmanager
def seeded(seed: int, device=None) -> Iterator[None]:
    """Torch's global generators (CPU, and ``device`` when it is CUDA) seeded with ``seed`` inside
    the block and restored afterwards: for code that only draws from the global generator
    (a module's default init)."""
    import torch

    devices = [device] if device is not None and torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
