"""Boost-DD (methods/boost_dd.py): blocks, damping, layout, budget, checkpoints, and a digits run.

Most tests use a tiny synthetic 3-class problem and a 4-step unroll, so that a Boost-DD run of
a few outer steps takes well under a second; one test runs a suite on digits end to end.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import replace

import pytest
import torch

from harness.data import DatasetSplits
from harness.core.errors import ConfigError
from harness.method import DistillTask
from harness.models import ModelConfig
from harness.method.registry import create_method, validate_method_config

CLASSES = 3
BASE = {"unroll": 4, "window": 2, "real_batch": 32, "outer_lr": 0.01, "inner": {"name": "adam", "lr": 0.01}}


@pytest.fixture(scope="module")
def toy() -> DatasetSplits:
    gen = torch.Generator().manual_seed(0)
    means = torch.randn(CLASSES, 1, 8, 8, generator=gen)

    def split(n):
        y = torch.arange(CLASSES).repeat_interleave(n)
        return means[y] + 0.5 * torch.randn(len(y), 1, 8, 8, generator=gen), y

    (train_x, train_y), (test_x, test_y) = split(20), split(10)
    return DatasetSplits("toy", train_x, train_y, test_x, test_y, CLASSES, ("a", "b", "c"), {})


def make_task(data, ipc, steps, seed=0) -> DistillTask:
    return DistillTask(data=data, ipc=ipc, seed=seed, model=ModelConfig(width=8, depth=1), outer_steps=steps)


def boost(**cfg):
    """A Boost-DD method; the block mechanics below are checked on the split budget (a few outer
    steps cover every block), the default per-block budget by its own tests."""
    cfg.setdefault("base_config", BASE)
    cfg.setdefault("budget", "split")
    return create_method("boost_dd", **cfg)


def run(method, task, start=0, stop=None):
    stop = method.outer_steps(task) if stop is None else stop
    return [method.step(s) for s in range(start, stop)]


def rows_of(distilled, positions):
    """Rows of the given positions of every class (class-major)."""
    return (torch.arange(distilled.num_classes)[:, None] * distilled.ipc + torch.as_tensor(positions)).flatten()


# ---------------------------------------------------------------------------------- equivalences


@pytest.mark.parametrize("base_extra", [{}, {"init": "real", "learn_labels": True, "learn_lr": True}])
def test_one_block_is_the_base_method(toy, base_extra):
    """K = 1: the same images as the base method, bit for bit.

    Boost-DD with one block calls the base's setup with the base's own init and no update
    scale, then the base's step(t) for the same t: the same operations on the same inputs.
    """
    base_cfg = {**BASE, **base_extra}
    task = make_task(toy, ipc=2, steps=4)
    direct = create_method("rat_bptt", **base_cfg)
    direct.setup(task)
    run(direct, task)
    for layout in ({"blocks": 1}, {"block_ipc": 2}):
        boosted = boost(base_config=base_cfg, **layout)
        boosted.setup(task)
        assert boosted.outer_steps(task) == 4
        run(boosted, task)
        a, b = direct.distilled(), boosted.distilled()
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and a.lr == b.lr
        assert torch.equal(b.blocks, torch.zeros(2 * CLASSES, dtype=torch.int64))
    assert not torch.equal(a.images, _initial_images(base_cfg, task))  # guard: the steps did move the images


def _initial_images(base_cfg, task):
    m = create_method("rat_bptt", **base_cfg)
    m.setup(task)
    return m.distilled().images


def test_first_block_is_a_direct_run_at_block_ipc(toy):
    """With real init and beta = 0, block 0 of the final set is exactly a direct base run at IPC b.

    The whole set's real init draws the first b of the same per-class permutation as a direct
    run at IPC b, and block 0 takes the first b positions of every class (the layout check).
    """
    base_cfg = {**BASE, "init": "real"}
    boosted = boost(block_ipc=2, beta=0.0, base_config=base_cfg)
    task = make_task(toy, ipc=6, steps=9)  # 3 steps per block
    boosted.setup(task)
    run(boosted, task)
    final = boosted.distilled()
    direct = create_method("rat_bptt", **base_cfg)
    small = replace(task, ipc=2, outer_steps=3)
    direct.setup(small)
    run(direct, small)
    assert torch.equal(final.images[rows_of(final, [0, 1])], direct.distilled().images)
    assert torch.equal(final.blocks, torch.tensor([0, 0, 1, 1, 2, 2] * CLASSES))
    assert torch.equal(final.labels, final.hard_labels)


# ---------------------------------------------------------------------------------- damping


def test_beta_zero_freezes_earlier_blocks(toy):
    """beta = 0: once its block is over, a block's images and learned soft labels never change."""
    base_cfg = {**BASE, "learn_labels": True}
    m = boost(block_ipc=1, beta=0.0, base_config=base_cfg)
    task = make_task(toy, ipc=3, steps=6)  # blocks run steps [0, 2), [2, 4), [4, 6)
    m.setup(task)
    init = m.distilled()
    snapshots = []
    for s in range(6):
        m.step(s)
        if s % 2 == 1:
            snapshots.append(m.distilled())
    final = snapshots[-1]
    for k in range(3):
        rows = rows_of(final, [k])
        assert not torch.equal(snapshots[k].images[rows], init.images[rows])  # block k was optimized...
        assert not torch.equal(snapshots[k].labels[rows], init.labels[rows])
        assert torch.equal(final.images[rows], snapshots[k].images[rows])  # ...and then frozen
        assert torch.equal(final.labels[rows], snapshots[k].labels[rows])
    assert m.summary() == {"base": "rat_bptt", "blocks": 3, "block_ipc": 1, "beta": 0.0, "budget": "split",
                           "steps_per_block": [2, 2, 2], "base_summary": {}}


