"""Run records on disk: one JSON file per finished cell, read back as typed :class:`RunRecord`s.

Records are written with the one atomic writer (``harness.core.io``): a crash leaves the old
file or the new one, never half of one. Reading validates the whole record against
:mod:`.schema`; a file that is not a record of this kind is skipped, a damaged record is a
:class:`CheckpointError` naming the file and the dotted field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator

from pydantic import ValidationError

from harness.core.config import config_error_from
from harness.core.errors import CheckpointError
from harness.core.io import write_json_atomic
from harness.report.schema import EVAL_KIND, RECORD_KIND, SCHEMA_VERSION, EvalRecord, RunRecord, upgrade


def record_stem(suite: str, dataset: str, ipc: int, method: str, seed: int, run_id: str) -> str:
    """Where a cell's files live, relative to the output folder (without the extension)."""
    return f"{suite}/{dataset}/ipc{ipc}/{method}/seed{seed}-{run_id}"


def write_record(path: Path, record: RunRecord | EvalRecord) -> None:
    """``record`` (a run or an evaluation record) as JSON at ``path``, atomically."""
    write_json_atomic(Path(path), record.model_dump(mode="json"))


def read_record(path: Path) -> RunRecord:
    """The record at ``path``; a bad file raises :class:`CheckpointError` naming it (and the field)."""
    return parse_record(_load_json(Path(path)), path)


def parse_record(data: Any, path: Path | str) -> RunRecord:
    """``data`` (a record's JSON) as a :class:`RunRecord`, schema 1 upgraded; else a :class:`CheckpointError`."""
    def bad(message: str, field: str | None = None) -> CheckpointError:
        return CheckpointError(message, file=str(path), field=field)

    if not isinstance(data, dict):
        raise bad("a run record must be a JSON object")
    version = data.get("schema_version")
    if "schema_version" not in data:
        raise bad("run record lacks a required field", "schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise bad(f"must be a positive integer, got {version!r}", "schema_version")
    if version > SCHEMA_VERSION:
        raise bad(f"record schema {version} is newer than this ddbench ({SCHEMA_VERSION}); upgrade ddbench",
                  "schema_version")
    try:
        record = RunRecord.model_validate(upgrade(data))
    except ValidationError as err:
        first = err.errors()[0]
        error = config_error_from(err)
        message = "run record lacks a required field" if first["type"] == "missing" else error.message
        raise bad(message, error.field) from None
    problem = record.problem()
    if problem is not None:
        raise bad(problem[1], problem[0])
    return record


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"unreadable run record ({err.__class__.__name__}: {err})", file=str(path)) from None


def is_record(data: Any) -> bool:
    """Whether parsed JSON claims to be a run record: an object with a ``schema_version`` and no
    ``kind`` other than ``ddbench.run`` (benchmark results and other tools' files are not)."""
    return isinstance(data, dict) and "schema_version" in data and data.get("kind", RECORD_KIND) == RECORD_KIND


def _json_files(root: Path, wanted: Callable[[Any], bool]) -> Iterator[tuple[Path, Any]]:
    """``(path, parsed JSON)`` of every ``*.json`` below ``root`` that ``wanted`` accepts, sorted by
    path; hidden files (temp files of atomic writes) skipped, a file that is not JSON a
    :class:`CheckpointError` naming it."""
    for path in sorted(Path(root).rglob("*.json")):
        if path.name.startswith(".") or not path.is_file():
            continue
        data = _load_json(path)
        if wanted(data):
            yield path, data


def iter_records(root: Path) -> Iterator[tuple[Path, RunRecord]]:
    """Every run record below ``root``, sorted by path.

    Hidden files (temp files of atomic writes), JSON of another kind and JSON objects without a
    ``schema_version`` are skipped; a file that is not JSON at all, or a record with a missing
    or malformed field, raises :class:`CheckpointError` naming it.
    """
    for path, data in _json_files(root, lambda data: not isinstance(data, dict) or is_record(data)):
        yield path, parse_record(data, path)


def iter_eval_records(root: Path) -> Iterator[tuple[Path, EvalRecord]]:
    """Every evaluation record (``ddbench eval``) below ``root``, sorted by path; a damaged one is a
    :class:`CheckpointError` naming it."""
    for path, data in _json_files(root, lambda data: isinstance(data, dict) and data.get("kind") == EVAL_KIND):
        try:
            yield path, EvalRecord.model_validate(data)
        except ValidationError as err:
            error = config_error_from(err)
            raise CheckpointError(error.message, file=str(path), field=error.field) from None
