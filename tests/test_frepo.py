"""FRePo: the KRR solve against closed forms, the meta-gradient against central finite differences
through the solve (float64), the LAMB update against optax's formulas, the pool's reset rule,
resume, learned labels, and a digits run against random_real.

FRePo is not an unrolled method, so tests/test_methods.py's engine checks (recompute mode equals
full mode) do not apply to it; its ``tiny_config`` is run here instead.
"""

from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from harness.core.errors import ConfigError
from harness.core.rng import Stream, step_seed
from harness.data import DataConfig, load_dataset
from harness.engine.krr import (half_squared_error, krr_predictions, krr_weights, linear_kernel,
                                trace_scaled_ridge)
from harness.evaluation import evaluate
from harness.evaluation.protocols.base import protocol_config
from harness.method import DistillTask
from harness.method.registry import create_method, method_class
from harness.models import ModelConfig
from harness.models.networks import embed
from methods.frepo import FRePoConfig, cosine_lr, lecun_normal_init, official_flip

ALL_REAL = 100_000  # a real batch larger than the training set: every training image, in some order


@pytest.fixture(scope="module")
def digits64():
    return load_dataset(DataConfig(name="digits")).to("cpu", torch.float64)


def make_task(data, ipc=2, seed=0, dtype=torch.float64, width=8, outer_steps=4) -> DistillTask:
    return DistillTask(data=data, ipc=ipc, seed=seed, model=ModelConfig(width=width, depth=1), outer_steps=outer_steps,
                       dtype=dtype)


def frepo_at(task, **cfg):
    method = create_method("frepo", **cfg)
    method.setup(task)
    return method


# ----------------------------------------------------------------------------- config


def test_defaults_are_the_official_code_s():
    cfg = FRePoConfig()
    assert (cfg.pool_size, cfg.max_online_updates, cfg.online_lr, cfg.online_batch) == (10, 100, 3e-4, 1000)
    assert (cfg.real_batch_size, cfg.reg, cfg.learn_label, cfg.scale_labels) == (1024, 1e-6, True, True)
    assert (cfg.norm, cfg.bn_momentum, cfg.weight_init, cfg.flip) == ("batchnorm", 0.9, "lecun_normal", None)
    opt = cfg.optimizer
    assert (opt.name, opt.lr, opt.schedule, opt.final_lr_fraction, opt.b1, opt.b2) == (
        "lamb", 3e-4, "cosine", 0.1, 0.9, 0.999)
    # the unrolled methods' [method_defaults] mean other things here
    assert not {"outer_lr", "real_batch", "learn_labels", "init_norm", "inner"} & set(FRePoConfig.model_fields)


@pytest.mark.parametrize("cfg, field", [({"pool_size": 0}, "pool_size"), ({"reg": -1.0}, "reg"),
                                        ({"optimizer": {"name": "sgd"}}, "optimizer.name"),
                                        ({"norm": "layernorm"}, "norm"), ({"learn_labels": True}, "learn_labels")])
def test_bad_values_name_their_field(cfg, field):
    with pytest.raises(ConfigError) as exc:
        create_method("frepo", **cfg)
    assert exc.value.field == field and len(str(exc.value).splitlines()) == 1


def test_flip_follows_the_official_script():
    assert not official_flip("mnist", 1, 10) and not official_flip("digits", 1, 1)
    assert official_flip("cifar10", 3, 10) and official_flip("cifar10-jpeg", 3, 50)
    assert official_flip("cifar100", 3, 1) and not official_flip("cifar100", 3, 10)
    assert official_flip("tinyimagenet", 3, 1) and not official_flip("tinyimagenet", 3, 10)
    assert not official_flip("imagenet1k", 3, 1)


def test_cosine_lr_is_optax_s_schedule():
    cfg = FRePoConfig().optimizer
    assert cosine_lr(cfg, 0, 100) == 3e-4
    assert cosine_lr(cfg, 50, 100) == pytest.approx(3e-4 * (0.9 * 0.5 + 0.1))
    assert cosine_lr(cfg, 100, 100) == pytest.approx(3e-5) == cosine_lr(cfg, 150, 100)
    assert cosine_lr(cfg, 70, 0) == 3e-4  # no step count (a minutes budget): constant


