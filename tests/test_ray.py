"""The Ray executor with a local instance (2 CPUs): the same records as the local executor, a
worker killed in the middle of a cell retried from its checkpoint, the storage check."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray")

from conftest import assert_same_result, dump_toml, tiny_suite  # noqa: E402
from harness.method import METHODS, DistilledSet  # noqa: E402
from harness.report import iter_records  # noqa: E402
from harness.run.cell import cell_paths  # noqa: E402
from harness.run.ray_executor import _storage_probe  # noqa: E402
from harness.run.suite import load_suite  # noqa: E402

pytestmark = pytest.mark.slow

KILLER = '''"""TBPTT whose process is killed (SIGKILL) once, at outer step 3: a preempted node."""
import os, signal
from pathlib import Path
from harness import register_method
from methods.tbptt import TBPTT


@register_method("killer_tbptt")
class KillerTBPTT(TBPTT):
    """TBPTT that kills its own process once, at outer step 3 (a test of retries)."""

    tiny_config = None

    def step(self, step):
        marker = Path(os.environ["DDBENCH_TEST_KILL_MARKER"])
        if step == 3 and not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        with open(marker.with_suffix(".steps"), "a") as log:
            log.write(f"{os.getpid()} {step}\\n")
        return super().step(step)
'''


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """One local Ray instance for the module; its workers import the test plug-in (DDBENCH_PLUGINS)."""
    root = tmp_path_factory.mktemp("ray")
    (root / "ddbench_test_killer.py").write_text(KILLER)
    env = {"PYTHONPATH": os.pathsep.join([str(root), str(Path(__file__).resolve().parents[1]),
                                          os.environ.get("PYTHONPATH", "")]),
           "DDBENCH_PLUGINS": "ddbench_test_killer", "DDBENCH_TEST_KILL_MARKER": str(root / "killed"),
           "DDBENCH_CACHE": str(root / "cache")}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    sys.path.insert(0, str(root))
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": env})
    try:
        with METHODS.scoped():
            yield root
    finally:
        ray.shutdown()
        sys.path.remove(str(root))
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _comparable(record) -> dict:
    """What must not depend on the executor: every result, not timings or provenance."""
    data = record.model_dump(mode="json")
    for key in ("started_at", "finished_at", "provenance", "hardware"):
        data.pop(key)
    for key in ("wall_clock_s", "seconds_per_outer_step", "median_seconds_per_outer_step", "peak_memory_bytes",
                "setup_seconds"):
        data["distill"].pop(key)
    summary = data["distill"]["method_summary"]  # a method's own timings (random_real's selection_seconds)
    data["distill"]["method_summary"] = {k: v for k, v in summary.items() if not k.endswith("_seconds")}
    if data.get("hardness"):
        data["hardness"].pop("cache_file")
    if data.get("scores"):
        data["scores"].pop("full_data_cache")
    return data


def test_ray_gives_the_records_of_the_local_executor(local_ray, write_suite, cli, tmp_path):
    suite = tiny_suite(grid={"datasets": ["digits"], "ipcs": [1, 2], "seeds": [0]},
                       methods={"random_real": {}, "rat_bptt": {"unroll": 4, "window": 2},
                                "boost_dd": {"blocks": 1, "base_config": {"unroll": 4, "window": 2}}},
                       subsets={"enabled": True, "draws": 1, "models": 1}, hardness={"epochs": 3})
    path = write_suite(suite)
    assert cli("run", path, "--out", tmp_path / "local", "-q")[0] == 0
    code, out, err = cli("run", path, "--out", tmp_path / "ray", "-q", "--executor", "ray", "--cpus-per-cell", "1")
    assert code == 0, err
    assert "6 done" in out
    for cell in load_suite(path).cells():
        local, remote = (next(r for p, r in iter_records(tmp_path / root) if r.run_id == cell.run_id)
                         for root in ("local", "ray"))
        assert _comparable(remote) == _comparable(local), cell.method_label
        a, b = (DistilledSet.load(cell_paths(tmp_path / root, cell)["distilled"]) for root in ("local", "ray"))
        assert torch.equal(a.images, b.images)


def test_a_killed_worker_is_retried_and_resumes_from_its_checkpoint(local_ray, write_suite, cli, tmp_path):
    import ddbench_test_killer  # noqa: F401  (registers killer_tbptt in this process too)

    marker = local_ray / "killed"
    steps_log = marker.with_suffix(".steps")
    suite = tiny_suite(methods={"killer_tbptt": {"unroll": 4, "window": 2}},
                       budget={"outer_steps": 6, "checkpoint_minutes": 1e-9})
    path = write_suite(suite)
    cell = load_suite(path).cells()[0]
    # The reference: no kill (the marker exists already), run locally.
    marker.write_text("reference")
    assert cli("run", path, "--out", tmp_path / "reference", "-q")[0] == 0
    marker.unlink()
    steps_log.unlink()
    code, out, err = cli("run", path, "--out", tmp_path / "ray", "-q", "--executor", "ray", "--max-retries", "2")
    assert code == 0, err
    assert "1 done" in out and marker.exists()  # the first attempt was killed at step 3
    attempts = [line.split() for line in steps_log.read_text().splitlines()]
    pids = [pid for pid, _ in attempts]
    assert [int(s) for _, s in attempts] == list(range(6))  # every step once: the retry resumed at step 3
    assert pids[:3] == [marker.read_text()] * 3 and len(set(pids[3:])) == 1 and pids[3] != pids[0]
    assert_same_result(tmp_path / "reference", tmp_path / "ray", cell)


def test_the_storage_probe_reports_a_node_that_cannot_see_the_folder(tmp_path):
    token = tmp_path / ".token"
    assert "FileNotFoundError" in _storage_probe(str(token), "abc")  # not shared: the node does not see it
    token.write_text("other")
    assert "another file" in _storage_probe(str(token), "abc")
    token.write_text("abc")
    assert _storage_probe(str(token), "abc") is None and sorted(tmp_path.iterdir()) == [token]


def test_ray_options_are_validated(write_suite, cli, tmp_path):
    path = write_suite(tiny_suite())
    code, _, err = cli("run", path, "--out", tmp_path / "out", "--executor", "ray", "--gpus-per-cell", "-1")
    assert code == 2 and "gpus_per_cell" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli("run", path, "--out", tmp_path / "out", "--max-retries", "2")
    assert code == 2 and "--executor" in err
    # Also with a live log (which picks the local executor itself): never silently ignored.
    code, _, err = cli("run", path, "--out", tmp_path / "out", "--max-retries", "2", "--log", "tensorboard",
                       tmp_path / "tb")
    assert code == 2 and "--executor" in err and not (tmp_path / "out").exists()
    bad = dump_toml(tiny_suite(hardware={"device": "cpu", "ray": {"gpus_per_cell": "all"}}))
    code, _, err = cli("run", write_suite(bad, "bad.toml"), "--out", tmp_path / "out")
    assert code == 2 and "hardware.ray.gpus_per_cell" in err
