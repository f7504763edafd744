"""Run records: one JSON file per finished (suite, dataset, ipc, method, seed) cell.

Records are plain JSON, written atomically (temp file in the same folder, fsync, rename), so
a crash leaves either the old file or the new one, never half of one. Tables are rendered
from records only. ``schema_version`` changes when a field changes meaning.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import torch

from harness.errors import CheckpointError

SCHEMA_VERSION = 1
RECORD_KIND = "ddbench.run"  # a record's "kind"; other JSON files (benchmarks) carry their own
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


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write a file atomically: ``write(f)`` fills a temp file in the same folder, which is
    fsynced and renamed over ``path``; on any failure the temp file goes and ``path`` is intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates the file 0600; a result gets the mode any new file would (umask).
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically; NaN and infinities are refused (``ValueError``)
    before any file or folder is created."""
    data = (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()
    atomic_write(path, lambda f: f.write(data))


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Nested fields a record must have, and what tables and analyses read from them.
REQUIRED_NESTED = {
    "eval": ("protocol", "accuracy_mean", "accuracy_std", "accuracy_per_model"),
    "distill": ("outer_steps", "wall_clock_s", "seconds_per_outer_step", "peak_memory_bytes", "memory_kind"),
    "hardware": ("device_name", "torch", "torchopt", "python", "cpu_count"),
}


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def read_record(path: Path) -> dict[str, Any]:
    """A record, checked for the required fields; a bad file raises :class:`CheckpointError` naming it."""
    return check_record(_load_json(Path(path)), path)


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"unreadable run record ({err.__class__.__name__}: {err})", file=str(path)) from None


def check_record(record: Any, path: Path | str) -> dict[str, Any]:
    """``record`` if it has every field a run record must have, else a :class:`CheckpointError`."""
    def bad(message: str, field: str | None = None) -> CheckpointError:
        return CheckpointError(message, file=str(path), field=field)

    if not isinstance(record, dict):
        raise bad("a run record must be a JSON object")
    missing = [k for k in REQUIRED_FIELDS if k not in record]
    if missing:
        raise bad("run record lacks a required field", missing[0])
    version = record["schema_version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise bad(f"must be a positive integer, got {version!r}", "schema_version")
    if version > SCHEMA_VERSION:
        raise bad(f"record schema {version} is newer than this ddbench ({SCHEMA_VERSION})", "schema_version")
    for section, keys in REQUIRED_NESTED.items():
        if not isinstance(record[section], dict):
            raise bad("must be a JSON object", section)
        for key in keys:
            if key not in record[section]:
                raise bad("run record lacks a required field", f"{section}.{key}")
    for key in ("dataset", "method", "run_id", "suite"):
        if not isinstance(record[key], str):
            raise bad(f"must be a string, got {record[key]!r}", key)
    for key in ("ipc", "seed"):
        if not isinstance(record[key], int) or isinstance(record[key], bool):
            raise bad(f"must be an integer, got {record[key]!r}", key)
    accs = record["eval"]["accuracy_per_model"]
    if not isinstance(accs, list) or not accs or not all(_is_number(a) and 0 <= a <= 1 for a in accs):
        raise bad("must be a non-empty list of accuracies in [0, 1]", "eval.accuracy_per_model")
    for key in ("accuracy_mean", "accuracy_std"):
        if not _is_number(record["eval"][key]):
            raise bad("must be a number", f"eval.{key}")
    for key in ("outer_steps", "wall_clock_s", "seconds_per_outer_step", "peak_memory_bytes"):
        if not _is_number(record["distill"][key]):
            raise bad("must be a number", f"distill.{key}")
    return record


def iter_records(root: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every run record below ``root``, sorted by path: JSON objects with a ``schema_version`` and
    no ``kind`` other than :data:`RECORD_KIND`.

    Other JSON files (a tool's own files, benchmark results with their own ``kind``) are skipped;
    a file that is not JSON at all, or a record with a missing or malformed field, raises
    :class:`CheckpointError` naming it.
    """
    for path in sorted(root.rglob("*.json")):
        if path.name.startswith(".") or not path.is_file():
            continue
        data = _load_json(path)
        if isinstance(data, dict) and ("schema_version" not in data or data.get("kind", RECORD_KIND) != RECORD_KIND):
            continue
        yield path, check_record(data, path)


def record_stem(suite: str, dataset: str, ipc: int, method: str, seed: int, run_id: str) -> str:
    """Where a cell's files live, relative to the output folder (without the extension)."""
    return f"{suite}/{dataset}/ipc{ipc}/{method}/seed{seed}-{run_id}"
