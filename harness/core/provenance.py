"""What produced a result: the ddbench version, the git commit of the checkout it ran from, and
how busy the machine was (a timing taken on a loaded machine is visible in its record)."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding harness/ (a checkout or site-packages)


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def ddbench_version() -> str:
    return package_version("ddbench") or "0+unknown"


def git_state(root: Path = PACKAGE_ROOT) -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the git checkout at ``root``, or None when it is not one (an
    installed copy) or git is missing."""
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
        # An untracked file where code lives (a new method not yet committed) changes what runs too.
        untracked = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=all", "--",
                                    "harness", "methods"], capture_output=True, text=True, timeout=10,
                                   check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    new_code = [line for line in untracked.splitlines() if line.startswith("??") and line.endswith(".py")]
    return {"commit": commit, "dirty": bool(status.strip()) or bool(new_code)}


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass
class BusyMeter:
    """CPU time of this process (all threads) against wall-clock, and the load average, over a
    region: ``cpu_seconds / wall_seconds`` near the threads a run uses says the machine was its
    own; a 1-minute load average far above the CPU count says other work competed for it."""

    start_wall: float = field(default_factory=time.perf_counter)
    start_cpu: float = field(default_factory=lambda: _cpu_seconds())
    load_start: list[float] | None = field(default_factory=load_average)

    def report(self) -> dict[str, Any]:
        wall = time.perf_counter() - self.start_wall
        cpu = _cpu_seconds() - self.start_cpu
        return {"wall_seconds": wall, "cpu_seconds": cpu,
                "cpu_utilization": cpu / wall if wall > 0 else None,
                "cpu_count": os.cpu_count(), "load_average_start": self.load_start,
                "load_average_end": load_average()}


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def hardware_info(device) -> dict[str, Any]:
    """The machine and the versions a record was measured with."""
    import torch

    cuda = torch.device(device).type == "cuda"
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "torchvision": package_version("torchvision"),
        "torchopt": package_version("torchopt"),
        "ddbench": package_version("ddbench"),
    }
