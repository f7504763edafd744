"""AT-BPTT's stage schedule and per-epoch draw against the public code (GH209515338/AT-BPTT,
``framework/base.py``): thresholds, patience, ``>=``, the record of every step's stage, the
per-stage windows, resuming mid-stage, and the non-default options."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from harness.core.errors import ConfigError
from harness.data import DataConfig, load_dataset
from harness.method import DistillTask
from harness.method.registry import create_method
from harness.models import ModelConfig
from methods.at_bptt import EARLY, LATE, MIDDLE, StageTracker, patience_epochs


def public_stages(accs: list[float], totwindow: int) -> list[int]:
    """The stage each epoch runs in, transcribed from the public code's epoch loop
    (``framework/base.py``, ``main_worker``): stages 1, 2, 3 returned as 0, 1, 2."""
    stage, flag_stage2, flag_stage3, old_acc_average = 1, 0, 0, 0
    out = []
    for acc_average in accs:
        out.append(stage - 1)
        if stage == 1:
            if acc_average - old_acc_average < 1.5:
                flag_stage2 += 1
            else:
                flag_stage2 = 0
            if flag_stage2 == 0.15 * totwindow:
                stage = 2
        if stage == 2:
            if acc_average - old_acc_average < 1:
                flag_stage3 += 1
            else:
                flag_stage3 = 0
            if flag_stage3 == 0.125 * totwindow:
                stage = 3
        old_acc_average = acc_average
    return out


def tracker(unroll: int, steps_per_epoch: int = 1, **kw) -> StageTracker:
    """The tracker as ``ATBPTT.setup`` builds it with the default schedule."""
    args = dict(switch="accuracy", steps_per_epoch=steps_per_epoch, thresholds=(1.5, 1.0),
                patience=(patience_epochs(0.15, unroll), patience_epochs(0.125, unroll)), boundaries=(0, 0))
    return StageTracker(**{**args, **kw})


def run_epochs(t: StageTracker, accs: list[float]) -> list[int]:
    """Feed per-epoch accuracies (points) as constant per-step accuracies; the stage of every epoch."""
    stages, step = [], 0
    for acc in accs:
        stages.append(t.stage)
        for _ in range(t.steps_per_epoch):
            t.update(step, acc / 100)
            step += 1
    return stages


GAINS = [0.0, 0.3, 0.99, 1.0, 1.2, 1.49, 1.5, 2.0, -0.5]


@settings(max_examples=200, deadline=None)
@given(gains=st.lists(st.sampled_from(GAINS), min_size=1, max_size=60), unroll=st.sampled_from([40, 80, 200]),
       steps_per_epoch=st.integers(1, 3))
@example(gains=[0.0] * 20, unroll=40, steps_per_epoch=1)
@example(gains=[1.2] * 20, unroll=40, steps_per_epoch=2)
def test_stages_switch_exactly_where_the_public_code_does(gains, unroll, steps_per_epoch):
    """Where 0.15 T and 0.125 T are whole (T = 40, 80, 200) the public ``==`` fires, and ``>=``
    must give the same stages, epoch for epoch; the first switch never comes before 0.15 T
    epochs below 1.5 points, the second never before 0.125 T epochs below 1.0."""
    accs = [round(20 + sum(gains[:k + 1]), 2) for k in range(len(gains))]
    gains = [a - b for a, b in zip(accs, [0.0] + accs)]  # as compared: differences of rounded values
    t = tracker(unroll, steps_per_epoch)
    assert run_epochs(t, accs) == public_stages(accs, unroll)
    assert t.epoch_signal == accs
    if t.switched_at:
        first = t.switched_at[0] // steps_per_epoch  # epochs done before the middle stage
        assert first >= 1 + round(0.15 * unroll)  # the first epoch's gain is from 0: never below
        assert all(g < 1.5 for g in gains[first - round(0.15 * unroll):first])
    if len(t.switched_at) == 2:
        second = t.switched_at[1] // steps_per_epoch
        assert second - first >= round(0.125 * unroll) - 1  # the switching epoch counts for both
        assert all(g < 1.0 for g in gains[second - round(0.125 * unroll):second])


def test_a_plateau_switches_at_ceil_fraction_t_where_the_public_code_never_does():
    """T = 30 (the CPU suites): 0.15 T = 4.5 and 0.125 T = 3.75 are never equal to a counter, so
    the public code stays early; >= switches after 5 epochs below 1.5 (after the first epoch,
    whose gain is from 0) and 4 below 1.0 counted from the switching epoch itself."""
    accs = [60.0] * 20
    assert set(public_stages(accs, 30)) == {EARLY}
    t = tracker(30, steps_per_epoch=5)
    assert t.patience == (5, 4)
    stages = run_epochs(t, accs)
    assert stages == [EARLY] * 6 + [MIDDLE] * 3 + [LATE] * 11
    assert t.switched_at == [30, 45]  # outer steps: epochs 6 and 9 of 5 steps


def test_each_switch_has_its_own_threshold():
    t = tracker(40)  # patience 6 and 5
    stages = run_epochs(t, [round(10 + 1.2 * k, 2) for k in range(30)])  # +1.2 per epoch: < 1.5, >= 1.0
    assert stages == [EARLY] * 7 + [MIDDLE] * 23  # never late: every gain resets the middle counter
    t = tracker(40)
    stages = run_epochs(t, [round(10 + 1.5 * k, 2) for k in range(30)])  # exactly 1.5: not below
    assert stages == [EARLY] * 30


def test_a_gain_at_the_threshold_resets_the_count():
    t = tracker(40)
    accs = [50.0] * 5 + [52.0] + [52.0] * 10  # 4 epochs below, then +2: counter back to 0
    stages = run_epochs(t, accs)
    assert stages.index(MIDDLE) == 6 + 6  # six more epochs below after the reset


def test_patience_is_whole_and_free_of_float_noise():
    assert patience_epochs(0.15, 200) == 30 and patience_epochs(0.125, 200) == 25
    assert patience_epochs(0.55, 100) == 55  # 0.55 * 100 = 55.00000000000001 in floating point
    assert patience_epochs(0.15, 30) == 5 and patience_epochs(0.125, 30) == 4
    assert patience_epochs(0.01, 8) == 1


# ----------------------------------------------------------------------------- the method


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataConfig(name="digits"))


def _task(data, steps=12, dtype=torch.float32):
    return DistillTask(data=data.to("cpu", dtype), ipc=2, seed=3, model=ModelConfig(width=8, depth=1),
                       outer_steps=steps, dtype=dtype)


# T = 12: patience ceil(1.8) = 2 and ceil(1.5) = 2 epochs; a threshold of 100 points makes every
# epoch count, so the stages are early for 2 epochs (the first epoch's gain from 0 counts
# too), middle for 1 (the switching epoch counts for both), late after.
BASE = dict(unroll=12, window=5, window_delta=2, real_batch=64, steps_per_epoch=3, gain_threshold=100.0)
DEFAULT_STAGES = [EARLY] * 6 + [MIDDLE] * 3 + [LATE] * 3
OPTIONS = {  # option: (config, stages of the 12 steps)
    "default": ({}, DEFAULT_STAGES),
    "probe_signal": ({"stage_signal": "probe"}, DEFAULT_STAGES),
    "softmax_eta": ({"window_eta": "softmax"}, DEFAULT_STAGES),
    "draw_every_step": ({"draw_every": "step", "start_norms": "mean", "late_start": "inverse"}, DEFAULT_STAGES),
    "steps_switch": ({"stage_switch": "steps", "stage_boundaries": (0.25, 0.5)}, [EARLY] * 3 + [MIDDLE] * 3 + [LATE] * 6),
    # E = 4 epochs: patience 3 and 1, so both switches fall at the end of epoch 3
    "epochs_patience": ({"patience_of": "epochs", "patience_fraction": (0.75, 0.25)}, [EARLY] * 9 + [LATE] * 3),
    "low_rank_hessian": ({"low_rank_hessian": True, "hessian_rank": 3, "hessian_refresh": 2, "hessian_drift": 0.5},
                         DEFAULT_STAGES),
}


def segments(stages: list[int]) -> list[list]:
    out = []
    for step, stage in enumerate(stages):
        if out and out[-1][2] == ("early", "middle", "late")[stage]:
            out[-1][1] = step + 1
        else:
            out.append([step, step + 1, ("early", "middle", "late")[stage]])
    return out


@pytest.mark.parametrize("option", list(OPTIONS))
def test_stages_windows_and_resume_mid_stage(digits, option):
    options, expected = OPTIONS[option]
    cfg, steps = {**BASE, **options}, 12
    method = create_method("at_bptt", **cfg)
    method.setup(_task(digits, steps))
    log = []
    for step in range(steps):
        log.append(method.step(step))
        if step == 7:  # mid-epoch (the 2nd step of epoch 3)
            saved = method.state_dict()
    stages, windows = [m["stage"] for m in log], [m["window"] for m in log]
    assert stages == expected
    assert all(w == 5 + 2 for w, s in zip(windows, stages) if s == MIDDLE)  # W + d
    assert all(w == 5 - 2 for w, s in zip(windows, stages) if s == LATE)  # W - d
    assert all(3 <= w <= 7 for w, s in zip(windows, stages) if s == EARLY)
    plans = [(m["unroll"], m["window"]) for m in log]
    if options.get("draw_every", "epoch") == "epoch":  # one draw per epoch and stage
        assert all(len(set(plans[e:e + 3])) == 1 for e in range(0, steps, 3))
    else:
        assert len(set(plans)) > 4
    summary = method.summary()
    assert summary["stage_segments"] == segments(expected)
    assert summary["stage_shares"] == {name: expected.count(s) / steps for s, name in enumerate(("early", "middle",
                                                                                                "late"))}
    assert summary["stage_switched_at"] == [s for s in range(1, steps) for _ in range(expected[s] - expected[s - 1])]
    assert summary["final_stage"] == "late"
    assert summary["stage_mean_window"].get("middle", 7) == 7 and summary["stage_mean_window"]["late"] == 3
    assert sum(summary["start_histogram"].values()) == steps
    assert ("probe_accuracy" in log[2]) == (option == "probe_signal")
    # Resumed from the checkpoint after step 7: the same steps, the same images, bit for bit.
    resumed = create_method("at_bptt", **cfg)
    resumed.setup(_task(digits, steps))
    resumed.load_state_dict(saved)
    assert [resumed.step(step) for step in range(8, steps)] == log[8:]
    assert torch.equal(resumed.images, method.images) and torch.equal(resumed.norms, method.norms)
    assert resumed.tracker.state_dict() == method.tracker.state_dict() and resumed.summary() == summary
    if method.hessian is not None:
        assert resumed.hessian.last_drift == method.hessian.last_drift and summary["hessian_builds"] >= 1


def test_no_switch_while_every_epoch_gains_enough(digits):
    """The default signal, the epoch's mean outer accuracy (points), recorded per epoch; no epoch
    below the thresholds, no switch."""
    method = create_method("at_bptt", **{**BASE, "gain_threshold": (-100.0, -100.0)})  # nothing is below
    method.setup(_task(digits, 6))
    for step in range(6):
        method.step(step)
    summary = method.summary()
    assert summary["stage_switched_at"] == [] and summary["stage_shares"]["early"] == 1.0
    assert len(summary["epoch_signal"]) == 2 and all(0 <= a <= 100 for a in summary["epoch_signal"])


def test_a_run_bounded_by_minutes_needs_e_only_for_the_epochs_patience(digits):
    task = _task(digits, steps=0)  # outer_steps = 0: a minutes budget
    create_method("at_bptt", **BASE).check(task)  # the public patience is a fraction of T: no E needed
    with pytest.raises(ConfigError) as err:
        create_method("at_bptt", **BASE, patience_of="epochs").check(task)
    assert err.value.field == "epochs" and "\n" not in str(err.value)
    create_method("at_bptt", **BASE, patience_of="epochs", epochs=50).check(task)
    with pytest.raises(ConfigError) as err:
        create_method("at_bptt", **BASE, stage_switch="steps").check(task)
    assert err.value.field == "stage_switch"


def test_the_cli_names_the_missing_field(write_suite, cli, tmp_path):
    from conftest import tiny_suite

    suite = tiny_suite(methods={"at_bptt": {"unroll": 6, "window": 3, "window_delta": 1, "patience_of": "epochs"}},
                       budget={"outer_steps": 0, "minutes": 0.1, "checkpoint_minutes": 10.0})
    code, _, err = cli("run", write_suite(suite), "--out", tmp_path / "out", "-q")
    assert code == 2 and "methods.at_bptt.epochs" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.json"))


def test_the_middle_window_must_fit():
    with pytest.raises(ConfigError, match="W \\+ d must fit") as err:
        create_method("at_bptt", unroll=12, window=10, window_delta=3)
    assert err.value.field == "window_delta"
    create_method("at_bptt", unroll=12, window=10, window_delta=3, adaptive_window=False)
