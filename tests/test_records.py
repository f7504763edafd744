"""Run records and checkpoints on disk: atomic writes, NaN refused, validation on read."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch

import harness.core.io as io_module
import harness.report.schema as records
from conftest import files_under, make_record
from harness.core.errors import CheckpointError
from harness.core.io import atomic_torch_save, write_json_atomic
from harness.method import DistilledSet
from harness.report.records import iter_records, read_record, record_stem


def test_write_json_atomic_round_trip_and_mode(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "deep" / "r.json"
        write_json_atomic(path, {"b": [1, 2.5], "a": "x"})
    finally:
        os.umask(old)
    assert json.loads(path.read_text()) == {"b": [1, 2.5], "a": "x"}
    # A record gets the mode of any new file (0644 under umask 022), not mkstemp's private 0600.
    assert path.stat().st_mode & 0o777 == 0o644
    assert files_under(tmp_path) == [path]


def _failing_file_write(monkeypatch):
    """Make the temp file's write put half the text down, then fail (a full disk)."""
    real_fdopen = os.fdopen

    class HalfWriter:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, text):
            self.f.write(text[: len(text) // 2])
            self.f.flush()
            raise OSError(28, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

    monkeypatch.setattr(io_module.os, "fdopen", lambda fd, mode: HalfWriter(real_fdopen(fd, mode)))


@pytest.mark.parametrize("failure", ["dumps", "write", "fsync", "replace"])
def test_write_json_atomic_failure_keeps_the_old_file(failure, tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    write_json_atomic(path, {"version": "old"})
    old = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("simulated failure")

    if failure == "dumps":
        monkeypatch.setattr(io_module.json, "dumps", boom)
    elif failure == "write":
        _failing_file_write(monkeypatch)
    elif failure == "fsync":
        monkeypatch.setattr(io_module.os, "fsync", boom)
    else:
        monkeypatch.setattr(io_module.os, "replace", boom)
    with pytest.raises(OSError):
        write_json_atomic(path, {"version": "new", "payload": list(range(1000))})
    assert path.read_bytes() == old
    assert files_under(tmp_path) == [path]  # no temp file left behind


def test_write_json_atomic_interrupted_keeps_the_old_file(tmp_path, monkeypatch):
    # Ctrl-C between writing and renaming: BaseException, not Exception, must clean up too.
    path = tmp_path / "r.json"
    write_json_atomic(path, {"version": "old"})

    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(io_module.os, "replace", interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_json_atomic(path, {"version": "new"})
    assert json.loads(path.read_text()) == {"version": "old"}
    assert files_under(tmp_path) == [path]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_numbers_are_refused_before_anything_is_created(bad, tmp_path):
    path = tmp_path / "sub" / "r.json"
    with pytest.raises(ValueError):
        write_json_atomic(path, make_record(eval={"accuracy_mean": bad}))
    assert not path.parent.exists()  # not even the folder


@pytest.mark.parametrize("failure", ["save", "replace"])
def test_atomic_torch_save_failure_keeps_the_old_file(failure, tmp_path, monkeypatch):
    path = tmp_path / "x.ckpt.pt"
    atomic_torch_save({"step": 1, "t": torch.arange(3)}, path)
    old = path.read_bytes()
    real_save = torch.save

    def half_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(f.tell() // 2)  # what is on disk is half a file...
        raise OSError("simulated failure")  # ...and then the disk fails

    def boom(*args, **kwargs):
        raise OSError("simulated failure")

    if failure == "save":
        monkeypatch.setattr(torch, "save", half_save)
    else:
        monkeypatch.setattr(io_module.os, "replace", boom)
    with pytest.raises(OSError):
        atomic_torch_save({"step": 2, "t": torch.arange(1000)}, path)
    assert path.read_bytes() == old
    assert torch.load(path, weights_only=True)["step"] == 1
    assert files_under(tmp_path) == [path]


def test_distilled_set_save_load_round_trip(tmp_path):
    images = torch.randn(6, 1, 4, 4)
    ds = DistilledSet(images, torch.arange(3).repeat_interleave(2), 3, 2, lr=0.5, meta={"run_id": "r"})
    ds.save(tmp_path / "d.pt")
    back = DistilledSet.load(tmp_path / "d.pt")
    assert torch.equal(back.images, images) and torch.equal(back.labels, ds.labels)
    assert (back.num_classes, back.ipc, back.lr, back.meta) == (3, 2, 0.5, {"run_id": "r"})


# ----------------------------------------------------------------------------- reading records


def test_read_record_accepts_a_complete_record(tmp_path):
    path = tmp_path / "r.json"
    write_json_atomic(path, make_record())
    assert read_record(path).model_dump(mode="json", exclude_unset=True) == make_record()


def test_a_schema_1_record_is_read_as_schema_2(tmp_path):
    """Records written by ddbench 0.1 stay readable: only what schema 2 added is filled in."""
    path = tmp_path / "r.json"
    legacy = make_record(method="boost_dd", schema_version=1, method_config={"base": "rat_bptt"})
    write_json_atomic(path, legacy)
    record = read_record(path)
    assert record.schema_version == records.SCHEMA_VERSION == 2 and record.kind == records.RECORD_KIND
    assert record.wraps == "rat_bptt" and record.eval.accuracy_per_model == legacy["eval"]["accuracy_per_model"]


def _without(record: dict, dotted: str) -> dict:
    record = copy.deepcopy(record)
    *parents, last = dotted.split(".")
    target = record
    for key in parents:
        target = target[key]
    del target[last]
    return record


def _with(record: dict, dotted: str, value) -> dict:
    record = copy.deepcopy(record)
    *parents, last = dotted.split(".")
    target = record
    for key in parents:
        target = target[key]
    target[last] = value
    return record


@pytest.mark.parametrize("field", list(records.REQUIRED_FIELDS)
                         + [f"{s}.{k}" for s, keys in records.REQUIRED_NESTED.items() for k in keys])
def test_read_record_names_a_missing_field(field, tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(_without(make_record(), field)))
    with pytest.raises(CheckpointError) as exc:
        read_record(path)
    assert exc.value.file == str(path) and exc.value.field == field


@pytest.mark.parametrize("field, value", [
    ("schema_version", "1"),
    ("schema_version", 0),
    ("schema_version", records.SCHEMA_VERSION + 1),
    ("ipc", "1"),
    ("seed", 1.5),
    ("method", 3),
    ("eval", []),
    ("eval.accuracy_per_model", []),
    ("eval.accuracy_per_model", [0.5, 1.5]),
    ("eval.accuracy_per_model", "0.5"),
    ("eval.accuracy_mean", None),
    ("distill.peak_memory_bytes", "64 MiB"),
])
def test_read_record_names_a_malformed_field(field, value, tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(_with(make_record(), field, value)))
    with pytest.raises(CheckpointError) as exc:
        read_record(path)
    assert exc.value.file == str(path) and exc.value.field == field
    assert len(str(exc.value).splitlines()) == 1


@pytest.mark.parametrize("content", ["", "{", "null", "[]", "\xff\xfe"])
def test_read_record_rejects_what_is_no_record(content, tmp_path):
    path = tmp_path / "r.json"
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(CheckpointError) as exc:
        read_record(path)
    assert exc.value.file == str(path)
    assert len(str(exc.value).splitlines()) == 1


def test_iter_records_sorted_skipping_hidden_and_foreign_files(tmp_path):
    for name in ("b", "a"):
        write_json_atomic(tmp_path / name / "r.json", make_record(method=name))
    (tmp_path / ".hidden.json").write_text("{broken")  # hidden: a temp file, never read
    (tmp_path / "tool.json").write_text('{"created_by": "another tool"}')  # no schema_version
    (tmp_path / "notes.txt").write_text("{broken")
    found = list(iter_records(tmp_path))
    assert [p.relative_to(tmp_path).as_posix() for p, _ in found] == ["a/r.json", "b/r.json"]
    assert [r["method"] for _, r in found] == ["a", "b"]


def test_iter_records_raises_on_a_corrupt_record(tmp_path):
    write_json_atomic(tmp_path / "a.json", make_record())
    (tmp_path / "b.json").write_text('{"schema_version": 1, "run_id": ')
    with pytest.raises(CheckpointError) as exc:
        list(iter_records(tmp_path))
    assert exc.value.file == str(tmp_path / "b.json")


def test_record_stem_layout():
    assert record_stem("s", "digits", 10, "tbptt", 3, "abc") == "s/digits/ipc10/tbptt/seed3-abc"
    assert Path(record_stem("s", "d", 1, "m", 0, "r")).parts == ("s", "d", "ipc1", "m", "seed0-r")


def test_iter_records_skips_json_of_another_kind(tmp_path):
    write_json_atomic(tmp_path / "r.json", make_record(kind=records.RECORD_KIND))
    write_json_atomic(tmp_path / "legacy.json", make_record(method="legacy"))  # no kind: still a record
    write_json_atomic(tmp_path / "bench.json", {"schema_version": 1, "kind": "ddbench.bench.unroll", "rows": []})
    assert sorted(r["method"] for _, r in iter_records(tmp_path)) == ["legacy", "tbptt"]
