"""Learnable soft labels and the linear-basis parameterization, for every unrolled method."""

from __future__ import annotations

import pytest
import torch

from harness.data import DataConfig, load_dataset
from harness.core.errors import ConfigError
from harness.method import DistillTask
from harness.models import ModelConfig
from harness.method.outer_update import scale_rows
from harness.method.registry import create_method

SMALL = {
    "bptt": {"unroll": 4},
    "tbptt": {"unroll": 6, "window": 3},
    "rat_bptt": {"unroll": 6, "window": 3},
    "at_bptt": {"unroll": 6, "window": 3, "window_delta": 1, "hessian_rank": 2},
}


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataConfig(name="digits"))


def task(data, ipc=3, dtype=torch.float32):
    return DistillTask(data=data.to("cpu", dtype), ipc=ipc, seed=1, model=ModelConfig(width=8, depth=1),
                       outer_steps=4, dtype=dtype)


@pytest.mark.parametrize("name", list(SMALL))
def test_soft_labels_are_learned_and_stay_non_negative(name, digits):
    method = create_method(name, **SMALL[name], real_batch=64, learn_labels=True, label_lr_scale=0.5, outer_lr=0.05)
    method.setup(task(digits))
    start = method.labels.detach().clone()
    assert torch.equal(start, torch.nn.functional.one_hot(torch.arange(10).repeat_interleave(3), 10).float())
    for step in range(3):
        method.step(step)
    labels = method.distilled().labels
    assert labels.is_floating_point() and (labels >= 0).all()
    assert not torch.equal(labels, start)


@pytest.mark.parametrize("name", list(SMALL))
def test_linear_basis_starts_from_the_same_images_and_stays_low_rank(name, digits):
    pixels = create_method(name, **SMALL[name], real_batch=64, init="real")
    pixels.setup(task(digits))
    basis = create_method(name, **SMALL[name], real_batch=64, init="real",
                          parameterization={"kind": "linear_basis", "bases": 30})
    basis.setup(task(digits))
    assert torch.allclose(basis.images, pixels.images, atol=1e-5)  # K = N: an exact factorization
    low = create_method(name, **SMALL[name], real_batch=64, init="real",
                        parameterization={"kind": "linear_basis", "bases": 5}, outer_lr=0.05)
    low.setup(task(digits))
    before = low.images.detach().clone()
    for step in range(2):
        low.step(step)
    after = low.distilled().images
    assert not torch.allclose(after, before)
    assert int(torch.linalg.matrix_rank(after.reshape(after.shape[0], -1))) <= 5


def test_linear_basis_gradients_are_the_chain_rule_of_the_image_gradient(digits, monkeypatch):
    import harness.method.outer_update as outer_update

    method = create_method("tbptt", **SMALL["tbptt"], real_batch=64, clip_ema=None, outer_lr=1e-3,
                           parameterization={"kind": "linear_basis", "bases": 4})
    method.setup(task(digits, dtype=torch.float64))
    coeffs, bases = (t.detach().clone() for t in method.basis)
    result, _ = method.meta_gradient(0)
    g = result.images.reshape(coeffs.shape[0], -1)
    adam_grads = []  # what the outer Adam steps on, in the order of the parameters (C, then B)
    real_adam = outer_update.torch_adam
    monkeypatch.setattr(outer_update, "torch_adam",
                        lambda params, grads, *args, **kw: adam_grads.append(grads[0].clone()) or
                        real_adam(params, grads, *args, **kw))
    method.apply(result)
    assert torch.allclose(adam_grads[0], g @ bases.T, rtol=1e-10)
    assert torch.allclose(adam_grads[1], coeffs.T @ g, rtol=1e-10)


def test_linear_basis_round_trips_a_checkpoint(digits):
    cfg = dict(**SMALL["rat_bptt"], real_batch=64, parameterization={"kind": "linear_basis", "bases": 6})
    a = create_method("rat_bptt", **cfg)
    a.setup(task(digits))
    a.step(0)
    b = create_method("rat_bptt", **cfg)
    b.setup(task(digits))
    b.load_state_dict(a.state_dict())
    a.step(1)
    b.step(1)
    assert torch.equal(a.distilled().images, b.distilled().images)


def test_linear_basis_refuses_bad_sizes_and_row_scales(digits):
    with pytest.raises(ConfigError, match="bases"):
        create_method("rat_bptt", parameterization={"kind": "linear_basis"})
    too_many = create_method("rat_bptt", **SMALL["rat_bptt"], parameterization={"kind": "linear_basis", "bases": 31})
    with pytest.raises(ConfigError, match="at most 30"):
        too_many.setup(task(digits))
    method = create_method("rat_bptt", **SMALL["rat_bptt"], parameterization={"kind": "linear_basis", "bases": 3})
    method.setup(task(digits))
    with pytest.raises(ValueError, match="update scales"):  # Boost-DD's beta on earlier rows
        method.add_outer_transform("rows", scale_rows(torch.ones(30)))
