"""No hidden global state: what a run changes in the process is restored; records say what
produced them and how busy the machine was."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import torch

from conftest import tiny_suite
from harness.core.io import current_umask
from harness.core.process import seeded, tf32, torch_threads
from harness.core.provenance import BusyMeter, git_state
from harness.data import DataConfig, load_dataset
from harness.evaluation import EvalProtocol, evaluate
from harness.method import DistilledSet
from harness.models import ModelConfig
from harness.report import iter_records
from harness.run.runner import run_suite
from harness.run.suite import load_suite

REPO = Path(__file__).resolve().parents[1]


def test_torch_threads_and_tf32_are_restored():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    with tf32(not flags[0]):
        assert torch.backends.cuda.matmul.allow_tf32 == (not flags[0])
        assert torch.backends.cudnn.allow_tf32 == (not flags[0])
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == flags


def test_seeded_leaves_the_global_generator_as_it_was():
    state = torch.get_rng_state()
    with seeded(123):
        a = torch.rand(3)
    assert torch.equal(torch.get_rng_state(), state)
    with seeded(123):
        assert torch.equal(torch.rand(3), a)


def test_umask_is_read_without_being_changed():
    old = os.umask(0o027)
    try:
        assert current_umask() == 0o027
        assert current_umask() == 0o027
    finally:
        os.umask(old)


def test_evaluation_does_not_touch_the_global_generator():
    data = load_dataset(DataConfig(name="digits"))
    distilled = DistilledSet(data.train_x[:10], torch.arange(10), 10, 1)
    state = torch.get_rng_state()
    evaluate(distilled, data, EvalProtocol(models=1, steps=2), ModelConfig(width=4, depth=1), seed=0,
             device=torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), state)


def test_a_run_restores_threads_and_records_its_provenance(write_suite, tmp_path):
    threads = torch.get_num_threads()
    suite = tiny_suite(hardware={"device": "cpu", "dtype": "float32", "threads": 1 if threads != 1 else 2})
    run_suite(load_suite(write_suite(suite)), tmp_path / "out", progress=False)
    assert torch.get_num_threads() == threads
    records = [r for _, r in iter_records(tmp_path / "out")]
    assert len(records) == 2
    for r in records:
        prov = r.provenance
        assert prov.ddbench and prov.git == git_state()
        if (REPO / ".git").exists():
            head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
            assert prov.git["commit"] == head.stdout.strip()
        busy = prov.busy
        assert busy["wall_seconds"] > 0 and busy["cpu_seconds"] >= 0 and busy["cpu_count"] == os.cpu_count()
        assert busy["load_average_start"] is None or len(busy["load_average_start"]) == 3


def test_busy_meter_sees_cpu_work():
    meter = BusyMeter()
    x = torch.randn(300, 300)
    for _ in range(50):
        x = torch.tanh(x @ x / 300)
    report = meter.report()
    assert report["cpu_seconds"] > 0 and report["cpu_utilization"] > 0