def test_small_beta_moves_earlier_blocks_less(toy):
    """0 < beta < 1: earlier blocks still move, about beta times as far as the new block."""
    m = boost(blocks=2, beta=0.1)
    task = make_task(toy, ipc=4, steps=8)
    m.setup(task)
    run(m, task, stop=4)
    mid = m.distilled()
    run(m, task, start=4)
    final = m.distilled()
    moved = (final.images - mid.images).flatten(1).norm(dim=1)
    old, new = moved[rows_of(final, [0, 1])], moved[rows_of(final, [2, 3])]
    assert old.min() > 0
    assert old.mean() < 0.3 * new.mean()


def test_learned_inner_lr_carries_over_to_the_next_block(toy):
    """Block 1 starts from block 0's learned lr: its first outer Adam step moves log(lr) by exactly lr_outer_lr."""
    m = boost(blocks=2, base_config={**BASE, "learn_lr": True, "lr_outer_lr": 0.05})
    task = make_task(toy, ipc=2, steps=4)
    m.setup(task)
    run(m, task, stop=2)
    end_of_block0 = m.distilled().lr
    assert abs(math.log(end_of_block0 / 0.01)) > 0.09  # block 0 moved it away from the config's lr
    m.step(2)
    assert abs(abs(math.log(m.distilled().lr / end_of_block0)) - 0.05) < 1e-4


# ---------------------------------------------------------------------------------- budget


def test_default_budget_is_a_full_run_per_block_as_the_paper(toy):
    """The paper distils every block as a run of its own: K blocks cost K direct runs."""
    m = create_method("boost_dd", block_ipc=1, base_config=BASE)
    task = make_task(toy, ipc=3, steps=5)
    assert m.config.budget == "per_block"
    assert m.block_steps(task) == [5, 5, 5] and m.outer_steps(task) == 15


def test_budget_split_and_per_block(toy):
    task = make_task(toy, ipc=3, steps=5)
    assert boost(block_ipc=1).block_steps(task) == [2, 2, 1]
    assert boost(block_ipc=1, budget="per_block").block_steps(task) == [5, 5, 5]
    assert boost(block_ipc=1, budget="per_block").outer_steps(task) == 15


def test_fewer_steps_than_blocks_keeps_later_blocks_at_init(toy):
    m = boost(block_ipc=1)
    task = make_task(toy, ipc=3, steps=1)  # blocks get [1, 0, 0] steps
    m.setup(task)
    init = m.distilled()
    run(m, task)
    final = m.distilled()
    assert final.ipc == 3 and not torch.equal(final.images[rows_of(final, [0])], init.images[rows_of(final, [0])])
    assert torch.equal(final.images[rows_of(final, [1, 2])], init.images[rows_of(init, [1, 2])])


# ---------------------------------------------------------------------------------- configs


@pytest.mark.parametrize("cfg, ipc, field", [
    ({"block_ipc": 2}, 3, "block_ipc"),
    ({"blocks": 2}, 3, "blocks"),
    ({"blocks": 4}, 3, "blocks"),
])
def test_ipc_not_a_whole_number_of_blocks(toy, cfg, ipc, field):
    m = boost(**cfg)
    with pytest.raises(ConfigError, match="whole number of blocks") as err:
        m.setup(make_task(toy, ipc=ipc, steps=2))
    assert err.value.field == field


