"""mtt (matching training trajectories): the meta-gradient in recompute mode against full mode and a
hand-written float64 unroll, the expert cache (trained once, reused, resumed between experts,
written atomically), a bit-identical resume, memory flat in the student steps, config errors, and
a digits run. Float64 except the memory test and the run.

mtt is not an unrolled method, so tests/test_methods.py's engine checks do not cover it: the
recompute-equals-full check is here.
"""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

import harness.train.experts as experts_module
from harness.core.errors import ConfigError
from harness.data import DataConfig, load_dataset
from harness.engine.tensor_memory import TensorMemoryMeter
from harness.method import DistillTask
from harness.method.registry import create_method, method_class
from harness.models import ModelConfig
from harness.train.experts import ExpertConfig, expert_path, expert_trajectories, experts_dir
from methods.mtt import MTTConfig

TINY_EXPERTS = {"experts": 2, "epochs": 3, "batch_size": 128}
TRAIN_EXPERT = experts_module.train_expert


class Interrupted(BaseException):
    """A stop that no ``except Exception`` catches (as a SIGTERM's or a Ctrl-C's)."""


@pytest.fixture(scope="module")
def digits64():
    return load_dataset(DataConfig(name="digits")).to("cpu", torch.float64)


@pytest.fixture(scope="module")
def digits32():
    return load_dataset(DataConfig(name="digits", normalize=True)).to("cpu", torch.float32)


def make_task(data, ipc=2, width=4, seed=0, dtype=torch.float64) -> DistillTask:
    return DistillTask(data=data, ipc=ipc, seed=seed, model=ModelConfig(width=width, depth=1), outer_steps=4,
                       dtype=dtype)


def mtt(task, **cfg):
    base = dict(experts=TINY_EXPERTS, syn_steps=5, expert_epochs=2, max_start_epoch=2, lr_img=10.0, lr_lr=1e-3)
    method = create_method("mtt", **{**base, **cfg})
    method.setup(task)
    return method


def rel_err(a, b) -> float:
    return float((a - b).norm() / b.norm())


# ----------------------------------------------------------------------------- the meta-gradient


def convnet(params, x):
    """ConvNet-1 written with torch.nn.functional: conv 3x3 -> instance norm (GroupNorm(W, W)) -> ReLU ->
    2x2 average pool -> linear (an independent path to the network the method builds)."""
    w, b, gn_w, gn_b, lin_w, lin_b = params
    h = F.conv2d(x, w, b, padding=1)
    h = F.avg_pool2d(F.relu(F.group_norm(h, h.shape[1], gn_w, gn_b, eps=1e-5)), 2)
    return F.linear(h.flatten(1), lin_w, lin_b)


def hand_written(method, step: int, cut_history: bool = False):
    """distill.py's student unroll and matching loss for outer step ``step`` (the method's draws), by
    autograd: ``theta_{i+1} = theta_i - syn_lr * grad``, then the normalized distance; its gradient in
    the images and ``syn_lr``. ``cut_history``: TESLA's estimator, which treats every theta_i as a
    constant when it differentiates step i's gradient."""
    draw = method.draw(step)
    objective = method.objective(draw)
    images = method.images.detach().clone().requires_grad_()
    lr = method.lr.detach().clone().requires_grad_()
    theta = [p.clone().requires_grad_() for p in objective.start]
    schedule = draw.schedule
    for t in range(len(schedule)):
        idx = schedule.indices[t]
        x = images[idx]
        grid = F.affine_grid(schedule.affine[t].to(x.dtype), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, align_corners=False)
        if cut_history:
            theta = [p.detach().requires_grad_() for p in theta]
        grads = torch.autograd.grad(F.cross_entropy(convnet(theta, x), method.labels[idx]), theta, create_graph=True)
        theta = [p - lr * g for p, g in zip(theta, grads)]
    scale = sum(((s - t) ** 2).sum() for s, t in zip(objective.start, objective.target))
    loss = sum(((p - t) ** 2).sum() for p, t in zip(theta, objective.target)) / scale
    return (loss.detach(), *torch.autograd.grad(loss, (images, lr)))


