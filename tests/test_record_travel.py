"""Records that travel (issue 18, item 5): a record names no path of the machine that wrote it,
says how its labels were made, and names its distilled set's SHA-256; the files a record names
stay in its folder. ``ddbench eval`` refuses a record that does not hold together (exit 2, one
line naming it); ``ddbench publish`` leaves it out with a line and a note, and builds the rest."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from conftest import dump_toml, files_under, make_record, tiny_suite, typed
from harness.core.errors import CheckpointError
from harness.core.io import write_json_atomic
from harness.report.compare import label_kind
from harness.report.records import checked_distilled_file, file_sha256, read_record, record_file
from harness.report.site.build import publish
from harness.run.recording import portable


def _strings(obj, where=""):
    """``(dotted field, string)`` of every string in a record's JSON."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(v, f"{where}.{k}" if where else k)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _strings(v, f"{where}[{i}]")
    elif isinstance(obj, str):
        yield where, obj


def _image_folder(root: Path) -> None:
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", 4), ("test", 3)):
        for c, name in enumerate(("ant", "bee")):
            for i in range(n):
                (root / split / name).mkdir(parents=True, exist_ok=True)
                pixels = (torch.rand(8, 8, 3, generator=gen) * 255).to(torch.uint8).numpy()
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")


def test_a_fresh_record_names_no_path_of_the_machine_that_wrote_it(write_suite, cli, tmp_path, monkeypatch):
    """Every analysis on (hardness and DD-Ranking write cache files, the set is saved beside the
    record), a data root given relative to the working folder: the record's JSON holds neither the
    working folder, nor the cache dir, nor the home folder, nor any absolute path."""
    monkeypatch.chdir(tmp_path)
    _image_folder(tmp_path / "imgs")
    methods = {"random_real": {}, "teacher": {"method": "random_real", "labels": "teacher",
                                              "full_data": {"epochs": 1, "models": 1}},
               "tbptt": {"unroll": 3, "window": 2}, "learned": {"method": "tbptt", "unroll": 3, "window": 2,
                                                                "learn_labels": True}}
    data = tiny_suite(grid={"datasets": ["imagefolder"], "ipcs": [2], "seeds": [0]}, methods=methods,
                      data={"imagefolder": {"root": "imgs"}}, hardness={"epochs": 2, "batch_size": 4},
                      subsets={"enabled": True, "models": 1},
                      anytime={"enabled": True, "every_steps": 1, "protocol": {"models": 1, "steps": 2}},
                      ddranking={"full_data_epochs": 1, "full_data_models": 1, "lr_grid": []})
    path = write_suite(dump_toml(data))
    code, out, err = cli("run", path, "--out", "runs", "-q")
    assert code == 0, err
    records = sorted((tmp_path / "runs").rglob("*.json"))
    assert len(records) == 4
    machine = [str(tmp_path), os.environ["DDBENCH_CACHE"], str(Path.home())]
    for file in records:
        text = file.read_text()
        assert not [m for m in machine if m in text], file.name
        absolute = [(f, s) for f, s in _strings(json.loads(text)) if os.path.isabs(s)]
        assert absolute == [], file.name
        record = read_record(file)
        assert record.preprocessing["source_root"] == record.dataset_config["root"] == "imgs"
        assert record.hardness.cache_file.startswith("hardness/") and record.scores.full_data_cache
        assert record.distilled_sha256 == file_sha256(file.with_name(record.distilled_file))
        assert record.distill.setup_seconds is not None and record.distill.setup_seconds >= 0
    kinds = {read_record(f).method: read_record(f).label_kind for f in records}
    assert kinds == {"random_real": "hard", "teacher": "teacher", "tbptt": "hard", "learned": "learned"}
    assert {r.method: label_kind(r) for r in map(read_record, records)} == kinds  # what the tables group by


def test_portable_keeps_names_relative_to_the_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("DDBENCH_CACHE", str(tmp_path / "cache"))
    section = {"cache_file": str(tmp_path / "cache" / "hardness" / "x.pt"), "elsewhere": "/data/sets/y.pt",
               "text": "uint8 / 255", "nested": [{"f": str(tmp_path / "cache" / "a.json")}], "n": 3}
    assert portable(section) == {"cache_file": "hardness/x.pt", "elsewhere": "y.pt", "text": "uint8 / 255",
                                 "nested": [{"f": "a.json"}], "n": 3}


