"""The outer update as a chain of transforms (harness/method/outer_update.py): each transform
against the arithmetic it replaces (torch.optim.Adam, torch's clamp, the EMA clipping), bit for
bit; its state a plain tree of tensors that a weights-only checkpoint holds; and a checkpoint
written before the chain (a torch.optim.Adam state dict) resumed exactly."""

from __future__ import annotations

import io

import pytest
import torch

from harness.data import DataConfig, load_dataset
from harness.method import DistillTask
from harness.method.outer_update import (adam, adam_state_from_torch, apply_updates, chain, clip_to_ema_norm,
                                         keep_non_negative, scale_rows)
from harness.method.registry import create_method
from harness.models import ModelConfig


def _params(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {"images": torch.randn(6, 1, 4, 4, generator=gen, dtype=dtype).requires_grad_(),
            "labels": torch.rand(6, 3, generator=gen, dtype=dtype).requires_grad_(),
            "log_lr": torch.tensor(-4.0, dtype=dtype).requires_grad_()}


def _grads(params, step):
    gen = torch.Generator().manual_seed(100 + step)
    grads = {k: torch.randn(p.shape, generator=gen, dtype=p.dtype) * 10.0 ** (step % 3 - 1) for k, p in params.items()}
    grads["images"][0] = 0.0  # a row without gradient: Adam's second moment stays 0 there
    return grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adam_transform_is_torch_adam_bit_for_bit(dtype):
    lrs = {"images": 0.05, "labels": 0.05 / 0.3, "log_lr": 1e-3}
    ours, theirs = _params(dtype), _params(dtype)
    opt = torch.optim.Adam([{"params": [theirs[k]], "lr": lr} for k, lr in lrs.items()], betas=(0.8, 0.99), eps=1e-7)
    transform = adam(lrs, betas=(0.8, 0.99), eps=1e-7)
    state = transform.init(ours)
    for step in range(6):
        grads = _grads(ours, step)
        updates, state = transform.update(grads, state, ours)
        apply_updates(ours, updates)
        for k in theirs:
            theirs[k].grad = grads[k].clone()
        opt.step()
        for k in ours:
            assert torch.equal(ours[k], theirs[k]), (step, k)
    assert ours["images"].requires_grad and ours["images"].is_leaf  # updated in place, still the method's leaves


def test_transforms_are_pure():
    params = _params(torch.float64)
    grads = _grads(params, 0)
    before = {k: v.detach().clone() for k, v in params.items()}
    transform = chain(("clip", clip_to_ema_norm(0.9, 2.0)), ("adam", adam({k: 0.1 for k in params})),
                      ("rows", scale_rows(torch.linspace(0, 1, 6))), ("labels", keep_non_negative("labels")))
    state = transform.init(params)
    first = transform.update(grads, state, params)
    again = transform.update(grads, state, params)
    assert all(torch.equal(first[0][k], again[0][k]) for k in first[0])
    assert all(torch.equal(params[k], before[k]) for k in params)  # nothing updated in place
    assert int(state["clip"]["seen"]) == 0 and int(first[1]["clip"]["seen"]) == 1


def test_keep_non_negative_is_the_clamp_after_the_step():
    gen = torch.Generator().manual_seed(3)
    labels = torch.rand(200, generator=gen) * 1e-3
    labels[:20] = 0.0
    u = torch.randn(200, generator=gen) * 1e-3
    projected, _ = keep_non_negative("labels").update({"labels": u}, (), {"labels": labels})
    assert torch.equal(labels + projected["labels"], (labels + u).clamp(min=0))
    assert bool(((labels + u) < 0).any())  # the clamp was needed somewhere


def test_clip_to_ema_norm_is_the_ema_rule():
    """The current norm enters the EMA first; the gradient is scaled to factor x EMA above it."""
    transform, state = clip_to_ema_norm(0.5, 1.5), None
    state = transform.init({})
    emas = []
    for norm in (1.0, 4.0, 0.5):
        g = torch.zeros(4, dtype=torch.float64)
        g[0] = norm
        out, state = transform.update({"images": g}, state, {})
        ema = norm if not emas else 0.5 * emas[-1] + 0.5 * norm
        emas.append(ema)
        want = norm if norm <= 1.5 * ema else norm * 1.5 * ema / (norm + 1e-6)
        assert float(out["images"][0]) == pytest.approx(want, rel=1e-15)
    assert float(state["ema"]) == emas[-1]


def test_scale_rows_scales_rows_and_refuses_a_linear_basis():
    scale = torch.tensor([0.0, 0.5, 1.0])
    grads = {"images": torch.ones(3, 1, 2, 2), "labels": torch.ones(3, 4), "log_lr": torch.ones(())}
    out, _ = scale_rows(scale).update(grads, (), {})
    assert torch.equal(out["images"][:, 0, 0, 0], scale) and torch.equal(out["labels"][:, 0], scale)
    assert torch.equal(out["log_lr"], grads["log_lr"])
    with pytest.raises(ValueError, match="linear basis"):
        scale_rows(scale).init({"coeffs": torch.ones(3, 2), "bases": torch.ones(2, 4)})


def test_adam_state_from_a_torch_state_dict_continues_exactly():
    lrs = {"images": 0.01, "labels": 0.02, "log_lr": 0.03}
    ours, theirs = _params(torch.float32), _params(torch.float32)
    opt = torch.optim.Adam([{"params": [theirs[k]], "lr": lrs[k]} for k in lrs])
    for step in range(3):  # torch's Adam runs the first steps; labels never get a gradient
        for k in ("images", "log_lr"):
            theirs[k].grad = _grads(theirs, step)[k]
        opt.step()
    with torch.no_grad():
        for k in ours:
            ours[k].copy_(theirs[k])
    transform = adam(lrs)
    state = adam_state_from_torch(opt.state_dict(), list(lrs), transform.init(ours))
    assert float(state["step"]["labels"]) == 0.0 and float(state["step"]["images"]) == 3.0
    for step in range(3, 6):
        grads = _grads(ours, step)
        updates, state = transform.update(grads, state, ours)
        apply_updates(ours, updates)
        for k in theirs:
            theirs[k].grad = grads[k].clone()
        opt.step()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataConfig(name="digits"))