def test_meta_gradient_recompute_equals_full_and_the_hand_written_unroll(digits64):
    """float64: minibatches of 8 of the 20 images (a permutation's chunks, the short one skipped),
    affine augmentation, a learned lr, 5 student steps from an expert checkpoint; for three outer
    steps (other experts and start epochs) the recompute mode equals the full mode (< 1e-10) and
    both equal the hand-written unroll (< 1e-10), images and lr. The guard: TESLA's estimator
    (each theta_i a constant) is another gradient, so the check can tell them apart."""
    method = mtt(make_task(digits64), batch_syn=8)
    seen = set()
    for step in range(3):
        full, draw = method.meta_gradient(step, "full")
        recompute, _ = method.meta_gradient(step, "recompute")
        seen.add((draw.expert, draw.start_epoch))
        loss, ref_images, ref_lr = hand_written(method, step)
        assert draw.schedule.indices.shape == (5, 8) and draw.schedule.affine is not None
        assert float(recompute.outer_loss) == pytest.approx(float(loss), rel=1e-12)
        for got in (full, recompute):
            assert rel_err(got.images, ref_images) < 1e-10 and rel_err(got.lr, ref_lr) < 1e-10
        assert rel_err(recompute.images, full.images) < 1e-10 and rel_err(recompute.lr, full.lr) < 1e-10
        _, tesla_images, tesla_lr = hand_written(method, step, cut_history=True)
        assert rel_err(tesla_images, ref_images) > 1e-3
    assert len(seen) > 1  # the draws move: not one checkpoint checked three times


def test_the_student_runs_plain_sgd_from_the_expert_checkpoint(digits64):
    """The final parameters the engine returns are N steps of ``theta - syn_lr * grad`` from theta*_t,
    and the outer loss is the normalized distance to theta*_{t+M} at them."""
    method = mtt(make_task(digits64))
    result, draw = method.meta_gradient(0)
    objective = method.objective(draw)
    theta = list(objective.start)
    for t in range(len(draw.schedule)):
        idx = draw.schedule.indices[t]
        x = method.images.detach()[idx]
        x = F.grid_sample(x, F.affine_grid(draw.schedule.affine[t].to(x.dtype), list(x.shape), align_corners=False),
                          align_corners=False)
        leaves = [p.detach().requires_grad_() for p in theta]
        grads = torch.autograd.grad(F.cross_entropy(convnet(leaves, x), method.labels[idx]), leaves)
        theta = [p.detach() - method.lr.detach() * g for p, g in zip(leaves, grads)]
    for mine, theirs in zip(result.final_params, theta):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-14)
    scale = sum(((s - t) ** 2).sum() for s, t in zip(objective.start, objective.target))
    want = sum(((p - t) ** 2).sum() for p, t in zip(theta, objective.target)) / scale
    assert float(result.outer_loss) == pytest.approx(float(want), rel=1e-12)


# ----------------------------------------------------------------------------- the expert cache


class CountingTrainer:
    """``train_expert`` wrapped: counts the experts trained; ``fail_at``: raise instead of training that one."""

    def __init__(self, monkeypatch, fail_at: int | None = None):
        self.trained: list[int] = []
        self.fail_at = fail_at
        monkeypatch.setattr(experts_module, "train_expert", self)

    def __call__(self, index, *args, **kwargs):
        if index == self.fail_at:
            raise Interrupted(f"interrupted while training expert {index}")
        self.trained.append(index)
        return TRAIN_EXPERT(index, *args, **kwargs)


def build(data, cfg: ExpertConfig):
    return expert_trajectories(data, ModelConfig(width=4, depth=1), cfg, "cpu", torch.float64)


def same_experts(a, b) -> bool:
    return a.count == b.count and all(
        torch.equal(x, y) for i in range(a.count) for x, y in zip(a.payloads[i]["params"], b.payloads[i]["params"]))


def test_experts_are_trained_once_and_reused(digits64, monkeypatch):
    """The first build trains every expert and writes one file each; the next reads them all (no
    training); asking for more trains only the new ones; another recipe is another set. The
    record names the cache relative to the cache dir."""
    counter = CountingTrainer(monkeypatch)
    cfg = ExpertConfig(**TINY_EXPERTS)
    first = build(digits64, cfg)
    assert counter.trained == [0, 1] and first.trained == [0, 1]
    assert len(first.checkpoint_epochs) == 4 and first.payloads[0]["params"][0].shape[0] == 4
    again = build(digits64, cfg)
    assert counter.trained == [0, 1] and again.trained == [] and same_experts(first, again)
    more = build(digits64, cfg.model_copy(update={"experts": 3}))
    assert counter.trained == [0, 1, 2] and more.trained == [2]
    build(digits64, cfg.model_copy(update={"optimizer": cfg.optimizer.model_copy(update={"lr": 0.02})}))
    assert counter.trained == [0, 1, 2, 0, 1]
    summary = again.summary()
    assert summary["cache"].startswith("experts/digits-") and not summary["cache"].startswith("/")
    assert summary["trained_by_this_run"] == 0 and summary["training_seconds_this_run"] == 0
    # the epochs: the init and every epoch; the parameters differ from one checkpoint to the next
    p = first.params(0, 0)[0], first.params(0, 3)[0]
    assert not torch.equal(*p)
    with pytest.raises(ValueError):
        first.params(0, 4)


