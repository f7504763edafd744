"""Run records: one JSON file per finished (suite, dataset, ipc, method, seed) cell.

Records are plain JSON, written atomically (temp file in the same folder, fsync, rename), so
a crash leaves either the old file or the new one, never half of one. Tables are rendered
from records only. ``schema_version`` changes when a field changes meaning.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Iterator

import torch

from harness.errors import CheckpointError

SCHEMA_VERSION = 1
REQUIRED_FIELDS = ("schema_version", "run_id", "suite", "dataset", "ipc", "method", "method_config", "seed", "eval",
                   "distill", "hardware", "started_at", "finished_at", "status")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_info(device: torch.device) -> dict[str, Any]:
    """The machine and the versions a record was measured with."""
    cuda = device.type == "cuda"
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "torchvision": _version("torchvision"),
        "torchopt": _version("torchopt"),
        "ddbench": _version("ddbench"),
    }


def write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_record(path: Path) -> dict[str, Any]:
    """A record, checked for the required fields; a bad file raises :class:`CheckpointError` naming it."""
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"unreadable run record ({err.__class__.__name__}: {err})", file=str(path)) from None
    if not isinstance(record, dict):
        raise CheckpointError("a run record must be a JSON object", file=str(path))
    missing = [k for k in REQUIRED_FIELDS if k not in record]
    if missing:
        raise CheckpointError("run record lacks required fields", file=str(path), field=missing[0])
    if record["schema_version"] > SCHEMA_VERSION:
        raise CheckpointError(f"record schema {record['schema_version']} is newer than this ddbench "
                              f"({SCHEMA_VERSION})", file=str(path), field="schema_version")
    return record


def iter_records(root: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every run record below ``root`` (files ``*.json`` holding a ``schema_version``), sorted by path."""
    for path in sorted(root.rglob("*.json")):
        if path.name.startswith("."):
            continue
        yield path, read_record(path)


def record_stem(suite: str, dataset: str, ipc: int, method: str, seed: int, run_id: str) -> str:
    """Where a cell's files live, relative to the output folder (without the extension)."""
    return f"{suite}/{dataset}/ipc{ipc}/{method}/seed{seed}-{run_id}"


def environment_summary() -> str:
    return f"python {sys.version.split()[0]}, torch {torch.__version__}"
