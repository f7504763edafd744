"""Named problem shapes of the benchmarks (``--shape NAME`` of ``unroll.py`` and ``commit_speed.py``).

This module imports nothing from ddbench, so ``commit_speed.py`` can time an older checkout of
the harness at exactly the shapes the current benchmarks use: a regression shows as a ratio of
seconds per outer step at one named shape, measured on one machine.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Shapes:
    channels: int = 3
    size: int = 32
    classes: int = 10
    ipc: int = 10
    real_batch: int = 5000
    width: int = 128
    depth: int = 3
    unroll: int = 200  # N (T for RaT-BPTT)
    windows: tuple[int, ...] = (60, 120, 200)  # M
    real_chunk: int = 1000
    steps: int = 5  # timed outer steps per measurement
    threads: int | None = None  # torch threads (None: torch's default)
    train_size: int | None = None  # real training images of the random data set (None: one real batch)

    def with_(self, **changes) -> "Shapes":
        return replace(self, **changes)


SHAPES: dict[str, Shapes] = {
    # The RaT-BPTT paper's CIFAR-10 IPC 10 setting (official README): ConvNet-3 width 128, 32x32x3,
    # T = 200, M = 60 (120 and 200 to show how memory grows with the window), real batch 5000.
    "cifar10": Shapes(),
    # Small shapes for CI on a CPU (seconds).
    "tiny": Shapes(channels=3, size=16, classes=4, ipc=2, real_batch=128, width=16, depth=2, unroll=20,
                   windows=(6, 12, 20), real_chunk=32, steps=3),
    # The CPU speed check of issue 17: ConvNet-3 width 64 on 28x28 grayscale (MNIST-shaped), IPC 10,
    # T = 60, M = 20, real batch 1000, 2 threads. rat_bptt (full mode) took 17-22 s per outer step
    # at commit 7a29e2a on the shared 2-core machine, 7.8 s in an earlier measurement elsewhere.
    "mnist-w64": Shapes(channels=1, size=28, classes=10, ipc=10, real_batch=1000, width=64, depth=3, unroll=60,
                        windows=(20,), real_chunk=1000, steps=2, threads=2, train_size=10000),
}


def shape(name: str) -> Shapes:
    """The named shape, or a ``ValueError`` naming the known ones."""
    if name not in SHAPES:
        raise ValueError(f"unknown shape {name!r} (known: {', '.join(SHAPES)})")
    return SHAPES[name]