def test_an_interrupted_build_resumes_at_the_next_expert(digits64, monkeypatch, tmp_path):
    """Interrupted while training expert 2 of 3: experts 0 and 1 are on disk, nothing of expert 2;
    the next build trains expert 2 only, and the set equals an uninterrupted build bit for bit."""
    cfg = ExpertConfig(**{**TINY_EXPERTS, "experts": 3})
    interrupted = CountingTrainer(monkeypatch, fail_at=2)
    with pytest.raises(Interrupted):
        build(digits64, cfg)
    folder = experts_dir(digits64, ModelConfig(width=4, depth=1), cfg)
    assert interrupted.trained == [0, 1]
    assert sorted(p.name for p in folder.iterdir()) == ["expert-0000.pt", "expert-0001.pt"]
    resumed_counter = CountingTrainer(monkeypatch)
    resumed = build(digits64, cfg)
    assert resumed_counter.trained == [2] and resumed.trained == [2]
    monkeypatch.setenv("DDBENCH_CACHE", str(tmp_path / "elsewhere"))
    whole = build(digits64, cfg)
    assert whole.trained == [0, 1, 2] and same_experts(resumed, whole)


def test_expert_files_are_written_atomically_and_damaged_ones_retrained(digits64, monkeypatch, caplog):
    """A write that fails half way leaves no file (and no temp file); a truncated file is trained again."""
    cfg = ExpertConfig(**TINY_EXPERTS)
    real_save = torch.save

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"half a file")
        raise RuntimeError("the disk went away")
    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RuntimeError, match="the disk went away"):
        build(digits64, cfg)
    folder = experts_dir(digits64, ModelConfig(width=4, depth=1), cfg)
    assert [p.name for p in folder.iterdir()] == []
    monkeypatch.setattr(torch, "save", real_save)
    first = build(digits64, cfg)
    path = expert_path(folder, 1)
    path.write_bytes(path.read_bytes()[:100])
    counter = CountingTrainer(monkeypatch)
    again = build(digits64, cfg)
    assert counter.trained == [1] and same_experts(first, again)
    assert "ignoring the expert cache file" in caplog.text


# ----------------------------------------------------------------------------- the method


def test_resume_is_bit_identical(digits64):
    """4 steps == 2 steps + a checkpoint (saved and loaded as the runner does) + 2 steps; without
    the SGD momenta the resumed run differs (what the check guards)."""
    task = make_task(digits64)
    whole = mtt(task, batch_syn=8)
    whole_metrics = [whole.step(s) for s in range(4)]
    first = mtt(task, batch_syn=8)
    head = [first.step(s) for s in range(2)]
    state = first.state_dict()
    first.step(2)  # the snapshot is a copy: going on does not change it
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    resumed = mtt(task, batch_syn=8)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    tail = [resumed.step(s) for s in range(2, 4)]
    assert head + tail == whole_metrics
    assert torch.equal(resumed.images, whole.images) and torch.equal(resumed.lr, whole.lr)
    buffer.seek(0)
    amnesic = mtt(task, batch_syn=8)
    amnesic.load_state_dict({**torch.load(buffer, weights_only=True), "outer_opt": amnesic.outer_opt.state_dict()})
    for s in range(2, 4):
        amnesic.step(s)
    assert not torch.equal(amnesic.images, whole.images)


def test_the_outer_update_is_distill_py_s_sgd(digits64):
    """Two steps: the images and syn_lr move by SGD with momentum 0.5 at lr_img and lr_lr
    (written out), from the meta-gradients the method computed."""
    method = mtt(make_task(digits64), lr_img=30.0, lr_lr=0.01)
    x, lr = method.images.detach().clone(), method.lr.detach().clone()
    bx = blr = None
    for step in range(2):
        result, _ = method.meta_gradient(step)
        method.step(step)
        bx = result.images if bx is None else 0.5 * bx + result.images
        blr = result.lr if blr is None else 0.5 * blr + result.lr
        x, lr = x - 30.0 * bx, lr - 0.01 * blr
        torch.testing.assert_close(method.images.detach(), x, rtol=0, atol=1e-13)
        torch.testing.assert_close(method.lr.detach(), lr, rtol=0, atol=1e-15)
    assert float(method.lr.detach()) != 0.01  # the lr is learned