def _method(name, extra):
    return create_method(name, unroll=4, window=2, real_batch=32, outer_lr=0.05, clip_factor=1.05,
                         learn_labels=True, learn_lr=True, inner={"name": "sgd", "lr": 0.05}, **extra)


def _task(data):
    return DistillTask(data=data.to("cpu", torch.float32), ipc=2, seed=1, model=ModelConfig(width=4, depth=1),
                       outer_steps=4)


def test_a_method_checkpoint_is_plain_tensors_and_resumes_exactly(digits):
    straight, stopped = _method("tbptt", {}), _method("tbptt", {})
    for m in (straight, stopped):
        m.setup(_task(digits))
    for step in range(2):
        straight.step(step)
        stopped.step(step)
    buf = io.BytesIO()
    torch.save(stopped.state_dict(), buf)
    buf.seek(0)
    resumed = _method("tbptt", {})
    resumed.setup(_task(digits))
    resumed.load_state_dict(torch.load(buf, weights_only=True))  # as the runner loads a checkpoint
    for step in range(2, 4):
        assert straight.step(step) == resumed.step(step)
    assert torch.equal(straight.images, resumed.images) and torch.equal(straight.labels, resumed.labels)


def test_a_checkpoint_written_before_the_chain_resumes_exactly(digits):
    """A checkpoint of ddbench before the chain held the outer ``torch.optim.Adam``'s state dict
    (``outer_opt``, parameters in the order images, labels, log lr) and the EMA (``grad_norm_ema``)."""
    straight = _method("rat_bptt", {})
    straight.setup(_task(digits))
    for step in range(2):
        straight.step(step)
    new = straight.state_dict()
    adam_state = new["outer_update"]["adam"]
    old = {k: new[k] for k in ("images", "labels", "log_lr", "basis")}
    old["outer_opt"] = {"state": {i: {part: adam_state[part][k] for part in ("step", "exp_avg", "exp_avg_sq")}
                                  for i, k in enumerate(("images", "labels", "log_lr"))},
                        "param_groups": []}
    old["grad_norm_ema"] = float(new["outer_update"]["clip"]["ema"])
    resumed = _method("rat_bptt", {})
    resumed.setup(_task(digits))
    resumed.load_state_dict(old)
    for step in range(2, 4):
        assert straight.step(step) == resumed.step(step)
    assert torch.equal(straight.images, resumed.images) and torch.equal(straight.labels, resumed.labels)