# ----------------------------------------------------------------------------- the KRR solve


def test_krr_equals_the_closed_form_and_the_primal_ridge():
    gen = torch.Generator().manual_seed(0)
    support, query = torch.randn(12, 30, generator=gen, dtype=torch.float64), torch.randn(7, 30, generator=gen,
                                                                                            dtype=torch.float64)
    targets = torch.randn(12, 4, generator=gen, dtype=torch.float64)
    reg = 1e-2
    pred, ridge = krr_predictions(query, support, targets, reg)
    s, q, y = support.numpy(), query.numpy(), targets.numpy()
    k = s @ s.T
    lam = reg * np.trace(k) / 12
    dual = q @ s.T @ scipy.linalg.solve(k + lam * np.eye(12), y, assume_a="pos")
    primal = q @ np.linalg.solve(s.T @ s + lam * np.eye(30), s.T @ y)  # (S^T S + l I)^-1 S^T = S^T (S S^T + l I)^-1
    assert float(ridge) == pytest.approx(lam, rel=1e-14)
    np.testing.assert_allclose(pred.numpy(), dual, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(pred.numpy(), primal, rtol=1e-8, atol=1e-10)
    assert float(half_squared_error(pred, torch.zeros_like(pred))) == pytest.approx(0.5 * (dual ** 2).sum(1).mean())
    assert float(trace_scaled_ridge(linear_kernel(support, support), -reg)) == pytest.approx(lam)  # |reg|, as FRePo


def test_a_kernel_that_is_not_positive_definite_is_refused():
    features = torch.ones(4, 3, dtype=torch.float64)  # rank one
    with pytest.raises(ValueError, match="not positive definite"):
        krr_weights(linear_kernel(features, features), torch.ones(4, 2, dtype=torch.float64), 0.0)


# ----------------------------------------------------------------------------- the meta-gradient


def reference_loss(net, images, labels, real_x, real_y, num_classes, reg, flip) -> float:
    """FRePo's outer loss written out with numpy/scipy on the member's features (no autograd)."""
    with torch.no_grad():
        if flip:
            images, labels = torch.cat([images, images.flip(-1)]), torch.cat([labels, labels])
        s = embed(net.eval(), images).numpy()
        q = embed(net, real_x).numpy()
    y, lab = labels.numpy(), labels.numpy()[: len(labels) // (2 if flip else 1)]
    k = s @ s.T
    pred = q @ s.T @ scipy.linalg.solve(k + reg * np.trace(k) / len(s) * np.eye(len(s)), y, assume_a="pos")
    targets = np.eye(num_classes)[real_y.numpy()] - 1.0 / num_classes
    top2 = np.sort(lab, axis=1)[:, -2:]
    margin = -np.minimum(top2[:, 1] - top2[:, 0], 1.0 / num_classes).mean()
    return 0.5 * ((pred - targets) ** 2).sum(1).mean() + margin


@pytest.mark.parametrize("flip", [False, True])
def test_meta_gradient_matches_central_differences_through_the_solve(flip, digits64):
    """float64, a batch-norm ConvNet (eval mode, trained a few online steps so its running
    statistics are not the init's), every real training image, labels with margins below 1/C so
    the margin term is active: the gradient with respect to the images and to the labels, along
    random directions and along single coordinates (not near-zero ones, where the rounding
    error of the differences, ~1e-10, is the whole value), equals central differences of an independent
    numpy/scipy loss (relative error < 1e-6)."""
    task = make_task(digits64)
    method = frepo_at(task, pool_size=1, real_batch_size=ALL_REAL, flip=flip, reg=1e-3)
    for step in range(3):  # the member trains online; the set moves
        method.step(step)
    with torch.no_grad():
        method.labels.copy_(0.05 * torch.randn(method.labels.shape, generator=torch.Generator().manual_seed(3),
                                               dtype=torch.float64))
    result = method.meta_gradient(3)
    net, images, labels = method.pool[0].net, method.images.detach().clone(), method.labels.detach().clone()
    loss = lambda x, y: reference_loss(net, x, y, digits64.train_x, digits64.train_y, 10, 1e-3, flip)  # noqa: E731
    assert float(result["loss"]) == pytest.approx(loss(images, labels), rel=1e-10)
    gen = torch.Generator().manual_seed(7)
    checks = []
    for which, base, grad in (("images", images, result["grad_images"]), ("labels", labels, result["grad_labels"])):
        directions = [torch.randn(base.shape, generator=gen, dtype=torch.float64) for _ in range(2)]
        ranked = grad.abs().flatten().argsort(descending=True)
        for flat in (int(ranked[0]), int(ranked[len(ranked) // 10])):  # the largest component, and the 90th percentile
            e = torch.zeros(base.numel(), dtype=torch.float64)
            e[flat] = 1.0
            directions.append(e.view_as(base))
        for d in directions:
            eps = 1e-6
            at = lambda t: loss(base + t * d, labels) if which == "images" else loss(images, base + t * d)  # noqa: E731
            numeric = (at(eps) - at(-eps)) / (2 * eps)
            analytic = float((grad * d).sum())
            checks.append((which, abs(numeric - analytic) / abs(analytic), analytic))
    assert max(err for _, err, _ in checks) < 1e-6, "\n".join(map(str, checks))
    assert float(result["label_loss"]) > -0.1  # the margin term is active (not clamped at -1/C everywhere)


def test_the_step_applies_optax_s_lamb(digits64):
    """Three steps: the images and labels move as optax.lamb's formulas (written out here) say,
    from the gradients the method computed, with the cosine lr."""
    task = make_task(digits64, outer_steps=10)
    method = frepo_at(task, pool_size=1)
    x, y = method.images.detach().clone(), method.labels.detach().clone()
    state = {"x": [0, 0], "y": [0, 0]}
    for step in range(3):
        result = method.meta_gradient(step)
        method.step(step)
        lr = 3e-4 * (0.9 * 0.5 * (1 + math.cos(math.pi * step / 10)) + 0.1)
        for key, grad in (("x", result["grad_images"]), ("y", result["grad_labels"])):
            m, v = state[key]
            m, v = 0.9 * m + 0.1 * grad, 0.999 * v + 0.001 * grad ** 2
            state[key] = [m, v]
            u = (m / (1 - 0.9 ** (step + 1))) / ((v / (1 - 0.999 ** (step + 1))).sqrt() + 1e-6)
            param = x if key == "x" else y
            param -= lr * (param.norm() / u.norm()) * u
        torch.testing.assert_close(method.images.detach(), x, rtol=0, atol=1e-14)
        torch.testing.assert_close(method.labels.detach(), y, rtol=0, atol=1e-14)


# ----------------------------------------------------------------------------- the pool


def test_pool_members_are_reset_after_max_online_updates(digits64):
    """pool 2, max_online_updates 3: counts start staggered (0 and 1); the drawn member is trained
    (one Adam step of the MSE on the *updated* set) until its count exceeds 3, then reset to a
    fresh init from the step's NET_INIT stream with a new Adam and count 0."""
    task = make_task(digits64, outer_steps=30)
    method = frepo_at(task, pool_size=2, max_online_updates=3)
    counts, resets = [0, 1], 0
    assert [m.updates for m in method.pool] == counts
    for step in range(30):
        before = copy.deepcopy(method.pool)
        metrics = method.step(step)
        i = int(metrics["member"])
        member = method.pool[i]
        if counts[i] > 3:
            counts[i], resets = 0, resets + 1
            assert metrics["reset"] == 1.0
            fresh = lecun_normal_init(copy.deepcopy(member.net), step_seed(task.seed, step, Stream.NET_INIT))
            for a, b in zip(member.net.state_dict().values(), fresh.state_dict().values()):
                assert torch.equal(a, b)
            assert member.optimizer.state_dict()["state"] == {}
        else:
            counts[i] += 1
            assert metrics["reset"] == 0.0
            ref = before[i]
            ref.net.train()
            loss = 0.5 * ((ref.net(method.images.detach()) - method.labels.detach()) ** 2).sum(1).mean()
            ref.optimizer.zero_grad()
            loss.backward()
            ref.optimizer.step()
            for a, b in zip(member.net.state_dict().values(), ref.net.state_dict().values()):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-15)
        other = method.pool[1 - i]
        assert all(torch.equal(a, b) for a, b in zip(other.net.state_dict().values(),
                                                     before[1 - i].net.state_dict().values()))
        assert [m.updates for m in method.pool] == counts
    assert resets >= 4 and method.summary()["resets"] == resets
    assert method.summary()["online_updates"] == 30 - resets


def test_lecun_normal_init_is_flax_s():
    net = torch.nn.Sequential(torch.nn.Conv2d(16, 64, 3), torch.nn.BatchNorm2d(64), torch.nn.Linear(300, 200))
    lecun_normal_init(net, 0)
    for layer, fan_in in ((net[0], 16 * 9), (net[2], 300)):
        w = layer.weight.detach().double()
        assert float(w.std()) == pytest.approx(math.sqrt(1 / fan_in), rel=0.05)  # the truncation is corrected
        assert float(w.abs().max()) <= 2 * math.sqrt(1 / fan_in) / 0.87962566103423978
        assert not layer.bias.any()
    assert torch.equal(net[1].weight, torch.ones(64)) and not net[1].running_mean.any()
    again = lecun_normal_init(copy.deepcopy(net), 0)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values()))


# ----------------------------------------------------------------------------- resume and labels


def test_resume_is_bit_identical(digits64):
    """6 steps == 2 steps + a checkpoint (saved and loaded as the runner does) + 4 steps, with the
    pool and LAMB's moments carried over: the resumed half trains a member further (step 2, on its
    Adam state from steps 0-1) and resets one (step 4)."""
    task = make_task(digits64)
    cfg = {"pool_size": 2, "max_online_updates": 3}
    whole = frepo_at(task, **cfg)
    whole_metrics = [whole.step(s) for s in range(6)]
    assert any(m["reset"] for m in whole_metrics[2:])
    first = frepo_at(task, **cfg)
    head = [first.step(s) for s in range(2)]
    state = first.state_dict()
    first.step(2)  # the snapshot is a copy: going on does not change it
    buffer = io.BytesIO()
    torch.save(state, buffer)

    def resumed_from(change=lambda saved: saved):
        buffer.seek(0)
        method = frepo_at(task, **cfg)
        method.load_state_dict(change(torch.load(buffer, weights_only=True)))
        return method, [method.step(s) for s in range(2, 6)]

    resumed, tail = resumed_from()
    assert head + tail == whole_metrics
    assert torch.equal(resumed.images, whole.images) and torch.equal(resumed.labels, whole.labels)
    for a, b in zip(resumed.pool, whole.pool):
        assert a.updates == b.updates
        assert all(torch.equal(p, q) for p, q in zip(a.net.state_dict().values(), b.net.state_dict().values()))
    assert resumed.summary() == whole.summary()
    # without the pool's state, or only without its Adam states, the resumed run differs: what
    # the checks above guard
    fresh_pool = frepo_at(task, **cfg).state_dict()["pool"]
    amnesic, _ = resumed_from(lambda saved: {**saved, "pool": fresh_pool})
    assert not torch.equal(amnesic.images, whole.images)
    no_adam = lambda saved: {**saved, "pool": [{**m, "optimizer": f["optimizer"]}  # noqa: E731
                                               for m, f in zip(saved["pool"], fresh_pool)]}
    amnesic, _ = resumed_from(no_adam)
    assert not torch.equal(amnesic.images, whole.images)


def test_learned_labels_change_and_stay_finite(digits64):
    task = make_task(digits64, ipc=3, outer_steps=20)
    method = frepo_at(task, pool_size=2, max_online_updates=5, optimizer={"lr": 3e-3})
    start = method.labels.detach().clone()
    # the init: centered one-hot, scaled by sqrt(C / 10) = 1 for 10 classes
    torch.testing.assert_close(start, torch.eye(10, dtype=torch.float64).repeat_interleave(3, 0) - 0.1)
    for step in range(20):
        assert method.divergence(method.step(step)) is None
    labels = method.labels.detach()
    assert torch.isfinite(labels).all() and not torch.equal(labels, start)
    assert method.summary()["label_change"] > 0.01
    assert torch.equal(labels.argmax(1), method.distilled().hard_labels)  # still their classes
    distilled = method.distilled()
    assert torch.equal(distilled.labels, distilled.hard_labels)
    assert torch.equal(distilled.meta["regression_targets"], labels)
    fixed = frepo_at(task, pool_size=2, learn_label=False)
    for step in range(3):
        fixed.step(step)
    assert torch.equal(fixed.labels, start) and not torch.equal(fixed.images, fixed.initial[0])


def test_tiny_config_runs_and_stays_finite(digits64):
    method = create_method("frepo", **method_class("frepo").tiny_config)
    method.setup(make_task(digits64))
    for step in range(4):
        assert method.divergence(method.step(step)) is None
    summary = method.summary()
    assert summary["pool_size"] == 2 and summary["support_size"] == 20 and not summary["flip"]
    assert summary["resets"] >= 1 and summary["image_change"] > 0 and math.isfinite(summary["final_ridge"])


def test_check_refuses_what_setup_cannot_run(digits64):
    with pytest.raises(ValueError, match="fewer than ipc=500"):
        create_method("frepo").check(make_task(digits64, ipc=500))


def test_divergence_is_reported(digits64):
    method = frepo_at(make_task(digits64))
    with torch.no_grad():
        method.images[0, 0, 0, 0] = float("nan")
    metrics = method.step(0)  # a NaN kernel: NaN weights, a NaN loss, not an exception
    assert not math.isfinite(metrics["outer_loss"]) and "outer_loss" in method.divergence(metrics)
    fine = frepo_at(make_task(digits64))
    assert fine.divergence(fine.step(0)) is None
    fine.labels.detach()[0, 0] = float("nan")
    assert fine.divergence({"outer_loss": 1.0, "grad_norm": 1.0}) == "non-finite learned labels"


# ----------------------------------------------------------------------------- a digits run


@pytest.mark.slow
def test_a_digits_run_beats_random_real():
    """IPC 1, the smoke suite's network (ConvNet-1, width 32) and evaluation (5 networks, 250 Adam
    steps at 0.01, crop), 300 outer steps at the official settings, seed 0: measured 69.7% against
    random_real's 67.6% (seeds 1 and 2: +2.1 and +2.4 points). Asserted: above random_real, and
    the KRR's own accuracy on the real batch rising."""
    data = load_dataset(DataConfig(name="digits", normalize=True)).to("cpu", torch.float32)
    task = make_task(data, ipc=1, dtype=torch.float32, width=32, outer_steps=300)
    method = frepo_at(task)
    accuracies = [method.step(s)["outer_acc"] for s in range(300)]
    assert sum(accuracies[-30:]) > sum(accuracies[:30]) + 1.5
    protocol = protocol_config({"models": 5, "steps": 250, "optimizer": {"name": "adam", "lr": 0.01},
                                "augment": {"ops": ["crop"], "mode": "all"}})
    baseline = create_method("random_real")
    baseline.setup(task)
    ours = evaluate(method.distilled(), data, protocol, task.model, seed=0, device=torch.device("cpu"))
    theirs = evaluate(baseline.distilled(), data, protocol, task.model, seed=0, device=torch.device("cpu"))
    assert ours.accuracy_mean > theirs.accuracy_mean
