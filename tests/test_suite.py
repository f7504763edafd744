"""Suite files: how defaults, per-IPC overrides and aliases combine, cells, run ids, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import tiny_suite
from harness.core.errors import ConfigError, DDBenchError
from harness.method.registry import list_methods
from harness.run.suite import load_suite

REPO = Path(__file__).resolve().parents[1]


def test_smoke_suite_loads_with_its_data_checked():
    suite = load_suite(REPO / "suites" / "smoke.toml")
    assert suite.name == "smoke"
    labels = list(suite.spec.methods)
    assert "random_real" in labels and set(labels) <= set(list_methods()) | set(labels)
    cells = suite.cells()
    grid = suite.spec.grid
    assert len(cells) == len(grid.datasets) * len(grid.ipcs) * len(labels) * len(grid.seeds)
    assert len({c.run_id for c in cells}) == len(cells)  # no two cells share files


def test_method_defaults_go_only_to_methods_with_that_field(write_suite):
    data = tiny_suite(method_defaults={"real_batch": 7, "inner": {"name": "sgd", "lr": 0.5}})
    data["methods"]["tbptt"]["inner"] = {"lr": 0.25}  # merged key by key with the default
    data["methods"]["bptt"] = {"unroll": 2, "real_batch": 9}  # the method's own value wins
    suite = load_suite(write_suite(data))
    tbptt, bptt = suite.method_configs[("tbptt", 1)], suite.method_configs[("bptt", 1)]
    assert tbptt.real_batch == 7 and bptt.real_batch == 9
    assert (tbptt.inner.name, tbptt.inner.lr) == ("sgd", 0.25)
    assert (bptt.inner.name, bptt.inner.lr) == ("sgd", 0.5)
    assert suite.method_configs[("random_real", 1)].model_dump() == {}


def test_by_ipc_overrides_apply_to_their_ipc_only(write_suite):
    data = tiny_suite(grid={"datasets": ["digits"], "ipcs": [1, 10]})
    data["methods"]["tbptt"]["by_ipc"] = {"10": {"unroll": 8, "inner": {"lr": 0.5}}}
    data["budget"]["by_ipc"] = {"10": {"outer_steps": 7}}
    suite = load_suite(write_suite(data))
    one, ten = suite.method_configs[("tbptt", 1)], suite.method_configs[("tbptt", 10)]
    assert (one.unroll, one.window, one.inner.lr) == (3, 2, 0.01)
    assert (ten.unroll, ten.window, ten.inner.lr) == (8, 2, 0.5)
    assert ten.inner.name == "sgd"  # the default's other keys survive the nested override
    steps = {c.ipc: c.budget.outer_steps for c in suite.cells()}
    assert steps == {1: 2, 10: 7}


def test_a_label_can_name_another_registered_method(write_suite):
    data = tiny_suite()
    data["methods"]["tbptt_short"] = {"method": "tbptt", "unroll": 2, "window": 1}
    suite = load_suite(write_suite(data))
    cell = next(c for c in suite.cells() if c.method_label == "tbptt_short")
    assert cell.method == "tbptt" and cell.method_config.unroll == 2
    assert cell.run_id != next(c for c in suite.cells() if c.method_label == "tbptt").run_id


def test_cells_order_and_selection(write_suite):
    data = tiny_suite(grid={"datasets": ["digits"], "ipcs": [10, 1], "seeds": [3, 0]})
    suite = load_suite(write_suite(data))
    cells = suite.cells()
    assert [(c.ipc, c.method_label, c.seed) for c in cells] == [
        (ipc, m, s) for ipc in (10, 1) for m in ("random_real", "tbptt") for s in (3, 0)]
    assert {c.method_label for c in suite.cells(suite.select_methods(["tbptt", "tbptt"]))} == {"tbptt"}


def test_run_id_is_stable_and_depends_on_what_changes_results(write_suite):
    a = load_suite(write_suite(tiny_suite(), "a.toml")).cells()
    again = load_suite(write_suite(tiny_suite(), "again.toml")).cells()
    assert [c.run_id for c in a] == [c.run_id for c in again]
    changed = tiny_suite(eval={**tiny_suite()["eval"], "steps": 4})
    assert all(x.run_id != y.run_id for x, y in zip(a, load_suite(write_suite(changed, "b.toml")).cells()))
    slower_ckpt = tiny_suite(budget={**tiny_suite()["budget"], "checkpoint_minutes": 99.0})
    assert [c.run_id for c in load_suite(write_suite(slower_ckpt, "c.toml")).cells()] == [c.run_id for c in a]


def test_load_suite_errors_carry_file_and_field(write_suite):
    path = write_suite(tiny_suite(grid={"datasets": ["digits"], "ipcs": [1], "seeds": [0, 0]}))
    with pytest.raises(ConfigError) as exc:
        load_suite(path)
    assert (exc.value.file, exc.value.field) == (str(path), "grid.seeds")
    assert str(exc.value).startswith(f"{path}: grid.seeds: ")


def test_check_data_false_skips_only_the_dataset_roots(write_suite, tmp_path):
    data = tiny_suite(grid={"datasets": ["mnist"], "ipcs": [1]}, data={"mnist": {"root": str(tmp_path / "none")}})
    path = write_suite(data)
    with pytest.raises(DDBenchError):
        load_suite(path)
    assert load_suite(path, check_data=False).datasets["mnist"].root == str(tmp_path / "none")


def test_data_name_cannot_be_set_in_its_table(write_suite):
    path = write_suite(tiny_suite(data={"digits": {"name": "mnist"}}))
    with pytest.raises(ConfigError) as exc:
        load_suite(path)
    assert exc.value.field == "data.digits.name"


def test_a_default_engine_leaves_trajectories_out_of_the_run_id():
    """Fields added after records were written stay out of the dumped config (the run id's input)
    at the default that reproduces those records, so earlier records are still found."""
    from harness.method.unrolled import EngineConfig
    assert "trajectories" not in EngineConfig().model_dump()
    assert EngineConfig(trajectories=4).model_dump()["trajectories"] == 4
    assert EngineConfig(**EngineConfig().model_dump()) == EngineConfig()



def suite_file(folder: str) -> Path | None:
    """The suite a committed results folder came from (``smoke-cpu``: the smoke suite run on a CPU)."""
    for name in (folder, folder.removesuffix("-cpu")):
        if (REPO / "suites" / f"{name}.toml").exists():
            return REPO / "suites" / f"{name}.toml"
    return None


COMMITTED = sorted(p.name for p in (REPO / "results").iterdir() if p.is_dir() and suite_file(p.name))


@pytest.mark.parametrize("folder", COMMITTED)
def test_committed_records_have_the_run_ids_their_suite_gives_today(folder):
    """A committed record is found again by ``ddbench run`` (same run id): a config change that
    moves the run ids of published records fails here, not silently in a user's rerun."""
    from harness.report.records import iter_records
    suite = load_suite(suite_file(folder), check_data=False)
    cells = {(c.dataset.name, c.ipc, c.method_label, c.seed): c.run_id for c in suite.cells()}
    records = list(iter_records(REPO / "results" / folder))
    assert records
    for path, record in records:
        key = (record.dataset, record.ipc, record.method, record.seed)
        assert cells.get(key) == record.run_id, f"{path.relative_to(REPO)}: run id no longer matches its suite cell"
