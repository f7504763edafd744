"""K inner trajectories in one batched unroll (``engine.trajectories = K``), in float64.

The reference for K trajectories is K ordinary single-network unrolls (each with its own
init, schedule, unroll length N_k, window M_k and real batch) whose meta-gradients are
averaged: the batched unroll must give that mean to a relative error below 1e-10, in full and
recompute mode, for SGD with momentum and for Adam, with soft labels and a learned lr.
"""

from __future__ import annotations

import copy

import pytest
import torch

from harness.engine import (FunctionalModel, RealBatchLoss, Synthetic, Trajectories, UnrollOptions,
                            class_balanced_schedule, meta_gradient, stack_schedules)
from harness.engine.cudagraphs import StepGraphs
from harness.engine.optim import InnerOptimizerConfig, make_inner_optimizer
from harness.models import AugmentConfig, ConvNet, reinitialize
from harness.models.batched import BatchedConvNet

DT = torch.float64
CLASSES, IPC, SIZE, REAL = 3, 3, 8, 8

OPTIMIZERS = {
    "sgd_momentum": InnerOptimizerConfig(name="sgd", lr=0.1, momentum=0.9, weight_decay=1e-3),
    "adam_masked": InnerOptimizerConfig(name="adam", lr=0.01),
    "adam_eps_root": InnerOptimizerConfig(name="adam", lr=0.01, sqrt="eps_root", eps_root=1e-12),
}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def problem(plan: Trajectories, augment: bool = True):
    """K networks, K schedules of their own lengths, K real batches, and the shared synthetic data."""
    gen = torch.Generator().manual_seed(0)
    template = ConvNet(1, CLASSES, SIZE, width=4, depth=1).to(DT)
    nets = [reinitialize(copy.deepcopy(template), 100 + k) for k in range(plan.count)]
    images = torch.randn(CLASSES * IPC, 1, SIZE, SIZE, generator=gen, dtype=DT).requires_grad_()
    labels = torch.softmax(torch.randn(CLASSES * IPC, CLASSES, generator=gen, dtype=DT), -1).requires_grad_()
    aug = AugmentConfig(ops=("flip", "rotate", "crop")) if augment else None
    schedules = [class_balanced_schedule(n, CLASSES, IPC, per_class=2, generator=torch.Generator().manual_seed(k),
                                         augment=aug, image_size=SIZE) for k, n in enumerate(plan.unrolls)]
    reals = [(torch.randn(REAL, 1, SIZE, SIZE, generator=gen, dtype=DT),
              torch.randint(0, CLASSES, (REAL,), generator=gen)) for _ in plan.unrolls]
    return template, nets, images, labels, schedules, reals


def single_and_batched(plan: Trajectories, opt: str, mode: str, *, real_chunk=None, factory=None, augment=True):
    template, nets, images, labels, schedules, reals = problem(plan, augment)
    optimizer = make_inner_optimizer(OPTIMIZERS[opt])
    lr = torch.tensor(OPTIMIZERS[opt].lr, dtype=DT, requires_grad=True)
    singles = []
    for net, schedule, (rx, ry), m in zip(nets, schedules, reals, plan.windows):
        model = FunctionalModel(net)
        singles.append(meta_gradient(model, model.parameters(), optimizer, Synthetic(images, labels, lr), schedule, m,
                                     RealBatchLoss(rx, ry, real_chunk), UnrollOptions(mode=mode)))
    batched_net = BatchedConvNet(template, plan.count).to(DT)
    batched_net.load_blocks(nets)
    model = FunctionalModel(batched_net)
    real_x = torch.cat([rx for rx, _ in reals])
    real_y = torch.cat([ry for _, ry in reals])
    batched = meta_gradient(model, model.parameters(), optimizer, Synthetic(images, labels, lr),
                            stack_schedules(schedules), plan.window, RealBatchLoss(real_x, real_y, real_chunk),
                            UnrollOptions(mode=mode, trajectories=plan, steps_factory=factory))
    return singles, batched


PLANS = {
    "ragged": Trajectories(unrolls=(6, 9, 5), windows=(2, 4, 5)),  # padding, distinct window starts, a full BPTT
    "equal": Trajectories(unrolls=(7, 7), windows=(3, 3)),
}


