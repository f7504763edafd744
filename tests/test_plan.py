"""``ddbench plan``'s count of the analyses' work, checked against the analyses themselves: the
anytime curve's evaluations (its own ``during`` hook driven step by step), the subsets'
evaluations (its own ``run``), the hardness scoring run once per cache file and none once cached."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from conftest import dump_toml, tiny_suite
from harness.evaluation.analysis import DistillContext
from harness.evaluation.anytime import Anytime, AnytimeConfig
from harness.evaluation import EvalResult, StandardConfig
from harness.evaluation.subsets import SubsetEvalConfig, Subsets
from harness.method import DistilledSet
from harness.run.plan import AnalysisCost, Probe, anytime_points, distill_seconds
from harness.run.suite import load_suite


def _fake_result(*args, **kwargs) -> EvalResult:
    return EvalResult([0.5], torch.zeros(1, 4, dtype=torch.bool))


def _points_made(cfg: AnytimeConfig, per_step: float, reached: int, left: int) -> int:
    """The evaluations Anytime.during makes over those steps and the end (its own logic, evaluate stubbed)."""
    method = SimpleNamespace(distilled=lambda: None)
    task = SimpleNamespace(data=None, model=None, seed=0, device="cpu", dtype=torch.float32)
    state, made = {}, 0
    if cfg.every_minutes:  # a resumed run's state says when the next timed point is due
        every = cfg.every_minutes * 60
        state["next_s"] = (math.floor(reached * per_step / every) + 1) * every
    for step in range(reached + 1, reached + left + 1):
        new = Anytime().during(cfg, state, DistillContext(task, method, step, step * per_step))
        if new is not None:
            state, made = new, made + 1
    end = reached + left
    made += Anytime().during(cfg, state, DistillContext(task, method, end, end * per_step, final=True)) is not None
    return made


@pytest.mark.parametrize("every_steps, every_minutes, per_step, reached, left", [
    (10, None, 1.0, 0, 100), (10, None, 1.0, 0, 95), (7, None, 0.5, 20, 50), (None, 1.0, 7.0, 0, 60),
    (None, 0.5, 4.0, 13, 40), (25, 2.0, 3.0, 0, 100), (1, None, 1.0, 0, 5), (50, None, 1.0, 0, 10),
])
def test_anytime_points_are_the_evaluations_the_curve_makes(every_steps, every_minutes, per_step, reached, left,
                                                            monkeypatch):
    import harness.evaluation.anytime as anytime

    monkeypatch.setattr(anytime, "evaluate", _fake_result)
    cfg = AnytimeConfig(enabled=True, every_steps=every_steps, every_minutes=every_minutes)
    made = _points_made(cfg, per_step, reached, left)
    counted = anytime_points(cfg, per_step, reached, left)
    if every_steps and every_minutes:  # both due at once is one evaluation: the plan counts at most one more
        assert made <= counted <= made + left // every_steps
    else:
        assert counted == made


def test_distill_seconds_stop_at_the_step_or_minutes_budget(write_suite):
    steps = load_suite(write_suite(tiny_suite(budget={"outer_steps": 100, "checkpoint_minutes": 10.0}))).cells()[1]
    assert distill_seconds(steps, 0.5, 0, 100) == (50.0, 100) and distill_seconds(steps, 0.5, 40, 100) == (30.0, 60)
    assert distill_seconds(steps, 0.5, 0, 200) == (100.0, 200)  # the method's steps (Boost-DD: per block)
    assert distill_seconds(steps, 0.0, 0, 0) == (0.0, 0)  # a method that takes no step
    both = load_suite(write_suite(tiny_suite(budget={"outer_steps": 100, "minutes": 0.5}), "b.toml")).cells()[1]
    assert distill_seconds(both, 1.0, 0, 100) == (30.0, 30)  # the minutes end it first
    until = load_suite(write_suite(tiny_suite(budget={"outer_steps": 0, "minutes": 1.0}), "u.toml")).cells()[1]
    assert distill_seconds(until, 2.0, 10, 0) == (40.0, 20)


def test_subsets_are_counted_as_the_evaluations_the_analysis_makes(monkeypatch):
    import harness.evaluation.subsets as subsets

    calls = []
    monkeypatch.setattr(subsets, "evaluate", lambda d, *a, **k: calls.append(d.images.shape[0]) or _fake_result())
    blocks = torch.arange(2).repeat_interleave(3).repeat(2)  # 2 classes x IPC 6 in 2 blocks of 3
    distilled = DistilledSet(torch.zeros(12, 1, 4, 4), torch.arange(2).repeat_interleave(6), 2, 6, blocks=blocks)
    cfg = SubsetEvalConfig(enabled=True, sizes=[1, 3, 5], draws=2, models=2)
    protocol = StandardConfig(models=5, steps=10)
    ctx = SimpleNamespace(distilled=distilled, data=None, protocol=protocol, model=None, seed=3, device="cpu",
                          dtype=torch.float32, progress=False,
                          eval_result=SimpleNamespace(accuracy_mean=0.5, accuracy_std=0.0, accuracy_per_model=[0.5]))
    Subsets().run(cfg, ctx)
    cell = SimpleNamespace(eval=protocol, seed=3)
    probe = Probe(0.0, 1.0, 10, 0.0, per_update=1.0, distilled=distilled, distils=True)
    seconds = AnalysisCost("cpu", torch.float32)._subsets(cfg, cell, probe)
    # Each evaluation: 2 networks (the subsets' models) x 10 steps at 1 s an update.
    assert calls and seconds == len(calls) * 2 * 10


def test_hardness_scoring_run_counted_once_and_not_once_cached(write_suite, tmp_path):
    from harness.data import load_dataset
    from harness.evaluation.hardness import cache_key, cache_path

    suite = load_suite(write_suite(tiny_suite(hardness={"epochs": 3, "batch_size": 256})))
    cell = suite.cells()[0]
    cfg = cell.analyses["hardness"]
    data = load_dataset(cell.dataset)
    cost = AnalysisCost(torch.device("cpu"), torch.float32)
    first = cost._hardness(cfg, cell, data)
    update = next(iter(cost.update_s.values()))
    batches = math.ceil(data.train_x.shape[0] / 256) + math.ceil(data.test_x.shape[0] / 256) / 3
    assert first == pytest.approx(3 * batches * update) and first > 0
    assert cost._hardness(cfg, cell, data) == 0.0  # the suite trains it once: counted once
    path = cache_path(cache_key(data, cfg.model or cell.model, cfg))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"cached")
    assert AnalysisCost(torch.device("cpu"), torch.float32)._hardness(cfg, cell, data) == 0.0


def test_plan_counts_every_enabled_analysis(write_suite, cli, tmp_path, monkeypatch):
    import harness.run.plan as plan

    monkeypatch.setattr(plan, "load_average", lambda: None)
    data = tiny_suite(grid={"datasets": ["digits"], "ipcs": [2], "seeds": [0]},
                      budget={"outer_steps": 4, "checkpoint_minutes": 10.0},
                      hardness={"epochs": 2, "batch_size": 256}, subsets={"enabled": True, "models": 1},
                      anytime={"enabled": True, "every_steps": 2, "protocol": {"models": 1, "steps": 3}},
                      ddranking={"full_data_epochs": 1, "full_data_models": 1, "lr_grid": []})
    path = write_suite(dump_toml(data))
    code, text, err = cli("plan", path, "--out", tmp_path / "out")
    assert code == 0, err
    analyses = next(line for line in text.splitlines() if line.startswith("analyses: "))
    assert [part.split()[0] for part in analyses.removeprefix("analyses: ").split(", ")] == [
        "anytime", "ddranking", "hardness", "subsets"]
    row = next(line for line in text.splitlines() if line.startswith("| digits") and "tbptt" in line and "min" not in
               line and "anytime" in line)
    assert "anytime" in row and "subsets" in row
