"""Microbenchmarks (pytest-benchmark): seconds per outer step of every registered method.

Run apart from the tests: ``tox -e bench`` or ``pytest benchmarks --benchmark-only``. The
config is tiny (digits, a width-16 ConvNet-1, T = 20, M = 8, IPC 2) so that the numbers say
where a method's overhead lies, not how it scales; ``benchmarks/unroll.py`` measures scaling.
"""

from __future__ import annotations

import math

import pytest
import torch

from harness.data import DataConfig, load_dataset
from harness.method import DistillTask
from harness.models import ModelConfig
from harness.method.registry import create_method, list_methods

TINY = {
    "bptt": {"unroll": 8},
    "tbptt": {"unroll": 20, "window": 8},
    "rat_bptt": {"unroll": 20, "window": 8},
    "at_bptt": {"unroll": 20, "window": 8, "window_delta": 2},
    "boost_dd": {"blocks": 2, "base_config": {"unroll": 20, "window": 8, "real_batch": 256}},
}


@pytest.fixture(scope="module")
def digits():
    torch.set_num_threads(2)
    return load_dataset(DataConfig(name="digits"))


@pytest.mark.parametrize("name", [n for n in list_methods() if n in TINY])
@pytest.mark.parametrize("engine", ["full", "recompute"])
def test_seconds_per_outer_step(benchmark, digits, name, engine):
    cfg = dict(TINY[name])
    if name == "boost_dd":
        cfg["base_config"] = {**cfg["base_config"], "engine": {"mode": engine}}
    else:
        cfg.update(real_batch=256, engine={"mode": engine})
    method = create_method(name, **cfg)
    method.setup(DistillTask(data=digits, ipc=2, seed=0, model=ModelConfig(width=16, depth=1), outer_steps=1000))
    before = method.distilled().images.clone()
    steps = iter(range(10**6))
    metrics = benchmark(lambda: method.step(next(steps)))
    # What was timed is real work: the images moved, by a finite meta-gradient.
    after = method.distilled().images
    assert not torch.equal(after, before) and torch.isfinite(after).all()
    assert math.isfinite(metrics["outer_loss"]) and metrics["grad_norm"] > 0
    benchmark.extra_info.update(method=name, engine=engine)