@pytest.mark.parametrize("cfg, field, message", [
    ({"beta": 1.5}, "beta", r"beta must be in \[0, 1\]"),
    ({"beta": -0.1}, "beta", r"beta must be in \[0, 1\]"),
    ({"base": "no_such_method"}, "base", "unknown method 'no_such_method'"),
    ({"base": "random_real"}, "base", "unrolls inner training"),
    ({"block_ipc": 0}, "block_ipc", "must be >= 1"),
    ({"blocks": 0}, "blocks", "must be >= 1"),
    ({"blocks": 2, "block_ipc": 1}, "blocks", "exclude each other"),
    ({"base_config": {"window": 9, "unroll": 4}}, "base_config", r"window \(9\) must be <= unroll \(4\)"),
    ({"base_config": {"no_such_field": 1}}, "base_config", "unknown field"),
    ({"steps": 3}, "steps", "unknown field"),
])
def test_invalid_configs_name_their_field(cfg, field, message):
    with pytest.raises(ConfigError, match=message) as err:
        validate_method_config("boost_dd", cfg)
    assert err.value.field == field


def test_config_round_trips_with_base_defaults_filled_in():
    cfg = validate_method_config("boost_dd", {"blocks": 2, "base_config": {"window": 3, "unroll": 5}})
    assert cfg.base_config["window"] == 3 and cfg.base_config["real_batch"] == 5000  # a rat_bptt default
    assert validate_method_config("boost_dd", cfg.model_dump(mode="json")) == cfg  # the runner re-creates it so


# ---------------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("resume_at", [2, 3, 4])  # mid block 0, at the block boundary, mid block 1
def test_checkpoint_resumes_exactly(toy, resume_at):
    """state_dict after step s-1, through torch.save, into a fresh method: the same result as no stop."""
    base_cfg = {**BASE, "learn_labels": True, "learn_lr": True}
    task = make_task(toy, ipc=4, steps=6)
    straight = boost(blocks=2, beta=0.3, base_config=base_cfg)
    straight.setup(task)
    run(straight, task)

    first = boost(blocks=2, beta=0.3, base_config=base_cfg)
    first.setup(task)
    run(first, task, stop=resume_at)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = boost(blocks=2, beta=0.3, base_config=base_cfg)
    resumed.setup(task)
    resumed.load_state_dict(torch.load(buf, weights_only=False))
    run(resumed, task, start=resume_at)
    a, b = straight.distilled(), resumed.distilled()
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and a.lr == b.lr
    assert straight.block == resumed.block == 1


# ---------------------------------------------------------------------------------- end to end


SUITE = """
[suite]
name = "boost-e2e"
[grid]
datasets = ["digits"]
ipcs = [1, 2]
seeds = [0]
[hardware]
device = "cpu"
threads = 1  # tiny networks: one thread avoids OpenMP's overhead (restored after the test)
[budget]
outer_steps = 4
[model]
width = 16
depth = 1
[eval]
models = 1
steps = 20
optimizer = { name = "adam", lr = 0.01 }
augment = { ops = [] }
[subsets]
enabled = true
draws = 1
models = 1
[method_defaults]  # reach rat_bptt directly and boost_dd's base through base_config
real_batch = 128
outer_lr = 0.01
init = "real"
inner = { name = "adam", lr = 0.01 }
[methods.rat_bptt]
unroll = 4
window = 2
[methods.boost_dd]
block_ipc = 1
beta = 0.1
budget = "split"
base_config = { unroll = 4, window = 2 }
"""