@pytest.mark.parametrize("mode", ["full", "recompute"])
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
@pytest.mark.parametrize("plan", list(PLANS))
def test_batched_meta_gradient_is_the_mean_of_the_single_ones(plan, opt, mode):
    plan = PLANS[plan]
    singles, batched = single_and_batched(plan, opt, mode)
    for key in ("images", "labels", "lr"):
        mean = torch.stack([getattr(s, key) for s in singles]).mean(0)
        assert torch.isfinite(mean).all()
        assert rel(getattr(batched, key), mean) < 1e-10, key
    assert abs(float(batched.outer_loss) - sum(float(s.outer_loss) for s in singles) / plan.count) < 1e-12
    # Each block ends where its own trajectory ends (a shorter one is frozen, not trained on).
    net = BatchedConvNet(ConvNet(1, CLASSES, SIZE, width=4, depth=1), plan.count)
    for k, single in enumerate(singles):
        for block, own in zip(net.block(batched.final_params, k), single.final_params, strict=True):
            # A conv bias before instance norm has a zero gradient up to ~1e-17 of rounding, which Adam
            # divides by ~eps: its steps are rounding noise of order lr x 1e-9, machine-dependent.
            assert torch.allclose(block, own, rtol=1e-9, atol=1e-8)
        n = plan.unrolls[k]
        assert torch.allclose(batched.grad_norms[:n, k], single.grad_norms, rtol=1e-10, atol=0)
        assert torch.allclose(batched.inner_losses[:n, k], single.inner_losses, rtol=1e-10, atol=0)


def test_chunked_outer_loss_and_static_buffer_steps_stay_exact():
    """Real-batch chunks take rows of every trajectory; the CUDA-graph plumbing (uncaptured on the
    CPU) runs the same batched bodies."""
    plan = PLANS["ragged"]
    singles, batched = single_and_batched(plan, "adam_masked", "recompute", real_chunk=3,
                                          factory=StepGraphs(capture=False).factory)
    mean = torch.stack([s.images for s in singles]).mean(0)
    assert rel(batched.images, mean) < 1e-10


def test_one_trajectory_through_the_batched_path_is_the_plain_unroll():
    plan = Trajectories(unrolls=(6,), windows=(3,))
    singles, batched = single_and_batched(plan, "sgd_momentum", "full", augment=False)
    assert rel(batched.images, singles[0].images) < 1e-12


def test_padding_changes_nothing_for_the_longest_trajectory_but_is_not_ignored_for_short_ones():
    """A control: without freezing, a short trajectory would train on its padding steps. Its
    final block must equal its own N_k-step result and differ from the N_max-step one."""
    plan = Trajectories(unrolls=(3, 8), windows=(2, 2))
    template, nets, images, labels, schedules, reals = problem(plan, augment=False)
    optimizer = make_inner_optimizer(OPTIMIZERS["sgd_momentum"])
    model = FunctionalModel(nets[0])
    longer = class_balanced_schedule(8, CLASSES, IPC, per_class=2, generator=torch.Generator().manual_seed(0))
    over = meta_gradient(model, model.parameters(), optimizer, Synthetic(images, labels, 0.1), longer, 2,
                         RealBatchLoss(*reals[0]))
    singles, batched = single_and_batched(plan, "sgd_momentum", "recompute", augment=False)
    block = BatchedConvNet(template, 2).block(batched.final_params, 0)
    assert all(torch.allclose(b, s, rtol=0, atol=1e-12) for b, s in zip(block, singles[0].final_params))
    assert not torch.allclose(block[-2], over.final_params[-2], atol=1e-6)  # the classifier weights


def test_plan_and_schedule_mismatches_are_refused():
    plan = PLANS["ragged"]
    template, nets, images, labels, schedules, reals = problem(plan)
    net = BatchedConvNet(template, plan.count).to(DT)
    model = FunctionalModel(net)
    optimizer = make_inner_optimizer(OPTIMIZERS["sgd_momentum"])
    real_x = torch.cat([rx for rx, _ in reals])
    real_y = torch.cat([ry for _, ry in reals])
    with pytest.raises(ValueError, match="trajectories span 9 steps"):
        meta_gradient(model, model.parameters(), optimizer, Synthetic(images, labels, 0.1), stack_schedules(schedules),
                      plan.window - 1, RealBatchLoss(real_x, real_y), UnrollOptions(trajectories=plan))
    with pytest.raises(ValueError, match="window must be in"):
        Trajectories(unrolls=(3,), windows=(4,))


def test_batched_convnet_refuses_layers_it_cannot_batch():
    from harness.models import resnet18
    with pytest.raises(ValueError, match="no batched form"):
        BatchedConvNet(resnet18(1, CLASSES, SIZE), 2)


# ----------------------------------------------------------------------------- every method


def _unrolled_methods() -> list[str]:
    from harness.method.registry import list_methods, method_class
    from harness.method.unrolled import UnrolledMethod
    return [name for name in list_methods() if issubclass(method_class(name), UnrolledMethod)]


@pytest.fixture(scope="module")
def digits64():
    from harness.data import DataConfig, load_dataset
    return load_dataset(DataConfig(name="digits")).to("cpu", torch.float64)


