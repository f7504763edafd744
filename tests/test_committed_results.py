"""Committed results are reproducible from one commit: every run record under ``results/`` was
written from a clean tree (``provenance.git.dirty`` false), all records of one results folder
come from one commit, and none names a path of the machine that wrote it.

These check the committed files, not the code: after a change they fail until the results are
regenerated (a clean tree, one commit, ``ddbench run``). While that is pending, and only then,
``DDBENCH_ALLOW_STALE_RESULTS=1`` skips them; never by default.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from harness.core.provenance import git_state
from harness.report.records import iter_eval_records, iter_records

REPO = Path(__file__).resolve().parents[1]
FOLDERS = sorted(p for p in (REPO / "results").iterdir() if p.is_dir() and any(iter_records(p)))
STALE = pytest.mark.skipif(os.environ.get("DDBENCH_ALLOW_STALE_RESULTS") == "1",
                           reason="DDBENCH_ALLOW_STALE_RESULTS=1: committed results awaiting regeneration")


def _records(folder: Path) -> list:
    return [*iter_records(folder), *iter_eval_records(folder)]


def _strings(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)
    elif isinstance(obj, str):
        yield obj


def test_there_are_committed_results():
    assert FOLDERS, "no results/<suite>/ folder holds run records"


@STALE
@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_committed_records_come_from_one_clean_commit(folder):
    commits, dirty, unknown = set(), [], []
    for path, record in _records(folder):
        git = record.provenance.git if record.provenance is not None else None
        if not git or not git.get("commit"):
            unknown.append(path.relative_to(REPO).as_posix())
            continue
        commits.add(git["commit"])
        if git.get("dirty") is not False:
            dirty.append(path.relative_to(REPO).as_posix())
    assert not unknown, f"records without a git commit: {unknown}"
    assert not dirty, f"records written from a dirty tree: {dirty}"
    assert len(commits) == 1, f"{folder.name} spans {len(commits)} commits: {sorted(c[:12] for c in commits)}"


@STALE
@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_committed_records_name_no_path_of_the_machine_that_wrote_them(folder):
    for path, record in _records(folder):
        data = record.model_dump(mode="json")
        given_root = (data.get("dataset_config") or {}).get("root")  # the suite's own words
        absolute = [s for s in _strings({k: v for k, v in data.items() if k != "dataset_config"})
                    if os.path.isabs(s) and s != given_root]
        assert not absolute, f"{path.relative_to(REPO)}: absolute paths {absolute}"


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t"})


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A git checkout laid out like ddbench's: harness/ and methods/ committed, results/ ignored."""
    root = tmp_path / "ddbench"
    for name in ("harness/__init__.py", "methods/tbptt.py", "README.md"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("# committed\n")
    (root / ".gitignore").write_text("results/runs/\n")
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "base")
    return root


def test_a_changed_tracked_file_makes_the_tree_dirty(checkout):
    assert git_state(checkout)["dirty"] is False
    (checkout / "methods" / "tbptt.py").write_text("# changed\n")
    assert git_state(checkout)["dirty"] is True


def test_ignored_outputs_leave_the_tree_clean(checkout):
    (checkout / "results" / "runs").mkdir(parents=True)
    (checkout / "results" / "runs" / "r.json").write_text("{}")
    assert git_state(checkout)["dirty"] is False


def test_an_untracked_method_makes_the_tree_dirty(checkout):
    """A method file not yet added (the registry imports every module of methods/) changes what runs."""
    (checkout / "methods" / "new_method.py").write_text("# not committed\n")
    assert git_state(checkout)["dirty"] is True
