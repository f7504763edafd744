"""implicit (the hypergradient by the implicit function theorem): the engine's solvers against a
dense solve, the mixed term against finite differences, the method's hypergradient against BPTT
unrolled to convergence on the strongly convex last-layer problem (agreement improving with K and
with the CG/Neumann iterations), that BPTT reference against the engine's meta-gradient, the outer
update (the unrolled methods' chain) against the hand-written one it replaced, resume, config
errors, and a digits run. Float64 except the run.

implicit is not an unrolled method, so tests/test_methods.py's engine checks (recompute mode
equals full mode) do not apply to it; its ``tiny_config`` is run here instead.
"""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.core.errors import ConfigError
from harness.data import DataConfig, load_dataset
from harness.engine import (FunctionalModel, InnerOptimizerConfig, InnerSchedule, RealBatchLoss, Synthetic,
                            UnrollOptions, make_inner_optimizer, meta_gradient)
from harness.engine.implicit import (conjugate_gradient, hessian_vector_product, implicit_gradient, minimize,
                                     mixed_vector_product, neumann_series)
from harness.method import DistillTask
from harness.method.registry import create_method, method_class
from harness.models import ModelConfig
from harness.models.networks import embed
from methods.implicit import ImplicitConfig, last_layer

L2, LR, STEP = 0.05, 1.0, 1  # the convex problem: lambda(H) in [0.05, 1.37] on its step's network
K_REF = 800  # BPTT "to convergence": the unroll's gradient is stable there to 2e-16 (K = 1000 vs 800)


@pytest.fixture(scope="module")
def digits64():
    return load_dataset(DataConfig(name="digits")).to("cpu", torch.float64)


def make_task(data, ipc=2, width=4, seed=0, dtype=torch.float64) -> DistillTask:
    return DistillTask(data=data, ipc=ipc, seed=seed, model=ModelConfig(width=width, depth=1), outer_steps=4,
                       dtype=dtype)


def convex(task, **cfg):
    """A set-up implicit method on the strongly convex last-layer problem: full-batch gradient
    descent at lr 1 (a contraction: 1 - lr * lambda in [-0.37, 0.95]), every training image as the
    real batch (a mean: its order does not matter), soft labels learned."""
    base = dict(real_batch=10**6, inner={"name": "sgd", "lr": LR, "momentum": 0.0}, l2=L2, learn_labels=True,
                inner_steps=640, solver_iterations=64)
    method = create_method("implicit", **{**base, **cfg})
    method.setup(task)
    return method


def relative_error(images, labels, ref) -> float:
    num = ((images - ref[0]).norm() ** 2 + (labels - ref[1]).norm() ** 2).sqrt()
    return float(num / (ref[0].norm() ** 2 + ref[1].norm() ** 2).sqrt())


def bptt_last_layer(method, data, steps: int, init=None):
    """The hypergradient by backpropagation through ``steps`` steps of gradient descent on the last
    layer from ``init`` (default: the step's network's), written out by hand: features once (with
    their graph to the images), then the unroll, then the outer loss on every training image."""
    method.problem(STEP, data.train_x)  # draws the step's network, nothing else
    net, head = method.network, method.model
    x = method.images.detach().clone().requires_grad_()
    y = method.labels.detach().clone().requires_grad_()
    features = embed(net, x)
    theta = tuple(p.detach().clone().requires_grad_() for p in (head.parameters() if init is None else init))
    for _ in range(steps):
        loss = F.cross_entropy(head(theta, features), y) + 0.5 * L2 * sum((p * p).sum() for p in theta)
        grads = torch.autograd.grad(loss, theta, create_graph=True)
        theta = tuple(p - LR * g for p, g in zip(theta, grads))
    with torch.no_grad():
        real = embed(net, data.train_x)
    return torch.autograd.grad(F.cross_entropy(head(theta, real), data.train_y), (x, y))


@pytest.fixture(scope="module")
def reference(digits64):
    return bptt_last_layer(convex(make_task(digits64)), digits64, K_REF)


class HeadOnFeatures(nn.Module):
    """The step's network as a function of its last layer alone, ``head(embed(net, x))``: the
    feature extractor is held, not registered, so its parameters are constants to the engine."""

    def __init__(self, net: nn.Module, head: nn.Module):
        super().__init__()
        self.head = head
        object.__setattr__(self, "net", net)

    def forward(self, x):
        return self.head(embed(self.net, x))


