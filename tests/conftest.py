"""Shared fixtures of the harness tests: a private dataset cache, tiny suite files, the CLI.

Suites are written from Python dicts by a small TOML writer (:func:`dump_toml`), so a test
states only what it changes from :data:`TINY_SUITE`, a suite that runs in about a second.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any, Callable

import pytest

# Runs in about a second on digits: two methods, a 1-layer ConvNet of width 4, two outer steps,
# one evaluation model of a few steps.
TINY_SUITE: dict[str, Any] = {
    "suite": {"name": "tiny"},
    "grid": {"datasets": ["digits"], "ipcs": [1], "seeds": [0]},
    # One thread: the machine's 2 cores are shared, and oversubscribed threads are many times slower.
    "hardware": {"device": "cpu", "dtype": "float32", "threads": 1},
    "budget": {"outer_steps": 2, "checkpoint_minutes": 10.0},
    "model": {"name": "convnet", "width": 4, "depth": 1},
    "eval": {"models": 1, "steps": 3, "augment": {"ops": []}},
    "method_defaults": {"real_batch": 64, "inner": {"name": "sgd", "lr": 0.01}},
    "methods": {"random_real": {}, "tbptt": {"unroll": 3, "window": 2}},
}


def _toml_key(key: str) -> str:
    return key if key and all(ch.isalnum() or ch in "-_" for ch in key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError("TOML writer: non-finite float")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"TOML writer: cannot write {type(value).__name__}")


def dump_toml(data: dict[str, Any]) -> str:
    """``data`` as TOML: top-level dicts become [tables], nested dicts of dicts [sub.tables],
    everything else ``key = value`` (inline tables for dicts of plain values)."""
    lines: list[str] = []

    def table(prefix: list[str], body: dict[str, Any]) -> None:
        # Once one child must be a [table], every dict child is one: the order of tables (of
        # methods, say) is kept, whereas inline tables would have to come first.
        tables = any(isinstance(v, dict) and _is_table(v) for v in body.values())
        plain = {k: v for k, v in body.items() if not (tables and isinstance(v, dict))}
        sub = {k: v for k, v in body.items() if k not in plain}
        if prefix and (plain or not sub):
            lines.append("[" + ".".join(_toml_key(p) for p in prefix) + "]")
        for k, v in plain.items():
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
        if plain or not sub:
            lines.append("")
        for k, v in sub.items():
            table([*prefix, k], v)

    table([], data)
    return "\n".join(lines)


def _is_table(value: dict) -> bool:
    # A dict is written as a [table] when it is empty or holds a dict (so nested method tables,
    # [methods.x.by_ipc.10], stay tables); small dicts of plain values are inline.
    return not value or any(isinstance(v, dict) for v in value.values()) or len(value) > 3


def tiny_suite(**changes: Any) -> dict[str, Any]:
    """A deep copy of TINY_SUITE with top-level sections replaced by ``changes``."""
    data = copy.deepcopy(TINY_SUITE)
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


@pytest.fixture(autouse=True)
def _private_dataset_cache(tmp_path_factory, monkeypatch):
    # Never read or write the user's decoded-dataset cache.
    monkeypatch.setenv("DDBENCH_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    # A suite's hardware.threads sets torch's global thread count; give later tests theirs back.
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def write_suite(tmp_path) -> Callable[..., Path]:
    """``write_suite(data_or_text, name="suite.toml")``: a suite file under tmp_path."""

    def write(data: dict[str, Any] | str, name: str = "suite.toml") -> Path:
        path = tmp_path / name
        path.write_text(data if isinstance(data, str) else dump_toml(data))
        return path

    return write


@pytest.fixture
def cli(capsys) -> Callable[..., tuple[int, str, str]]:
    """``cli("run", path, ...)``: harness.run.cli.main's exit code, stdout and stderr."""
    from harness.run.cli import main

    def run(*argv: Any) -> tuple[int, str, str]:
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def files_under(root: Path) -> list[Path]:
    """Every file below ``root`` (hidden temp files included) but the lock file an unfinished cell
    keeps (``.lock``, empty: a finished cell's is removed); [] if it does not exist."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix != ".lock") if root.exists() else []


def assert_same_result(a: Path, b: Path, cell) -> None:
    """The cell's records under ``a`` and ``b`` have the same accuracies and history, and their
    distilled sets the same images and labels, bit for bit (a resumed run against a reference)."""
    import torch

    from harness.method import DistilledSet
    from harness.report import read_record
    from harness.run.cell import cell_paths

    ra, rb = read_record(cell_paths(a, cell)["record"]), read_record(cell_paths(b, cell)["record"])
    assert ra.eval.accuracy_per_model == rb.eval.accuracy_per_model and ra.distill.history == rb.distill.history
    da, db = (DistilledSet.load(cell_paths(root, cell)["distilled"]) for root in (a, b))
    assert torch.equal(da.images, db.images) and torch.equal(da.labels, db.labels)


def make_record(method: str = "tbptt", dataset: str = "digits", ipc: int = 1, seed: int = 0,
                accs: tuple[float, ...] = (0.5, 0.7), outer_steps: int = 10, seconds_per_step: float = 0.25,
                peak: int = 64 * 2**20, device_name: str = "Test CPU", **extra: Any) -> dict[str, Any]:
    """A minimal run record (its JSON) with every required field (the values are the caller's)."""
    mean = sum(accs) / len(accs)
    record = {
        "schema_version": 2,
        "run_id": f"{method}-{dataset}-{ipc}-{seed}",
        "suite": "unit",
        "dataset": dataset,
        "ipc": ipc,
        "method": method,
        "method_config": {},
        "seed": seed,
        "eval": {"protocol": {"models": len(accs)}, "accuracy_mean": mean,
                 "accuracy_std": math.sqrt(sum((a - mean) ** 2 for a in accs) / len(accs)),
                 "accuracy_per_model": list(accs)},
        "distill": {"outer_steps": outer_steps, "wall_clock_s": outer_steps * seconds_per_step,
                    "seconds_per_outer_step": seconds_per_step, "peak_memory_bytes": peak,
                    "memory_kind": "cpu_peak_rss"},
        "hardware": {"device_name": device_name, "torch": "2.x", "torchopt": "0.7", "python": "3.11",
                     "cpu_count": 2},
        "started_at": "2024-01-01T00:00:00+00:00",
        "finished_at": "2024-01-01T00:01:00+00:00",
        "status": "ok",
    }
    record.update(extra)
    return record


def typed(records: list[dict[str, Any]]) -> list:
    """Record JSON (``make_record``'s) as the typed records the table views read."""
    from harness.report import parse_record

    return [parse_record(r, "<test record>") for r in records]