# ------------------------------------------------------------------------- file references


@pytest.mark.parametrize("name", ["../../x.pt", "/etc/passwd", "sub/x.pt", "..", ".", "a\\b.pt", "x\0.pt"])
@pytest.mark.parametrize("field", ["distilled_file", "error_file"])
def test_a_file_name_that_leaves_the_records_folder_is_refused(name, field, tmp_path):
    (record,) = typed([make_record(**{field: name})])
    path = tmp_path / "runs" / "r.json"
    with pytest.raises(CheckpointError) as err:
        checked_distilled_file(path, record)
    assert str(err.value).startswith(f"{path}: {field}: ") and len(str(err.value).splitlines()) == 1


def test_a_link_out_of_the_folder_is_refused_and_a_plain_name_is_kept(tmp_path):
    folder = tmp_path / "runs"
    folder.mkdir()
    (tmp_path / "secret.pt").write_bytes(b"outside")
    (folder / "x.distilled.pt").symlink_to(tmp_path / "secret.pt")
    (record,) = typed([make_record(distilled_file="x.distilled.pt")])
    with pytest.raises(CheckpointError, match="a link to a file outside"):
        record_file(folder / "r.json", record, "distilled_file")
    (record,) = typed([make_record(distilled_file="y.distilled.pt")])
    assert record_file(folder / "r.json", record, "distilled_file") == folder / "y.distilled.pt"
    assert record_file(folder / "r.json", typed([make_record()])[0], "distilled_file") is None


def test_the_sha256_must_be_the_files(tmp_path):
    folder = tmp_path / "runs"
    folder.mkdir()
    (folder / "s.pt").write_bytes(b"the set")
    good = file_sha256(folder / "s.pt")
    (record,) = typed([make_record(distilled_file="s.pt", distilled_sha256=good)])
    assert checked_distilled_file(folder / "r.json", record) == folder / "s.pt"
    (folder / "s.pt").write_bytes(b"another set")
    with pytest.raises(CheckpointError) as err:
        checked_distilled_file(folder / "r.json", record)
    assert str(err.value).startswith(f"{folder / 'r.json'}: distilled_sha256: its distilled set s.pt has SHA-256 ")
    with pytest.raises(CheckpointError):  # not a SHA-256
        typed([make_record(distilled_sha256="abc")])
    with pytest.raises(CheckpointError):  # the kinds are the runner's three
        typed([make_record(label_kind="soft")])


# ------------------------------------------------------------------------- eval and publish


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """The tiny suite's two records and sets (run once for this module's tests)."""
    from harness.run.cli import main

    root = tmp_path_factory.mktemp("ran")
    (root / "suite.toml").write_text(dump_toml(tiny_suite()))
    with pytest.MonkeyPatch.context() as patch:  # a module's fixture: before conftest's private cache per test
        patch.setenv("DDBENCH_CACHE", str(root / "cache"))
        assert main(["run", str(root / "suite.toml"), "--out", str(root / "runs"), "-q"]) == 0
    return root / "runs"


def _copy(runs: Path, to: Path) -> dict[str, Path]:
    """A copy of the records folder; the record of each method by its label."""
    import shutil

    shutil.copytree(runs, to)
    return {read_record(p).method: p for p in to.rglob("*.json")}


def _edit(path: Path, **fields) -> None:
    data = json.loads(path.read_text())
    data.update(fields)
    path.write_text(json.dumps(data))