@pytest.mark.slow
def test_digits_suite_end_to_end_with_subset_curves(tmp_path):
    """A suite on digits through the runner: records, Boost-DD summary, subset curves and their table."""
    from harness.run import runner
    from harness.report.records import iter_records
    from harness.report.views.subsets import subset_table
    from harness.run.suite import load_suite

    path = tmp_path / "suite.toml"
    path.write_text(SUITE)
    threads = torch.get_num_threads()
    try:
        runner.run_suite(load_suite(path), tmp_path / "out", progress=False)
    finally:
        torch.set_num_threads(threads)
    records = {(r["method"], r["ipc"]): r for _, r in iter_records(tmp_path / "out")}
    assert len(records) == 4

    boosted = records[("boost_dd", 2)]
    assert boosted["distill"]["method_summary"] == {"base": "rat_bptt", "blocks": 2, "block_ipc": 1, "beta": 0.1,
                                                     "budget": "split", "steps_per_block": [2, 2], "base_summary": {}}
    assert [h["block"] for h in boosted["distill"]["history"]] == [0, 0, 1, 1]
    base_config = boosted["method_config"]["base_config"]  # [method_defaults] reached the base
    assert (base_config["real_batch"], base_config["init"], base_config["outer_lr"]) == (128, "real", 0.01)
    for r in records.values():
        assert r["status"] == "ok" and 0.1 < r["eval"]["accuracy_mean"] <= 1
    curve = boosted["subset_curve"]["curve"]
    assert [(e["kind"], e["size"], e["positions"]) for e in curve] == [
        ("block_prefix", 1, [0]), ("prefix", 1, [0]), ("random", 1, curve[2]["positions"]), ("full", 2, [0, 1])]
    assert curve[0]["accuracy_per_model"] == curve[1]["accuracy_per_model"]  # the same subset, evaluated once
    assert [e["kind"] for e in records[("rat_bptt", 1)]["subset_curve"]["curve"]] == ["full"]  # nothing smaller
    json.dumps(boosted.model_dump(mode="json"))

    table = subset_table(list(records.values()))
    assert "digits, boost_dd IPC 2" in table and "digits, rat_bptt IPC 2" in table
    assert "direct rat_bptt" in table
    direct = records[("rat_bptt", 1)]["eval"]["accuracy_mean"]
    assert f"{100 * direct:.2f}" in table


def test_suite_with_an_ipc_that_is_not_whole_blocks_fails_before_writing(tmp_path):
    from harness.run.runner import run_suite
    from harness.run.suite import load_suite

    path = tmp_path / "suite.toml"
    path.write_text(SUITE.replace("ipcs = [1, 2]", "ipcs = [3]").replace("block_ipc = 1", "block_ipc = 2"))
    with pytest.raises(ConfigError, match="whole number of blocks") as err:
        run_suite(load_suite(path), tmp_path / "out", progress=False)
    assert "block_ipc" in str(err.value)
    assert not list((tmp_path / "out").rglob("*.json"))


def test_a_base_that_cannot_hold_rows_fixed_is_refused_before_any_work(tmp_path):
    """A linear basis shares its basis images across rows, so Boost-DD's beta cannot damp the
    earlier blocks: the suite is refused at its check, before the first cell writes anything
    (it used to fail at block 2, after block 1's distillation and checkpoints)."""
    from harness.run.runner import run_suite
    from harness.run.suite import load_suite

    path = tmp_path / "suite.toml"
    path.write_text(SUITE.replace("base_config = { unroll = 4, window = 2 }",
                                  'base_config = { unroll = 4, window = 2, parameterization = '
                                  '{ kind = "linear_basis", bases = 2 } }'))
    with pytest.raises(ConfigError) as err:
        run_suite(load_suite(path), tmp_path / "out", progress=False)
    assert err.value.field == "methods.boost_dd.base_config.parameterization" and "IPC 2" in str(err.value)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*"))


def test_summary_keeps_the_base_methods_summary(toy):
    method = create_method("boost_dd", blocks=2, base="at_bptt", budget="split",
                           base_config={"unroll": 4, "window": 2, "window_delta": 1, "real_batch": 32})
    method.setup(make_task(toy, ipc=2, steps=2))
    for step in range(2):
        method.step(step)
    summary = method.summary()
    assert summary["base"] == "at_bptt" and summary["base_summary"]["final_stage"] in ("early", "middle", "late")
    assert sum(summary["base_summary"]["start_histogram"].values()) == 1  # the second block's one step


def test_blocks_with_k_trajectories_step_on_the_base_methods_batched_mean(toy):
    """``engine.trajectories`` of the base method reaches every block: a block's first step equals
    the base method's own K-trajectory step on the same prefix."""
    base_cfg = {**BASE, "engine": {"mode": "recompute", "trajectories": 2}}
    task = make_task(toy, ipc=2, steps=4)
    direct = create_method("rat_bptt", **base_cfg)
    direct.setup(task)
    boosted = boost(base_config=base_cfg, blocks=1)
    boosted.setup(task)
    a, b = direct.step(0), boosted.step(0)
    assert a["unroll"] == b["unroll"] and a["grad_norm"] == b["grad_norm"]
    assert len(boosted.base.step_plan.unrolls) == 2