def test_the_distilled_set_carries_its_lr_and_optimizer(digits64):
    method = mtt(make_task(digits64))
    method.step(0)
    distilled = method.distilled()
    assert distilled.lr == float(method.lr.detach()) and distilled.lr != 0.01
    assert distilled.lr_optimizer["name"] == "sgd" and distilled.lr_optimizer["momentum"] == 0.0
    assert distilled.labels.dtype == torch.int64 and torch.equal(distilled.labels, distilled.hard_labels.cpu())
    fixed = mtt(make_task(digits64), learn_lr=False)
    fixed.step(0)
    assert fixed.distilled().lr is None and fixed.learned_lr_optimizer() is None and float(fixed.lr) == 0.01


def test_real_init_is_random_real_s_set(digits64):
    task = make_task(digits64, ipc=3)
    ours = mtt(task)
    theirs = create_method("random_real")
    theirs.setup(task)
    assert torch.equal(ours.distilled().images, theirs.distilled().images)


def test_defaults_and_config_errors():
    cfg = MTTConfig()
    assert (cfg.syn_steps, cfg.expert_epochs, cfg.max_start_epoch, cfg.batch_syn, cfg.lr_img, cfg.lr_lr) == (
        30, 2, 20, None, 1e5, 1e-5)
    assert (cfg.experts.experts, cfg.experts.epochs, cfg.experts.save_every, cfg.experts.batch_size) == (100, 50, 1, 256)
    opt = cfg.experts.optimizer
    assert (opt.name, opt.lr, opt.momentum, opt.weight_decay) == ("sgd", 0.01, 0.0, 0.0)
    assert cfg.student_optimizer.lr == 0.01 and cfg.engine.mode == "recompute" and cfg.start_epochs == list(range(20))
    for bad, field in [({"max_start_epoch": 50}, "max_start_epoch"),
                       ({"experts": {"save_every": 2}, "expert_epochs": 3}, "expert_epochs"),
                       ({"experts": {"epochs": 5, "save_every": 2}}, "experts.epochs"),
                       ({"engine": {"trajectories": 2}}, "engine"),
                       ({"lr_img": 0}, "lr_img"),
                       ({"pix_init": "gaussian"}, "pix_init")]:
        with pytest.raises(ConfigError) as exc:
            create_method("mtt", **bad)
        assert exc.value.field == field, bad
    every_other = MTTConfig(experts={"save_every": 2, "epochs": 50}, expert_epochs=2, max_start_epoch=5)
    assert every_other.start_epochs == [0, 2, 4]


def test_recompute_memory_is_flat_in_the_student_steps(digits32):
    """Float32, IPC 10 (100 images), the smoke suite's network: the tensors one meta-gradient
    creates, at N = 10 and 40 student steps. Recompute grows by the N parameter snapshots only
    (< 20%); full mode keeps every step's graph (more than 2x)."""
    task = make_task(digits32, ipc=10, width=32, dtype=torch.float32)
    peaks = {}
    for n in (10, 40):
        method = mtt(task, syn_steps=n)
        for mode in ("recompute", "full"):
            with TensorMemoryMeter() as meter:
                method.meta_gradient(0, mode)
            peaks[mode, n] = meter.peak_bytes
    assert peaks["recompute", 40] < 1.2 * peaks["recompute", 10], peaks
    assert peaks["full", 40] > 2 * peaks["full", 10], peaks
    assert peaks["full", 10] > peaks["recompute", 10], peaks


def test_tiny_config_runs_and_reports_divergence(digits64):
    method = create_method("mtt", **method_class("mtt").tiny_config)
    method.setup(make_task(digits64))
    for step in range(2):
        assert method.divergence(method.step(step)) is None
    assert method.summary()["image_change"] > 0
    with torch.no_grad():
        method.images[0, 0, 0, 0] = float("nan")
    assert method.divergence(method.step(2)) is not None


def test_a_digits_run_moves_the_images(digits32):
    """IPC 10, the smoke suite's network (ConvNet-1, width 32), 3 experts of 10 epochs, 20 outer
    steps of N = 20: it runs, stays finite, the matching loss falls and the images move (the report
    gives the accuracies)."""
    task = make_task(digits32, ipc=10, width=32, dtype=torch.float32)
    method = mtt(task, experts={"experts": 3, "epochs": 10}, syn_steps=20, expert_epochs=2, max_start_epoch=5,
                 lr_img=100.0, lr_lr=1e-5)
    start = method.distilled().images.clone()
    losses = []
    for step in range(20):
        metrics = method.step(step)
        assert method.divergence(metrics) is None, step
        losses.append(metrics["outer_loss"])
    assert sum(losses[-5:]) < sum(losses[:5])
    assert method.summary()["image_change"] > 0.01
    assert not torch.equal(method.distilled().images, start)
