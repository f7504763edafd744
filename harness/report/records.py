"""Run records on disk: one JSON file per finished cell, read back as typed :class:`RunRecord`s.

Records are written with the one atomic writer (``harness.core.io``): a crash leaves the old
file or the new one, never half of one. Reading validates the whole record against
:mod:`.schema`; a file that is not a record of this kind is skipped, a damaged record is a
:class:`CheckpointError` naming the file and the dotted field.

Records travel (a leaderboard is built from records other people send): the files a record
names (``distilled_file``, ``error_file``) are names in the record's own folder, and
:func:`record_file` refuses one that leaves it (an absolute path, ``..``, a link pointing out);
:func:`checked_distilled_file` also compares the distilled set with the SHA-256 its record
gives (``distilled_sha256``, computed when the set was saved).
"""

from __future__ import annotations

import hashlib
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


def file_sha256(path: Path) -> str:
    """The SHA-256 of the file at ``path``, lowercase hex (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def record_file(path: Path, record: RunRecord, field: str) -> Path | None:
    """The file that ``record`` (read from ``path``) names in ``field``, in the record's folder;
    None when it names none. A name that leaves the folder (an absolute path, a separator, ``..``,
    or a link to a file elsewhere) is a :class:`CheckpointError` naming the record and the field:
    a record someone sent never makes ddbench read, copy or publish a file outside its folder."""
    name = getattr(record, field)
    if not name:
        return None
    folder = Path(path).parent
    if name in (".", "..") or any(sep in name for sep in ("/", "\\", "\0")):
        raise CheckpointError(f"names {name!r}: not a file name in the record's folder", file=str(path), field=field)
    target = folder / name
    if target.resolve().parent != folder.resolve():  # a link in the folder that points out of it
        raise CheckpointError(f"names {name!r}, a link to a file outside the record's folder", file=str(path),
                              field=field)
    return target


def checked_distilled_file(path: Path, record: RunRecord) -> Path | None:
    """The record's distilled set (:func:`record_file`), its SHA-256 checked against the record's
    ``distilled_sha256`` when the file is there and the record gives one (records before ddbench
    computed it give none); a mismatch is a :class:`CheckpointError` naming the record, as is
    any file name of the record that leaves its folder."""
    record_file(path, record, "error_file")  # never read here, but such a record is not to be trusted
    distilled = record_file(path, record, "distilled_file")
    if distilled is not None and record.distilled_sha256 is not None and distilled.is_file():
        actual = file_sha256(distilled)
        if actual != record.distilled_sha256:
            raise CheckpointError(f"its distilled set {distilled.name} has SHA-256 {actual[:12]}..., not the "
                                  f"{record.distilled_sha256[:12]}... the record gives: the file was changed or "
                                  "belongs to another run", file=str(path), field="distilled_sha256")
    return distilled


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
