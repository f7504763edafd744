"""Exactness of the unroll engine against independent references, in float64.

The reference is a hand-written unroll: the network is written with torch.nn.functional ops,
SGD-momentum and Adam are written out from their formulas (bias corrections in Python
floats), and the truncation is an explicit ``.detach()`` at step N - M. It shares no code
with the engine or torchopt. ``higher`` is the second oracle.
"""

from __future__ import annotations

import math

import higher
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchopt

from harness.models.augment import AugmentConfig
from harness.engine import (FunctionalModel, InnerSchedule, OuterValue, RealBatchLoss, Synthetic, UnrollOptions,
                            class_balanced_schedule, inner_step, meta_gradient)
from harness.engine.optim import InnerOptimizerConfig, make_inner_optimizer

DT = torch.float64
CLASSES, IPC, SIZE = 3, 4, 8


# ----------------------------------------------------------------------------- the reference


def net_forward(params, x):
    """Conv(3x3) with bias -> instance norm (affine) -> ReLU -> avg pool -> linear.

    The conv bias feeds a per-channel normalisation, so its gradient is exactly zero: Adam's
    second moment stays 0 there, the case that gives NaN meta-gradients without care.
    """
    w, b, gn_w, gn_b, lin_w, lin_b = params
    h = F.conv2d(x, w, b, padding=1)
    h = F.group_norm(h, h.shape[1], gn_w, gn_b)
    h = F.avg_pool2d(F.relu(h), 2)
    return F.linear(h.flatten(1), lin_w, lin_b)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 1, 3, 3, dtype=DT) * 0.5)
        self.b = nn.Parameter(torch.randn(4, dtype=DT) * 0.1)
        self.gn_w = nn.Parameter(1 + 0.1 * torch.randn(4, dtype=DT))
        self.gn_b = nn.Parameter(0.1 * torch.randn(4, dtype=DT))
        self.lin_w = nn.Parameter(torch.randn(CLASSES, 4 * (SIZE // 2) ** 2, dtype=DT) * 0.1)
        self.lin_b = nn.Parameter(torch.zeros(CLASSES, dtype=DT))

    def forward(self, x):
        return net_forward(tuple(self.parameters()), x)


def ref_sqrt(v):
    safe = torch.where(v > 0, v, torch.ones_like(v))
    return torch.where(v > 0, safe.sqrt(), torch.zeros_like(v))


def reference_meta_gradient(cfg, params0, lr, images, labels, schedule, window, real_x, real_y, outer_loss=None):
    """The meta-gradient of the real-batch cross entropy after the unroll (or of ``outer_loss(params)``)."""
    n = len(schedule)
    params = [p.detach().clone() for p in params0]
    bufs = [torch.zeros_like(p) for p in params]  # momentum, or Adam's first moment
    sqs = [torch.zeros_like(p) for p in params]  # Adam's second moment
    for t in range(n):
        differentiable = t >= n - window
        if t == n - window:
            params = [p.detach().requires_grad_() for p in params]
            bufs = [b.detach() for b in bufs]
            sqs = [s.detach() for s in sqs]
        src_x, src_y = (images, labels) if differentiable else (images.detach(), labels.detach())
        idx = schedule.indices[t]
        x = src_x[idx]
        if schedule.affine is not None:
            grid = F.affine_grid(schedule.affine[t], list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, align_corners=False)
        step_lr = lr if differentiable else lr.detach()
        if not differentiable:
            params = [p.detach().requires_grad_() for p in params]
        loss = F.cross_entropy(net_forward(params, x), src_y[idx])
        grads = torch.autograd.grad(loss, params, create_graph=differentiable)
        grads = [g + cfg.weight_decay * p for g, p in zip(grads, params)]
        if cfg.name == "sgd":
            bufs = [cfg.momentum * b + g for b, g in zip(bufs, grads)]
            direction = [g + cfg.momentum * b for g, b in zip(grads, bufs)] if cfg.nesterov else bufs
        else:
            b1, b2 = cfg.betas
            k = t + 1
            bufs = [b1 * m + (1 - b1) * g for m, g in zip(bufs, grads)]
            sqs = [b2 * v + (1 - b2) * g * g for v, g in zip(sqs, grads)]
            bc1, bc2 = 1 - b1**k, 1 - b2**k
            if cfg.eps_convention == "torch":
                direction = [(m / bc1) / (ref_sqrt(v) / math.sqrt(bc2) + cfg.eps) for m, v in zip(bufs, sqs)]
            else:
                direction = [math.sqrt(bc2) / bc1 * m / (ref_sqrt(v) + cfg.eps) for m, v in zip(bufs, sqs)]
        params = [p - step_lr * d for p, d in zip(params, direction)]
        if not differentiable:
            params = [p.detach() for p in params]
            bufs = [b.detach() for b in bufs]
            sqs = [s.detach() for s in sqs]
    outer = F.cross_entropy(net_forward(params, real_x), real_y) if outer_loss is None else outer_loss(params)
    wrt = [w for w in (images, labels, lr) if w.requires_grad]
    return dict(zip(["images", "labels", "lr"][: len(wrt)], torch.autograd.grad(outer, wrt)))


# ----------------------------------------------------------------------------- fixtures


def make_problem(seed=0, soft_labels=True, augment=True, n_steps=6):
    torch.manual_seed(seed)
    net = Net()
    images = torch.randn(CLASSES * IPC, 1, SIZE, SIZE, dtype=DT, requires_grad=True)
    hard = torch.arange(CLASSES).repeat_interleave(IPC)
    labels = (F.one_hot(hard, CLASSES).to(DT) + 0.05).requires_grad_() if soft_labels else hard
    lr = torch.tensor(0.05, dtype=DT, requires_grad=True)
    real_x = torch.randn(16, 1, SIZE, SIZE, dtype=DT)
    real_y = torch.randint(0, CLASSES, (16,))
    gen = torch.Generator().manual_seed(seed + 1)
    aug = AugmentConfig(ops=("flip", "crop", "rotate"), mode="all") if augment else None
    schedule = class_balanced_schedule(n_steps, CLASSES, IPC, per_class=2, generator=gen, augment=aug,
                                       image_size=SIZE)
    if schedule.affine is not None:
        schedule = InnerSchedule(schedule.indices, schedule.affine.to(DT))
    return net, images, labels, lr, schedule, real_x, real_y


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


OPTIMIZERS = {
    "sgd_momentum_wd": InnerOptimizerConfig(name="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4),
    "sgd_nesterov": InnerOptimizerConfig(name="sgd", lr=0.05, momentum=0.5, nesterov=True),
    "adam": InnerOptimizerConfig(name="adam", lr=0.05),
    "adam_wd_higher_eps": InnerOptimizerConfig(name="adam", lr=0.05, weight_decay=1e-3, eps_convention="higher"),
}


# ----------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("window", [6, 3, 1])
@pytest.mark.parametrize("mode", ["full", "recompute"])
def test_meta_gradient_matches_hand_written_unroll(opt_name, window, mode):
    """M = N is full BPTT; M < N equals the reference that detaches at step N - M."""
    cfg = OPTIMIZERS[opt_name]
    net, images, labels, lr, schedule, real_x, real_y = make_problem()
    params0 = FunctionalModel(net).parameters()
    ref = reference_meta_gradient(cfg, params0, lr, images, labels, schedule, window, real_x, real_y)
    objective = RealBatchLoss(real_x, real_y, chunk=5 if mode == "recompute" else None)
    got = meta_gradient(FunctionalModel(net), params0, make_inner_optimizer(cfg), Synthetic(images, labels, lr),
                        schedule, window, objective, UnrollOptions(mode=mode))
    for key, want in ref.items():
        assert torch.isfinite(getattr(got, key)).all()
        assert want.norm() > 0
        assert rel_err(getattr(got, key), want) < 1e-8, key


class ParameterMatching:
    """Trajectory matching's outer loss, ``||theta_N - target||^2 / ||start - target||^2``: an
    objective the engine knows nothing about, written as any method would write its own."""

    metric_name = "normalized squared distance"

    def __init__(self, start, target):
        self.target = target
        self.scale = sum(((s - t) ** 2).sum() for s, t in zip(start, target))

    def loss(self, params):
        return sum(((p - t) ** 2).sum() for p, t in zip(params, self.target)) / self.scale

    def __call__(self, model, params, trajectories=1):
        assert trajectories == 1
        loss = self.loss(params).detach()
        return OuterValue(loss, loss, tuple(2 * (p - t) / self.scale for p, t in zip(params, self.target)))


@pytest.mark.parametrize("opt_name", ["sgd_momentum_wd", "adam"])
@pytest.mark.parametrize("mode", ["full", "recompute"])
def test_another_outer_objective_matches_the_hand_written_unroll(opt_name, mode):
    """The objective seam: the meta-gradient of a parameter-matching loss at the final parameters
    equals the reference unroll differentiated through the same loss."""
    cfg = OPTIMIZERS[opt_name]
    net, images, labels, lr, schedule, real_x, real_y = make_problem(seed=2)
    params0 = FunctionalModel(net).parameters()
    gen = torch.Generator().manual_seed(9)
    objective = ParameterMatching(params0, tuple(p + 0.1 * torch.randn(p.shape, generator=gen, dtype=DT)
                                                 for p in params0))
    ref = reference_meta_gradient(cfg, params0, lr, images, labels, schedule, 4, real_x, real_y, objective.loss)
    got = meta_gradient(FunctionalModel(net), params0, make_inner_optimizer(cfg), Synthetic(images, labels, lr),
                        schedule, 4, objective, UnrollOptions(mode=mode))
    cross_entropy = meta_gradient(FunctionalModel(net), params0, make_inner_optimizer(cfg),
                                  Synthetic(images, labels, lr), schedule, 4, RealBatchLoss(real_x, real_y))
    assert float(got.outer_loss) == pytest.approx(float(objective.loss(got.final_params)), rel=1e-12)
    for key, want in ref.items():
        assert want.norm() > 0
        assert rel_err(getattr(got, key), want) < 1e-8, key
        assert rel_err(getattr(cross_entropy, key), want) > 1e-2  # guard: the objective did change the gradient


def test_truncation_changes_the_gradient():
    """Guard for the test above: the window really matters (otherwise M < N would test nothing)."""
    cfg = OPTIMIZERS["adam"]
    net, images, labels, lr, schedule, real_x, real_y = make_problem()
    params0 = FunctionalModel(net).parameters()
    opt = make_inner_optimizer(cfg)
    synthetic, objective = Synthetic(images, labels, lr), RealBatchLoss(real_x, real_y)
    full = meta_gradient(FunctionalModel(net), params0, opt, synthetic, schedule, 6, objective)
    short = meta_gradient(FunctionalModel(net), params0, opt, synthetic, schedule, 2, objective)
    assert rel_err(short.images, full.images) > 1e-3
    assert torch.allclose(short.outer_loss, full.outer_loss)  # same forward trajectory


def test_recompute_equals_full_on_convnet_every_optimizer():
    from harness.models import ConvNet

    torch.manual_seed(3)
    module = ConvNet(1, CLASSES, SIZE, width=6, depth=2).to(DT)
    _, images, labels, lr, schedule, real_x, real_y = make_problem(seed=3)
    model = FunctionalModel(module)
    for cfg in OPTIMIZERS.values():
        opt = make_inner_optimizer(cfg)
        synthetic = Synthetic(images, labels, lr)
        a = meta_gradient(model, model.parameters(), opt, synthetic, schedule, 4, RealBatchLoss(real_x, real_y))
        b = meta_gradient(model, model.parameters(), opt, synthetic, schedule, 4,
                          RealBatchLoss(real_x, real_y, chunk=3), UnrollOptions(mode="recompute"))
        for key in ("images", "labels", "lr"):
            assert rel_err(getattr(b, key), getattr(a, key)) < 1e-10


def _higher_meta_gradient(torch_opt_cls, opt_kwargs, net_state, images, labels, lr, schedule, window, real_x,
                          real_y):
    """The official RaT-BPTT recipe: torch.optim prefix without graph, then a higher window."""
    net = Net()
    net.load_state_dict(net_state)
    opt = torch_opt_cls(net.parameters(), lr=lr.item(), **opt_kwargs)
    n = len(schedule)
    for t in range(n - window):
        x, y = schedule.batch(t, images.detach(), labels.detach())
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    with higher.innerloop_ctx(net, opt, copy_initial_weights=True, override={"lr": [lr]}) as (fnet, diffopt):
        for t in range(n - window, n):
            x, y = schedule.batch(t, images, labels)
            diffopt.step(F.cross_entropy(fnet(x), y))
        outer = F.cross_entropy(fnet(real_x), real_y)
    return torch.autograd.grad(outer, [images, labels, lr])


@pytest.mark.parametrize("case", ["sgd_prefix", "adam_full_unroll"])
def test_meta_gradient_matches_higher(case):
    """higher as an oracle, in its own Adam convention (eps outside the bias correction, masked sqrt)."""
    net, images, labels, lr, schedule, real_x, real_y = make_problem(seed=5)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    if case == "sgd_prefix":
        cfg, window = InnerOptimizerConfig(name="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4), 3
        oracle = _higher_meta_gradient(torch.optim.SGD, {"momentum": 0.9, "weight_decay": 5e-4}, state, images,
                                       labels, lr, schedule, window, real_x, real_y)
    else:
        cfg, window = InnerOptimizerConfig(name="adam", lr=0.05, eps_convention="higher"), 6
        oracle = _higher_meta_gradient(torch.optim.Adam, {}, state, images, labels, lr, schedule, window, real_x,
                                       real_y)
    model = FunctionalModel(net)
    for mode in ("full", "recompute"):
        got = meta_gradient(model, model.parameters(), make_inner_optimizer(cfg), Synthetic(images, labels, lr),
                            schedule, window, RealBatchLoss(real_x, real_y), UnrollOptions(mode=mode))
        for key, want in zip(("images", "labels", "lr"), oracle):
            assert rel_err(getattr(got, key), want) < 1e-8, (mode, key)


def test_adam_zero_gradient_parameter_gives_finite_meta_gradient():
    """Parameters with an exactly zero gradient: plain sqrt gives NaN, masked sqrt (and eps_root) do not.

    Channel 0 is dead (norm scale 0, shift -1, then ReLU): its conv weights and bias, norm
    scale and shift get exactly zero gradients at every step, so Adam's second moment stays 0.
    (A conv bias before instance norm has a zero gradient in exact arithmetic; in floating
    point it is ~1e-17, not exactly 0, so it does not make a reliable test.)
    """
    net, images, labels, lr, schedule, real_x, real_y = make_problem(seed=7)
    with torch.no_grad():
        net.gn_w[0], net.gn_b[0] = 0.0, -1.0
    model = FunctionalModel(net)
    grads = torch.autograd.grad(F.cross_entropy(net(real_x), real_y), [net.b, net.gn_b])
    assert all(g[0] == 0 for g in grads)  # the premise: exactly-zero gradients
    plain = torchopt.adam(lr=1.0)  # eps_root = 0: sqrt'(0) = inf
    synthetic, objective = Synthetic(images, labels, lr), RealBatchLoss(real_x, real_y)
    bad = meta_gradient(model, model.parameters(), plain, synthetic, schedule, 6, objective)
    assert torch.isnan(bad.images).any()  # the failure the masked sqrt exists for
    for cfg in (InnerOptimizerConfig(name="adam"), InnerOptimizerConfig(name="adam", sqrt="eps_root", eps_root=1e-16)):
        for mode in ("full", "recompute"):
            good = meta_gradient(model, model.parameters(), make_inner_optimizer(cfg), synthetic, schedule, 6,
                                 objective, UnrollOptions(mode=mode))
            for g in (good.images, good.labels, good.lr):
                assert torch.isfinite(g).all()
            assert good.images.norm() > 0


def test_inner_step_is_pure():
    """Same inputs, same outputs, and the inputs are left untouched (no in-place updates)."""
    net, images, labels, lr, schedule, _, _ = make_problem()
    model = FunctionalModel(net)
    for cfg in OPTIMIZERS.values():
        opt = make_inner_optimizer(cfg)
        params = tuple(p.requires_grad_() for p in model.parameters())
        state = opt.init(params)
        x, y = schedule.batch(0, images.detach(), labels.detach())
        first = inner_step(model, opt, params, state, x, y, lr.detach(), create_graph=False)
        before = [p.clone() for p in params]
        for _ in range(2):  # torchopt's momentum trace has a first-call flag: must not matter
            again = inner_step(model, opt, params, state, x, y, lr.detach(), create_graph=False)
            for a, b in zip(first.params, again.params):
                assert torch.equal(a, b)
        for p, q in zip(params, before):
            assert torch.equal(p, q)


def test_grad_norm_probe_matches_direct_computation():
    net, images, labels, lr, schedule, real_x, real_y = make_problem(augment=False)
    model = FunctionalModel(net)
    cfg = InnerOptimizerConfig(name="sgd", lr=0.05, momentum=0.0)
    got = meta_gradient(model, model.parameters(), make_inner_optimizer(cfg), Synthetic(images, labels, lr),
                        schedule, 2, RealBatchLoss(real_x, real_y))
    params = [p.detach() for p in model.parameters()]
    for t in range(len(schedule)):
        ps = [p.requires_grad_() for p in params]
        x, y = schedule.batch(t, images.detach(), labels.detach())
        grads = torch.autograd.grad(F.cross_entropy(net_forward(ps, x), y), ps)
        norm = torch.sqrt(sum((g**2).sum() for g in grads))
        assert torch.allclose(got.grad_norms[t], norm)
        params = [(p - 0.05 * g).detach() for p, g in zip(ps, grads)]


def test_window_out_of_range_is_rejected():
    net, images, labels, lr, schedule, real_x, real_y = make_problem()
    model = FunctionalModel(net)
    opt = make_inner_optimizer(OPTIMIZERS["adam"])
    for window in (0, len(schedule) + 1):
        with pytest.raises(ValueError, match="window"):
            meta_gradient(model, model.parameters(), opt, Synthetic(images, labels, lr), schedule, window,
                          RealBatchLoss(real_x, real_y))


def test_offloaded_snapshots_are_copies_and_change_nothing(monkeypatch):
    """The offload path on the CPU: every step of the window is snapshotted through the host copy,
    and the reverse pass rebuilds step t from exactly step t's copy (in reverse order); the
    meta-gradient is the same as without offloading."""
    import harness.engine.unroll as unroll
    from harness.engine.steps import UnrollSteps

    net, images, labels, lr, schedule, real_x, real_y = make_problem()
    model = FunctionalModel(net)
    opt = make_inner_optimizer(OPTIMIZERS["adam"])
    args = (model, model.parameters(), opt, Synthetic(images, labels, lr), schedule, 5, RealBatchLoss(real_x, real_y))
    plain = meta_gradient(*args, UnrollOptions(mode="recompute"))
    copies, reversed_from = [], []
    monkeypatch.setattr(unroll, "_to_host", lambda carry: copies.append(
        (carry[0].clone(), tuple(a.clone() for a in carry[1]))) or copies[-1])
    real_reverse = UnrollSteps.reverse

    def spy(self, t, carry, adjoint):
        reversed_from.append((t, carry[0]))
        return real_reverse(self, t, carry, adjoint)

    monkeypatch.setattr(UnrollSteps, "reverse", spy)
    offloaded = meta_gradient(*args, UnrollOptions(mode="recompute", offload_snapshots=True))
    assert len(copies) == 5  # one snapshot per step of the window
    assert [t for t, _ in reversed_from] == [5, 4, 3, 2, 1]  # N = 6, window 5: steps 1..5, backwards
    assert all(flat is copies[t - 1][0] for t, flat in reversed_from)
    for key in ("images", "labels", "lr"):
        assert torch.equal(getattr(offloaded, key), getattr(plain, key))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_offloaded_snapshots_on_cuda_give_the_same_meta_gradient():
    """On CUDA the snapshots really go to pinned host memory and back, asynchronously."""
    net, images, labels, lr, schedule, real_x, real_y = make_problem()
    device = torch.device("cuda")
    model = FunctionalModel(net.to(device))
    opt = make_inner_optimizer(OPTIMIZERS["adam"])
    synthetic = Synthetic(images.detach().to(device).requires_grad_(images.requires_grad),
                          labels.detach().to(device).requires_grad_(labels.requires_grad),
                          lr.to(device) if isinstance(lr, torch.Tensor) else lr)
    affine = None if schedule.affine is None else schedule.affine.to(device)
    objective = RealBatchLoss(real_x.to(device), real_y.to(device))
    args = (model, model.parameters(), opt, synthetic, type(schedule)(schedule.indices.to(device), affine), 5, objective)
    plain = meta_gradient(*args, UnrollOptions(mode="recompute"))
    offloaded = meta_gradient(*args, UnrollOptions(mode="recompute", offload_snapshots=True))
    for key in ("images", "labels", "lr"):
        torch.testing.assert_close(getattr(offloaded, key), getattr(plain, key), rtol=1e-12, atol=0)