@pytest.mark.parametrize("mode", ["full", "recompute"])
def test_the_bptt_reference_equals_the_engine_s_meta_gradient(mode, digits64):
    """The hand-written BPTT above (the reference every agreement test uses) against the engine
    (``harness.engine.meta_gradient``) on the same problem: 30 steps of full-batch gradient descent
    on the last layer with the L2 term as SGD's weight decay, the mean cross entropy on every
    training image as the outer objective; images and soft labels agree to 1e-10."""
    method = convex(make_task(digits64))
    steps = 30
    want = bptt_last_layer(method, digits64, steps)  # draws the step's network, leaves it in method.network
    model = FunctionalModel(HeadOnFeatures(method.network, last_layer(method.network)))
    assert model.names == ("head.weight", "head.bias")
    n = method.images.shape[0]
    schedule = InnerSchedule(torch.arange(n).repeat(steps, 1))
    optimizer = make_inner_optimizer(InnerOptimizerConfig(name="sgd", lr=LR, momentum=0.0, weight_decay=L2))
    got = meta_gradient(model, model.parameters(), optimizer, Synthetic(method.images, method.labels, LR), schedule,
                        steps, RealBatchLoss(digits64.train_x, digits64.train_y), UnrollOptions(mode=mode))
    assert relative_error(got.images, got.labels, want) < 1e-10
    shorter = bptt_last_layer(method, digits64, steps - 5)
    assert relative_error(got.images, got.labels, shorter) > 1e-4  # the check tells unrolls apart


# ----------------------------------------------------------------------------- the solvers alone


def quadratic(n=18, seed=0, shift=0.1):
    """A random symmetric matrix with eigenvalues ``shift`` + [0, 1) (positive definite for shift > 0)."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return q @ torch.diag(shift + torch.rand(n, generator=gen, dtype=torch.float64)) @ q.T


def last_layer_objective(params, x, y, l2=L2):
    return F.cross_entropy(x @ params[0].T + params[1], y) + 0.5 * l2 * sum((p * p).sum() for p in params)


def small_problem(seed=0):
    """A last-layer problem small enough for its dense Hessian: 12 examples, 5 features, 3 soft-labelled classes."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(12, 5, generator=gen, dtype=torch.float64)
    y = torch.softmax(torch.randn(12, 3, generator=gen, dtype=torch.float64), -1)
    params = (0.3 * torch.randn(3, 5, generator=gen, dtype=torch.float64),
              0.3 * torch.randn(3, generator=gen, dtype=torch.float64))
    return params, x, y


def flat_hessian(params, x, y):
    """The dense Hessian of :func:`last_layer_objective` by ``torch.func.hessian`` (an independent path)."""
    sizes = [p.numel() for p in params]

    def f(flat):
        w, b = flat.split(sizes)
        return last_layer_objective((w.view_as(params[0]), b), x, y)
    return torch.func.hessian(f)(torch.cat([p.flatten() for p in params]))


def flatten(tensors) -> torch.Tensor:
    return torch.cat([t.flatten() for t in tensors])