def _method(name: str, inner: str, trajectories: int, mode: str = "recompute"):
    from harness.method.registry import create_method, method_class
    inner_cfg = {"sgd": {"name": "sgd", "lr": 0.05, "momentum": 0.9}, "adam": {"name": "adam", "lr": 0.01}}[inner]
    return create_method(name, **method_class(name).tiny_config, inner=inner_cfg, real_batch=48, learn_labels=True,
                         learn_lr=True, engine={"mode": mode, "trajectories": trajectories})


def _task(data):
    from harness.method import DistillTask
    from harness.models import ModelConfig
    return DistillTask(data=data, ipc=2, seed=5, model=ModelConfig(width=8, depth=1), outer_steps=3, dtype=DT)


@pytest.mark.parametrize("inner", ["sgd", "adam"])
@pytest.mark.parametrize("name", _unrolled_methods())
def test_every_unrolled_method_steps_on_the_mean_of_its_trajectories(name, inner, digits64):
    """With ``engine.trajectories = 3`` a method's meta-gradient is the mean of the three
    trajectories it draws (trajectory 0 = the single-trajectory run's), each from its own streams."""
    count = 3
    batched, single = _method(name, inner, count), _method(name, inner, 1)
    batched.setup(_task(digits64))
    single.setup(_task(digits64))
    got, info = batched.meta_gradient(1)
    refs = [single.trajectory_meta_gradient(1, k) for k in range(count)]
    assert batched.step_plan.unrolls == tuple(info_k["unroll"] for _, info_k in refs)
    for key in ("images", "labels", "lr"):
        mean = torch.stack([getattr(r, key) for r, _ in refs]).mean(0)
        assert rel(getattr(got, key), mean) < 1e-10, key
    # Trajectory 0 is exactly today's single-trajectory meta-gradient; the others differ from it.
    today, _ = single.meta_gradient(1)
    assert torch.equal(today.images, refs[0][0].images)
    assert rel(refs[1][0].images, refs[0][0].images) > 1e-3


def test_rat_bptt_draws_an_unroll_per_trajectory_and_the_outer_step_clips_the_mean(digits64):
    method = _method("rat_bptt", "adam", 4, mode="full")
    method.setup(_task(digits64))
    seen = set()
    for step in range(3):
        metrics = method.step(step)
        seen.update(method.step_plan.unrolls)
        assert metrics["unroll"] == sum(method.step_plan.unrolls) / 4
        assert torch.isfinite(torch.tensor(metrics["grad_norm"]))
    assert len(seen) > 1  # N is drawn per trajectory, not shared


def test_trajectories_need_a_convnet(digits64):
    from harness.core.errors import ConfigError
    from harness.method import DistillTask
    from harness.models import ModelConfig
    method = _method("tbptt", "sgd", 2)
    task = DistillTask(data=digits64, ipc=2, seed=0, model=ModelConfig(name="resnet18"), outer_steps=1, dtype=DT)
    with pytest.raises(ConfigError, match="no batched form of ResNet"):
        method.check(task)
    with pytest.raises(ConfigError, match="low_rank_hessian: .*engine.trajectories = 1"):
        from harness.method.registry import create_method
        create_method("at_bptt", low_rank_hessian=True, engine={"mode": "recompute", "trajectories": 2})


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batched_trajectories_on_cuda_with_captured_graphs_are_the_mean_of_the_single_ones():
    plan = PLANS["ragged"]
    template, nets, images, labels, schedules, reals = problem(plan)
    device = torch.device("cuda")
    optimizer = make_inner_optimizer(OPTIMIZERS["adam_masked"])
    images, labels = images.detach().to(device).requires_grad_(), labels.detach().to(device).requires_grad_()
    schedules = [type(s)(s.indices.to(device), None if s.affine is None else s.affine.to(device)) for s in schedules]
    singles = []
    for net, schedule, (rx, ry), m in zip(nets, schedules, reals, plan.windows):
        model = FunctionalModel(net.to(device))
        single = meta_gradient(model, model.parameters(), optimizer, Synthetic(images, labels, 0.01), schedule, m,
                               RealBatchLoss(rx.to(device), ry.to(device)), UnrollOptions(mode="recompute"))
        singles.append(single.images)
    batched_net = BatchedConvNet(template, plan.count).to(device, DT)
    batched_net.load_blocks(nets)
    model = FunctionalModel(batched_net)
    real_x = torch.cat([rx for rx, _ in reals]).to(device)
    real_y = torch.cat([ry for _, ry in reals]).to(device)
    graphs = StepGraphs(capture=True)
    for _ in range(2):  # captured on the first call, replayed on the second
        got = meta_gradient(model, model.parameters(), optimizer, Synthetic(images, labels, 0.01),
                            stack_schedules(schedules), plan.window, RealBatchLoss(real_x, real_y),
                            UnrollOptions(mode="recompute", trajectories=plan, steps_factory=graphs.factory,
                                          offload_snapshots=True))
        assert rel(got.images, torch.stack(singles).mean(0)) < 1e-10