def test_eval_refuses_a_set_that_is_not_the_records_before_any_work(ran, cli, tmp_path):
    records = _copy(ran, tmp_path / "runs")
    tbptt = records["tbptt"]
    code, out, err = cli("eval", tbptt, "--set", "models=1", "--set", "steps=2")  # intact: evaluated
    assert code == 0, err
    (evaluation,) = [p for p in files_under(tmp_path / "runs") if ".eval-" in p.name]
    assert json.loads(evaluation.read_text())["distilled_sha256"] == read_record(tbptt).distilled_sha256
    evaluation.unlink()
    distilled = tbptt.with_name(read_record(tbptt).distilled_file)
    data = torch.load(distilled, weights_only=True)
    data["images"] = data["images"] + 1.0  # another set under the same name
    torch.save(data, distilled)
    code, out, err = cli("eval", tmp_path / "runs", "--set", "models=1", "--set", "steps=2")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"ddbench: error: {tbptt}: distilled_sha256: ")
    assert not [p for p in files_under(tmp_path / "runs") if ".eval-" in p.name]  # nothing evaluated
    _edit(tbptt, distilled_file="../../elsewhere.pt")
    code, out, err = cli("eval", tbptt, "--set", "models=1", "--set", "steps=2")
    assert code == 2 and err.startswith(f"ddbench: error: {tbptt}: distilled_file: names '../../elsewhere.pt'"), err


def test_publish_leaves_out_a_record_that_does_not_hold_together_and_builds_the_rest(ran, cli, tmp_path):
    records = _copy(ran, tmp_path / "runs")
    (tmp_path / "outside.pt").write_bytes((ran.parent / "suite.toml").read_bytes())
    _edit(records["tbptt"], distilled_file="../../../../outside.pt")  # today: ValueError: Invalid name
    other = tmp_path / "runs2"
    records2 = _copy(ran, other)
    tampered = records2["random_real"]
    distilled = tampered.with_name(read_record(tampered).distilled_file)
    distilled.write_bytes(distilled.read_bytes() + b"\0")
    code, out, err = cli("publish", tmp_path / "runs", other, "--out", tmp_path / "site", "-q")
    assert code == 1 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 2  # one line per refused record, each naming it and the field
    assert lines[0] == (f"ddbench: refused: {records['tbptt']}: distilled_file: names '../../../../outside.pt': not "
                        "a file name in the record's folder")
    assert lines[1].startswith(f"ddbench: refused: {tampered}: distilled_sha256: its distilled set ")
    assert "records in 1 comparable groups" in out and "2 refused" in out
    site = tmp_path / "site"
    index = (site / "index.html").read_text()
    assert "2 run record(s) left out" in index and "outside.pt" in index
    assert "outside" not in "".join(p.name for p in files_under(site))  # nothing outside a folder was copied
    published = {json.loads(p.read_text())["method"] for p in (site / "runs").glob("*.json")}
    assert published == {"random_real", "tbptt"}  # each from the folder where it holds together


def test_publish_of_only_refused_records_says_so(ran, tmp_path):
    records = _copy(ran, tmp_path / "runs")
    for path in records.values():
        _edit(path, error_file="/etc/passwd")
    from harness.core.errors import DDBenchError

    with pytest.raises(DDBenchError, match="every run record was refused, e.g. .*error_file"):
        publish([tmp_path / "runs"], tmp_path / "site")


def test_publish_says_its_groups_and_re_evaluations(cli, tmp_path):
    write_json_atomic(tmp_path / "runs" / "a.json", make_record("tbptt", run_id="a"))
    write_json_atomic(tmp_path / "runs" / "b.json", make_record("tbptt", run_id="b", ipc=10))
    evaluation = {"schema_version": 2, "kind": "ddbench.eval", "eval_id": "e1", "of_run": "a", "record_file": "a.json",
                  "suite": "unit", "dataset": "digits", "ipc": 1, "method": "tbptt", "seed": 0,
                  "model": {"name": "resnet18"}, "eval": {"protocol": {"protocol": "standard"}, "accuracy_mean": 0.7,
                                                          "accuracy_std": 0.0, "accuracy_per_model": [0.7]},
                  "hardware": {"device_name": "x", "torch": "2", "torchopt": "0.7", "python": "3", "cpu_count": 2},
                  "started_at": "2024-01-02T00:00:00+00:00", "finished_at": "2024-01-02T00:01:00+00:00"}
    write_json_atomic(tmp_path / "runs" / "a.eval-e1.json", evaluation)
    code, out, err = cli("publish", tmp_path / "runs", "--out", tmp_path / "site", "-q")
    assert code == 0 and err == "", err
    assert out.startswith(f"site: {tmp_path / 'site'}/index.html (2 records in 2 comparable groups, 1 re-evaluations, "
                          "2 run pages, ")
