"""The README's worked example of adding a method runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from harness import registry
from harness.data import DataConfig, load_dataset
from harness.errors import ConfigError
from harness.method import DistillTask
from harness.models import ModelConfig

README = Path(__file__).resolve().parents[1] / "README.md"


def example_source() -> str:
    text = README.read_text()
    match = re.search(r"<!-- example-method -->\s*```python\n(.*?)```", text, re.S)
    assert match, "README.md lost its <!-- example-method --> code block"
    return match.group(1)


@pytest.fixture
def curriculum_method():
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(example_source(), str(README), "exec"), namespace)
    try:
        yield namespace["CurriculumBPTT"]
    finally:
        registry._METHODS.pop("curriculum_bptt", None)  # keep the registry as the other tests expect it


def test_readme_method_registers_validates_and_runs(curriculum_method):
    assert "curriculum_bptt" in registry.list_methods()
    with pytest.raises(ConfigError, match="window"):
        registry.create_method("curriculum_bptt", unroll=10, window=20)
    method = registry.create_method("curriculum_bptt", unroll=8, window=3, stride=2, every=2, real_batch=64)
    assert isinstance(method, curriculum_method)
    assert [method.plan(step, torch.Generator())[0] for step in range(8)] == [3, 3, 5, 5, 7, 7, 8, 8]
    data = load_dataset(DataConfig(name="digits"))
    method.setup(DistillTask(data=data, ipc=1, seed=0, model=ModelConfig(width=4, depth=1), outer_steps=2))
    before = method.images.detach().clone()
    metrics = method.step(0)
    assert metrics["unroll"] == 3 and metrics["window"] == 3
    assert not torch.equal(method.images.detach(), before)