def test_hessian_vector_products_equal_the_dense_hessian():
    params, x, y = small_problem()
    leaves = tuple(p.clone().requires_grad_() for p in params)
    grads = torch.autograd.grad(last_layer_objective(leaves, x, y), leaves, create_graph=True)
    hvp = hessian_vector_product(grads, leaves)
    H = flat_hessian(params, x, y)
    for seed in range(3):
        v = torch.randn(H.shape[0], generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        w, b = v.split([15, 3])
        torch.testing.assert_close(flatten(hvp((w.view(3, 5), b))), H @ v, rtol=1e-12, atol=1e-14)


def test_cg_and_neumann_converge_to_the_dense_solve_monotonically():
    """On the small convex problem: ``torch.linalg.solve`` on the explicit Hessian is the answer; CG
    (error monotone from x_0 = 0: Hestenes & Stiefel) and the Neumann series with step 1 /
    lambda_max (every eigen-component shrinks by 1 - step * lambda in [0, 1)) approach it."""
    params, x, y = small_problem()
    H = flat_hessian(params, x, y)
    rhs = torch.randn(18, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = torch.linalg.solve(H, rhs)
    lam = torch.linalg.eigvalsh(H)
    assert lam.min() >= L2 - 1e-12  # the L2 term makes it strongly convex

    def hvp(v):
        return ((H @ flatten(v)).split([15, 3])[0].view(3, 5), (H @ flatten(v))[15:])
    b = (rhs[:15].view(3, 5), rhs[15:])

    def error(solution) -> float:
        return float((flatten(solution) - exact).norm() / exact.norm())
    # one iteration from x_0 = 0: the exact minimum of x^T H x / 2 - b^T x along b
    torch.testing.assert_close(flatten(conjugate_gradient(hvp, b, 1).solution), rhs @ rhs / (rhs @ H @ rhs) * rhs,
                               rtol=1e-12, atol=0)
    assert [conjugate_gradient(hvp, b, i).hvps for i in (1, 5)] == [1, 5]
    assert [neumann_series(hvp, b, i, 0.1).hvps for i in (0, 5)] == [0, 5]
    cg = [error(conjugate_gradient(hvp, b, i).solution) for i in (1, 2, 4, 8, 12, 18)]
    assert all(a >= c * (1 - 1e-9) for a, c in zip(cg, cg[1:])), cg
    assert cg[0] > 0.1 and cg[-1] < 1e-10  # n iterations: exact (18 unknowns)
    step = float(1 / lam.max())
    neumann = [error(neumann_series(hvp, b, i, step).solution) for i in (0, 1, 4, 16, 64, 256, 1024)]
    assert all(a > c for a, c in zip(neumann, neumann[1:])), neumann
    assert neumann[0] > 0.5 and neumann[-1] < 1e-8
    # the Neumann series is step * sum_j (I - step H)^j b, term by term
    A = torch.eye(18, dtype=torch.float64) - step * H
    partial = step * sum(torch.linalg.matrix_power(A, j) @ rhs for j in range(4))
    torch.testing.assert_close(flatten(neumann_series(hvp, b, 3, step).solution), partial, rtol=1e-12, atol=0)


def test_cg_stops_at_negative_curvature_and_early_with_a_tolerance():
    A = quadratic(shift=-0.5)  # eigenvalues in [-0.5, 0.5): indefinite
    rhs = (torch.randn(18, generator=torch.Generator().manual_seed(2), dtype=torch.float64),)
    hvp = lambda v: (A @ v[0],)  # noqa: E731
    out = conjugate_gradient(hvp, rhs, 18)
    assert out.negative_curvature and out.hvps < 18 and torch.isfinite(out.solution[0]).all()
    spd = quadratic(shift=0.1)
    early = conjugate_gradient(lambda v: (spd @ v[0],), rhs, 18, tol=1e-3)
    assert not early.negative_curvature and early.hvps < 18 and early.relative_residual <= 1e-3
    assert float((spd @ early.solution[0] - rhs[0]).norm() / rhs[0].norm()) < 2e-3
    with pytest.raises(ValueError):
        conjugate_gradient(hvp, rhs, 0)


# ----------------------------------------------------------------------------- the mixed term


@pytest.mark.parametrize("inner_problem", ["last_layer", "network"])
def test_mixed_term_matches_finite_differences(inner_problem, digits64):
    """``(d/dx grad_theta L_in)^T v`` for the images and the soft labels: its inner product with a
    direction d equals the central difference of ``v . grad_theta L_in`` along d."""
    method = create_method("implicit", inner_problem=inner_problem, learn_labels=True, real_batch=32, l2=L2)
    method.setup(make_task(digits64))
    problem = method.problem(STEP, digits64.train_x[:32])
    gen = torch.Generator().manual_seed(3)
    theta = tuple(p + 0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in problem.init)
    v = tuple(torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in theta)
    images, labels = method.images.detach(), method.labels.detach()
    mixed = mixed_vector_product(problem.objective, theta, (method.images, method.labels), v)

    def v_dot_grad(x, y) -> float:
        leaves = tuple(p.clone().requires_grad_() for p in theta)
        grads = torch.autograd.grad(problem.objective(leaves, x, y), leaves)
        return float(sum((g * w).sum() for g, w in zip(grads, v)))
    eps = 1e-6
    for k, (analytic, point) in enumerate(zip(mixed, (images, labels))):
        d = torch.randn(point.shape, generator=gen, dtype=point.dtype)
        up = (images + eps * d, labels) if k == 0 else (images, labels + eps * d)
        down = (images - eps * d, labels) if k == 0 else (images, labels - eps * d)
        numeric = (v_dot_grad(*up) - v_dot_grad(*down)) / (2 * eps)
        assert abs(numeric - float((analytic * d).sum())) <= 1e-6 * abs(numeric), k
    hard = mixed_vector_product(problem.objective, theta, (method.images, method.labels.detach()), v)
    assert hard[1] is None and torch.equal(hard[0], mixed[0])  # data that does not require grad gets None


# ----------------------------------------------------------------------------- against BPTT to convergence


def test_implicit_equals_bptt_to_convergence(digits64, reference):
    """K = 640 and 64 CG iterations: the inner problem is solved to 1e-15 and so is H^-1 g, and the
    hypergradient (images and soft labels) equals BPTT through 800 steps."""
    hyper = convex(make_task(digits64)).hypergradient(STEP)
    assert hyper.implicit.stationarity < 1e-12 and hyper.implicit.solve.relative_residual < 1e-12
    assert relative_error(hyper.images, hyper.labels, reference) < 1e-12


def test_agreement_improves_with_the_inner_steps(digits64, reference):
    errors = [relative_error(*_data(convex(make_task(digits64), inner_steps=k).hypergradient(STEP)), reference)
              for k in (10, 20, 40, 80, 160, 320)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[0] > 0.05 and errors[-1] < 1e-7


def _data(hyper):
    return hyper.images, hyper.labels


@pytest.mark.parametrize("solver, counts, first, last", [
    ("cg", (1, 2, 4, 8, 16, 32, 64), 0.5, 1e-13),
    ("neumann", (0, 1, 4, 16, 64, 256, 512), 0.5, 1e-11),  # step = the inner lr (Lorraine's default)
])
def test_agreement_improves_with_the_solver_iterations(solver, counts, first, last, digits64, reference):
    """At theta_640 (stationary to 1e-15), the method's inner problem: the hypergradient from
    ``i`` Hessian-vector products approaches BPTT to convergence as i grows."""
    method = convex(make_task(digits64), solver=solver)
    problem = method.problem(STEP, digits64.train_x)
    inner = minimize(problem.train_objective, problem.init, method.optimizer, LR, 640)
    real = problem.real_inputs
    leaves = tuple(p.clone().requires_grad_() for p in inner.params)
    outer_grad = torch.autograd.grad(F.cross_entropy(problem.outer_model(leaves, real), digits64.train_y), leaves)
    errors = []
    for i in counts:
        out = implicit_gradient(problem.objective, inner.params, (method.images, method.labels), outer_grad, solver,
                                i, step=method.config.step)
        errors.append(relative_error(*out.data, reference))
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[0] > first and errors[-1] < last, errors


def test_neumann_is_truncated_backpropagation_at_the_optimum(digits64):
    """Lorraine et al.'s observation, exactly: at a stationary point of gradient descent, the
    Neumann series with i iterations and step = the inner lr is backpropagation through i + 1
    steps of it from that point (the unroll stays there; its Jacobian is the series' partial sum)."""
    for i in (0, 3):
        method = convex(make_task(digits64), solver="neumann", solver_iterations=i)
        hyper = method.hypergradient(STEP)
        assert hyper.implicit.stationarity < 1e-12
        truncated = bptt_last_layer(method, digits64, i + 1, init=hyper.inner.params)
        assert relative_error(hyper.images, hyper.labels, truncated) < 1e-10, i


# ----------------------------------------------------------------------------- the method


def test_defaults_and_config_errors():
    cfg = ImplicitConfig()
    assert (cfg.inner_problem, cfg.inner_steps, cfg.solver, cfg.solver_iterations, cfg.l2) == (
        "last_layer", 20, "cg", 20, 5e-4)
    assert cfg.step == cfg.inner.lr  # the Neumann step defaults to the inner lr
    for bad, field in [({"inner": {"name": "adam", "weight_decay": 1e-3}}, "inner.weight_decay"),
                       ({"neumann_step": 0.1}, "neumann_step"),
                       ({"solver_iterations": 0}, "solver_iterations"),
                       ({"solver": "neumann", "solver_tol": 1e-4}, "solver_tol"),
                       ({"inner_problem": "head"}, "inner_problem"),
                       ({"l2": -1}, "l2")]:
        with pytest.raises(ConfigError) as exc:
            create_method("implicit", **bad)
        assert exc.value.field == field, bad
    create_method("implicit", solver="neumann", solver_iterations=0, neumann_step=0.5)  # Lorraine's i = 0


def test_real_init_is_random_real_s_set_and_hard_labels_get_no_gradient(digits64):
    task = make_task(digits64, ipc=3)
    ours = create_method("implicit", real_batch=64)
    ours.setup(task)
    theirs = create_method("random_real")
    theirs.setup(task)
    assert torch.equal(ours.distilled().images, theirs.distilled().images)
    hyper = ours.hypergradient(0)
    assert hyper.labels is None and hyper.images.norm() > 0
    assert ours.distilled().labels.dtype == torch.int64


def test_resume_is_bit_identical(digits64):
    """4 steps == 2 steps + a checkpoint (saved and loaded as the runner does) + 2 steps, with Adam's
    moments and the clipping EMA carried over; soft labels learned; both inner problems. Losing
    either the moments or the EMA changes the result."""
    for inner_problem in ("last_layer", "network"):
        # clip_factor 1: the EMA clips most steps, so a resume that lost it would differ
        cfg = dict(inner_problem=inner_problem, learn_labels=True, real_batch=64, inner_steps=5,
                   solver_iterations=3, clip_factor=1.0)
        task = make_task(digits64)
        whole = create_method("implicit", **cfg)
        whole.setup(task)
        whole_metrics = [whole.step(s) for s in range(4)]
        first = create_method("implicit", **cfg)
        first.setup(task)
        head = [first.step(s) for s in range(2)]
        state = first.state_dict()
        first.step(2)  # the snapshot is a copy: going on does not change it
        buffer = io.BytesIO()
        torch.save(state, buffer)
        buffer.seek(0)
        resumed = create_method("implicit", **cfg)
        resumed.setup(task)
        resumed.load_state_dict(torch.load(buffer, weights_only=True))
        tail = [resumed.step(s) for s in range(2, 4)]
        assert head + tail == whole_metrics
        assert torch.equal(resumed.images, whole.images) and torch.equal(resumed.labels, whole.labels)
        for lost in ("adam", "clip"):  # without Adam's moments, or without the EMA, the resumed run differs
            buffer.seek(0)
            saved = torch.load(buffer, weights_only=True)
            amnesic = create_method("implicit", **cfg)
            amnesic.setup(task)
            fresh = amnesic.outer_update.init(amnesic.outer_params())
            amnesic.load_state_dict({**saved, "outer_update": {**saved["outer_update"], lost: fresh[lost]}})
            for s in range(2, 4):
                amnesic.step(s)
            assert not torch.equal(amnesic.images, whole.images), lost


def apply_by_hand(method, hyper, opt: torch.optim.Adam, ema: list) -> None:
    """The outer update as implicit wrote it before the chain of transforms: the clip against the
    EMA of the norms by hand, ``torch.optim.Adam`` with a group per tensor, labels clamped at 0."""
    cfg = method.config
    grad, norm = hyper.images, float(hyper.images.norm())
    if cfg.clip_ema is not None:
        ema[0] = norm if ema[0] is None else cfg.clip_ema * ema[0] + (1 - cfg.clip_ema) * norm
        if norm > cfg.clip_factor * ema[0]:
            grad = grad * (cfg.clip_factor * ema[0] / (norm + 1e-6))
    method.images.grad = grad
    if cfg.learn_labels:
        method.labels.grad = hyper.labels
    opt.step()
    opt.zero_grad(set_to_none=True)
    if cfg.learn_labels:
        with torch.no_grad():
            method.labels.clamp_(min=0)


@pytest.mark.parametrize("inner_problem", ["last_layer", "network"])
def test_the_outer_update_is_torch_s_adam_after_the_clip_bit_for_bit(inner_problem, digits64):
    """4 steps through the chain (clip, adam, labels) equal 4 steps of the hand-written update it
    replaced, bit for bit (float32 and float64); a checkpoint in that update's format (Adam's state
    dict and the EMA) loads and continues bit for bit."""
    for dtype in (torch.float64, torch.float32):
        data = digits64.to("cpu", dtype)
        cfg = dict(inner_problem=inner_problem, learn_labels=True, real_batch=64, inner_steps=5,
                   solver_iterations=3, clip_factor=1.0, label_lr_scale=2.0)
        task = make_task(data, dtype=dtype)
        chained = create_method("implicit", **cfg)
        chained.setup(task)
        by_hand = create_method("implicit", **cfg)
        by_hand.setup(task)
        c = by_hand.config
        opt = torch.optim.Adam([{"params": [by_hand.images], "lr": c.outer_lr},
                                {"params": [by_hand.labels], "lr": c.outer_lr / c.label_lr_scale}],
                               betas=c.outer_betas, eps=c.outer_eps)
        ema = [None]
        for step in range(4):
            chained.step(step)
            apply_by_hand(by_hand, by_hand.hypergradient(step), opt, ema)
            assert torch.equal(chained.images, by_hand.images) and torch.equal(chained.labels, by_hand.labels), step
            if step == 1:
                old_format = {"images": by_hand.images.detach().clone(), "labels": by_hand.labels.detach().clone(),
                              "outer_opt": opt.state_dict(), "grad_norm_ema": ema[0]}
                buffer = io.BytesIO()
                torch.save(old_format, buffer)
        buffer.seek(0)
        resumed = create_method("implicit", **cfg)
        resumed.setup(task)
        resumed.load_state_dict(torch.load(buffer, weights_only=True))
        assert float(resumed.outer_state["clip"]["ema"]) == old_format["grad_norm_ema"]
        for step in (2, 3):
            resumed.step(step)
        assert torch.equal(resumed.images, by_hand.images) and torch.equal(resumed.labels, by_hand.labels)


def test_fixed_network_init_is_the_same_network_at_every_step(digits64):
    method = create_method("implicit", network_init="fixed", real_batch=16)
    method.setup(make_task(digits64))
    inits = [method.problem(s, digits64.train_x[:16]).init for s in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(inits[0], inits[2]))
    fresh = create_method("implicit", real_batch=16)
    fresh.setup(make_task(digits64))
    a, b = (fresh.problem(s, digits64.train_x[:16]).init for s in range(2))
    assert not torch.equal(a[0], b[0])


def test_tiny_config_runs_both_problems_and_reports_divergence(digits64):
    for inner_problem in ("last_layer", "network"):
        method = create_method("implicit", **method_class("implicit").tiny_config, inner_problem=inner_problem)
        method.setup(make_task(digits64))
        for step in range(2):
            metrics = method.step(step)
            assert method.divergence(metrics) is None
            assert metrics["solve_hvps"] >= 1
        assert method.summary()["image_change"] > 0
    with torch.no_grad():
        method.images[0, 0, 0, 0] = float("nan")
    assert method.divergence(method.step(2)) is not None


# ----------------------------------------------------------------------------- a digits run


def test_a_digits_run_moves_the_images():
    """IPC 10, the smoke suite's network and shared settings (inner Adam 0.01, real batch 512,
    outer lr 0.01, init from real images), 50 outer steps at the method's defaults (K = 20, CG 20):
    it runs, stays finite and moves the images (the report gives the accuracies)."""
    data = load_dataset(DataConfig(name="digits", normalize=True)).to("cpu", torch.float32)
    task = make_task(data, ipc=10, width=32, dtype=torch.float32)
    method = create_method("implicit", inner={"name": "adam", "lr": 0.01}, real_batch=512, outer_lr=0.01,
                           init="real")
    method.setup(task)
    start = method.distilled().images.clone()
    for step in range(50):
        metrics = method.step(step)
        assert method.divergence(metrics) is None, step
    assert method.summary()["image_change"] > 0.05
    assert not torch.equal(method.distilled().images, start)
