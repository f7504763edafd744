"""Every registered unrolled method: its meta-gradient is the same in both engine modes.

Float64, the bundled digits set, a tiny ConvNet: for each method and each inner optimizer
(SGD with momentum, Adam), the recompute mode (one step's graph at a time) must equal the
full-graph mode to a relative error below 1e-8 for the images, the soft labels and the inner
learning rate, on the same draws (same outer step, same seed).

The methods are discovered in the registry, each with the small config it declares
(``Method.tiny_config``): a newly registered method is covered without editing this file.
"""

from __future__ import annotations

import pytest
import torch

from harness.data import DataConfig, load_dataset
from harness.method import DistillTask
from harness.models import ModelConfig
from harness.method.registry import create_method, list_methods, method_class
from harness.method.unrolled import UnrolledMethod
INNER = {
    "sgd": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
    "adam": {"name": "adam", "lr": 0.01},
}


def unrolled_methods() -> list[str]:
    return [name for name in list_methods() if issubclass(method_class(name), UnrolledMethod)]


def small_config(name: str) -> dict:
    """The small config the method declares (``Method.tiny_config``)."""
    return dict(method_class(name).tiny_config)


def checked_methods() -> list[str]:
    return [name for name in unrolled_methods() if method_class(name).tiny_config is not None]


@pytest.fixture(scope="module")
def digits64():
    return load_dataset(DataConfig(name="digits")).to("cpu", torch.float64)


def make_task(data, ipc=2, seed=0) -> DistillTask:
    return DistillTask(data=data, ipc=ipc, seed=seed, model=ModelConfig(width=8, depth=1), outer_steps=3,
                       dtype=torch.float64)


def test_every_unrolled_method_has_a_small_config():
    missing = [name for name in unrolled_methods() if method_class(name).tiny_config is None]
    assert not missing, f"{missing} declare no tiny_config: the engine check cannot cover them"
    for name in unrolled_methods():  # and it is a valid config
        create_method(name, **small_config(name))


def assert_recompute_equals_full(name: str, inner: str, data) -> None:
    grads = {}
    for mode in ("full", "recompute"):
        method = create_method(name, **small_config(name), inner=INNER[inner], real_batch=64, learn_labels=True,
                               learn_lr=True, engine={"mode": mode, "real_chunk": 40 if mode == "recompute" else None})
        method.setup(make_task(data))
        result, _ = method.meta_gradient(1)
        grads[mode] = result
    for key in ("images", "labels", "lr"):
        full, rec = getattr(grads["full"], key), getattr(grads["recompute"], key)
        assert full.norm() > 0, key
        assert float((rec - full).norm() / full.norm()) < 1e-8, key


@pytest.mark.parametrize("inner", list(INNER))
@pytest.mark.parametrize("name", checked_methods())
def test_recompute_equals_full_for_every_method(name, inner, digits64):
    assert_recompute_equals_full(name, inner, digits64)


def test_outer_step_changes_the_images_and_is_reproducible(digits64):
    """One outer step moves the synthetic set; the same seed and step give the same images."""
    finals = []
    for _ in range(2):
        method = create_method("rat_bptt", **small_config("rat_bptt"), real_batch=64)
        method.setup(make_task(digits64))
        before = method.images.detach().clone()
        metrics = method.step(0)
        assert metrics["window"] == 4 and 4 <= metrics["unroll"] <= 8
        assert not torch.equal(method.images.detach(), before)
        finals.append(method.images.detach().clone())
    assert torch.equal(finals[0], finals[1])
