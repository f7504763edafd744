"""MTT: dataset distillation by matching training trajectories (Cazenavette, Wang, Torralba, Efros,
Zhu, "Dataset Distillation by Matching Training Trajectories", CVPR 2022), its meta-gradient in
the engine's recompute mode: exact, one student step's graph alive at a time, so memory grows
with the number of student steps only by a parameter snapshot per step (``engine.offload_snapshots``
moves those to host memory on CUDA), the point of TESLA (Cui, Wang, Si, Hsieh, "Scaling Up
Dataset Distillation to ImageNet-1K with Constant Memory", ICML 2023).

Before the first step, the expert trajectories: networks trained on the real training split with
their parameters saved after every epoch (``experts``, :mod:`harness.train.experts`, buffer.py's
recipe), trained once per (data, network, recipe) and cached for every later cell and suite.
One outer step (``distill.py`` of GeorgeCazenavette/mtt-distillation):

1. an expert and a start epoch t, uniform in [0, ``max_start_epoch``), are drawn; the student
   starts at the expert's parameters theta*_t;
2. N = ``syn_steps`` steps of plain SGD (``theta - syn_lr * grad``, no momentum, no weight decay)
   on minibatches of ``batch_syn`` synthetic images (None: the whole set), hard labels, each
   batch augmented (see the deviations), at the learned student lr ``syn_lr``;
3. the outer loss ``||theta_N - theta*_{t+M}||^2 / ||theta*_t - theta*_{t+M}||^2`` over all
   parameters (M = ``expert_epochs``; distill.py divides both by the parameter count, which
   cancels), differentiated through all N student steps (the engine's ``meta_gradient`` with
   this objective and window = N) with respect to the images and ``syn_lr``;
4. the images by SGD at ``lr_img`` with momentum 0.5, ``syn_lr`` by SGD at ``lr_lr`` with
   momentum 0.5 (distill.py's ``optimizer_img`` and ``optimizer_lr``; ``syn_lr`` unclamped).

The distilled set carries the learned lr and the optimizer it belongs to (plain SGD): a protocol
uses it only with that optimizer (``eval.use_learned_lr``).

Defaults: buffer.py's for the experts (100 experts x 50 epochs, SGD 0.01, batch 256, DSA, every
epoch saved); distill.py's for the rest, with the per-setting values of the MTT paper's
hyper-parameter table (its README shows the table as an image) for **CIFAR-10, IPC 10**:
N = 30, M = 2, max start epoch 20, ``lr_img`` 1e5 (with ZCA), ``lr_lr`` 1e-5, ``syn_lr`` starting
at ``lr_teacher`` = 0.01 (distill.py: ``syn_lr = lr_teacher``; its ``--lr_init`` is unused), the
whole set per step, images initialised from real ones. Other settings need their own values
(IPC 1: N = 50, max start epoch 2, ``lr_lr`` 1e-7; IPC 50: max start epoch 40, ``lr_img``
1e3, no ZCA). Third-party reproductions quote other image learning rates for IPC 10 (100, 1e3,
1e4): ddbench has not checked the table's numbers against a run.

Randomness: outer step t draws its expert, start epoch, minibatches and augmentation from
``step_seed(seed, t)``; the initial set is random_real's draw (``SYN_INIT``). The checkpoint holds
the images, ``syn_lr`` and both momenta, so a resumed run is bit-identical. The expert set's
training time is the cell's cost only when this cell trained it (``summary()``:
``experts.trained_by_this_run``); later cells read it from the cache.

Deviations from distill.py:

* **Augmentation of the student's batches**: distill.py applies DSA (one op per batch out of
  color, crop, cutout, flip, scale, rotate; each image its own parameters). The engine replays a
  step's augmentation as an affine map drawn ahead (``syn_augment``: crop, flip, scale, rotate,
  one op per batch, each image its own parameters, the DSA ranges), so each of those four ops is
  drawn with probability 1/4 where DSA gives each of its six 1/6; **color and cutout are not
  applied** (not affine); the maps sample with ``align_corners=False`` (DSA: True), a sub-pixel
  difference for scale and rotate. The experts are trained with the full DSA.
* **Expert choice**: uniform at every step (distill.py ``--load_all``); without it distill.py
  walks a shuffled file of 10 experts in order.
* **batch_syn** that does not divide the set: distill.py's shorter last chunk of a permutation
  is skipped here (every step's batch has ``batch_syn`` rows); the same when it divides.
* **The meta-gradient**: exact in both engine modes. TESLA's code treats every student
  parameter theta_i as a constant when it differentiates step i's gradient (it drops the
  dependence of theta_i on the images through the earlier steps), so its "constant-memory"
  gradient is not MTT's; the recompute mode here keeps theta_i snapshots (N parameter vectors,
  as TESLA keeps) and pulls the exact adjoint back one step graph at a time.
* **Evaluation**: MTT trains its evaluation networks with the learned lr under SGD with momentum
  0.9 and weight decay 5e-4; ddbench refuses a learned lr under an optimizer other than the one
  it was learned for, so the ``dsa`` protocol needs ``use_learned_lr = false`` (its own lr) or
  the student's optimizer (``sgd``, momentum 0, weight decay 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from harness import DistilledSet, DistillTask, Method, Stream, register_method, step_seed
from harness.core.process import tf32
from harness.engine import (FunctionalModel, InnerOptimizerConfig, InnerSchedule, MetaGradient, OuterValue, Params,
                            Synthetic, UnrollOptions, make_inner_optimizer, meta_gradient)
from harness.engine.config import EngineConfig
from harness.engine.cudagraphs import StepGraphs
from harness.engine.optim import optimizer_without_lr
from harness.models import AugmentConfig, create_model, sample_affine
from harness.train.experts import ExpertConfig, ExpertSet, expert_trajectories

# DSA's affine ops, drawn as DSA's 'S' mode draws (one op per batch, each image its own parameters).
AFFINE_DSA = AugmentConfig(ops=("crop", "flip", "scale", "rotate"), mode="one")


class MTTConfig(BaseModel):
    """MTT's settings; defaults from buffer.py / distill.py with the paper's CIFAR-10 IPC 10 row."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    experts: ExpertConfig = ExpertConfig()  # buffer.py: how the expert trajectories are trained and saved
    syn_steps: int = Field(30, ge=1, description="N, student steps on the synthetic set per outer step")
    expert_epochs: int = Field(2, ge=1, description="M, the expert epochs the student's N steps must match")
    max_start_epoch: int = Field(20, ge=1, description="start epochs are drawn from [0, max_start_epoch)")
    batch_syn: int | None = Field(None, ge=1, description="synthetic images per student step; None = all")
    lr_img: float = Field(1e5, gt=0)  # SGD lr of the images
    lr_lr: float = Field(1e-5, ge=0)  # SGD lr of syn_lr
    momentum: float = Field(0.5, ge=0, lt=1)  # of both SGDs (distill.py's optimizer_img and optimizer_lr)
    lr_init: float | None = Field(None, gt=0, description="syn_lr's start; None = the experts' lr (lr_teacher)")
    learn_lr: bool = True
    pix_init: Literal["real", "noise"] = "real"  # noise: a standard normal per pixel
    syn_augment: AugmentConfig = AFFINE_DSA
    engine: EngineConfig = EngineConfig(mode="recompute")

    @field_validator("engine")
    @classmethod
    def _one_trajectory(cls, value: EngineConfig) -> EngineConfig:
        if value.trajectories != 1:
            raise ValueError("mtt runs one student trajectory per outer step (trajectories must be 1)")
        return value

    @model_validator(mode="after")
    def _within_the_experts(self) -> "MTTConfig":
        every, epochs = self.experts.save_every, self.experts.epochs
        if self.expert_epochs % every:
            raise ValueError(f"expert_epochs ({self.expert_epochs}) must be a multiple of experts.save_every "
                             f"({every})")
        if max(self.start_epochs) + self.expert_epochs > epochs:
            raise ValueError(f"max_start_epoch ({self.max_start_epoch}): a start at epoch {max(self.start_epochs)} plus "
                             f"expert_epochs ({self.expert_epochs}) passes the experts' {epochs} epochs")
        return self

    @property
    def start_epochs(self) -> list[int]:
        """The saved epochs a student may start at."""
        return [e for e in self.experts.checkpoint_epochs if e < self.max_start_epoch]

    @property
    def student_optimizer(self) -> InnerOptimizerConfig:
        """The student's plain SGD (its lr, syn_lr, is learned)."""
        lr = self.experts.optimizer.lr if self.lr_init is None else self.lr_init
        return InnerOptimizerConfig(name="sgd", lr=lr, momentum=0.0)


@dataclass(frozen=True)
class ParameterMatching:
    """MTT's outer objective at the student's final parameters: ``||theta - target||^2 / ||start -
    target||^2`` summed over all parameters, its gradient ``2 (theta - target) / scale``."""

    start: Params
    target: Params
    metric_name: ClassVar[str] = "normalized parameter distance"

    @property
    def scale(self) -> torch.Tensor:
        return sum(((s - t) ** 2).sum() for s, t in zip(self.start, self.target))

    def __call__(self, model: FunctionalModel, params: Params, trajectories: int = 1) -> OuterValue:
        del model
        if trajectories != 1:
            raise ValueError("parameter matching takes one trajectory")
        scale, diff = self.scale, [p - t for p, t in zip(params, self.target)]
        loss = sum((d * d).sum() for d in diff) / scale
        return OuterValue(loss.detach(), loss.detach(), tuple((2 * d / scale).detach() for d in diff))


def student_schedule(n_steps: int, n_images: int, batch: int | None, gen: torch.Generator,
                     augment: AugmentConfig, image_size: int, device) -> InnerSchedule:
    """distill.py's minibatches: a random permutation of the set cut into chunks of ``batch``, one
    chunk per step (its ``list.pop()``: the last chunk first), a new permutation when all are used;
    a chunk shorter than ``batch`` is skipped. Then the augmentation of every step, drawn ahead."""
    batch = n_images if batch is None else min(batch, n_images)
    rows, chunks = [], []
    for _ in range(n_steps):
        if not chunks:
            chunks = [c for c in torch.randperm(n_images, generator=gen).split(batch) if len(c) == batch]
        rows.append(chunks.pop())
    affine = sample_affine(augment, n_steps, batch, image_size, gen) if augment.enabled else None
    return InnerSchedule(torch.stack(rows).to(device), None if affine is None else affine.to(device))


@dataclass
class StepDraw:
    """What outer step t draws: the expert, its start epoch, the student's minibatches."""

    expert: int
    start_epoch: int
    schedule: InnerSchedule


@register_method("mtt")
class MTT(Method):
    """Matching training trajectories: N student steps from an expert checkpoint matched to its epoch t + M."""

    Config = MTTConfig
    # Not an unrolled method (no fresh init, no real batch): tests/test_methods.py's engine checks do
    # not apply; tests/test_mtt.py checks recompute against full and a hand-written unroll.
    tiny_config: ClassVar[dict[str, Any] | None] = {
        "experts": {"experts": 2, "epochs": 2, "batch_size": 256}, "syn_steps": 4, "expert_epochs": 1,
        "max_start_epoch": 2, "lr_img": 100.0}
    inner_progress = None  # set by the runner for long outer steps: progress(done, total, phase)

    def check(self, task: DistillTask) -> None:
        create_model(task.model, task.image_shape, task.num_classes)  # a ValueError names the problem
        if self.config.pix_init == "real":
            task.check_real_per_class(task.ipc)

    def setup(self, task: DistillTask) -> None:
        self.check(task)
        self.task, cfg = task, self.config
        self.experts: ExpertSet = expert_trajectories(task.data, task.model, cfg.experts, task.device, task.dtype)
        gen = torch.Generator().manual_seed(step_seed(task.seed, 0, Stream.SYN_INIT))
        images = task.initial_images(task.ipc, cfg.pix_init, gen)  # "real": random_real's draw; else N(0, 1)
        self.initial = images.detach().to("cpu", task.dtype, copy=True)
        self.images = images.detach().to(task.device, task.dtype, copy=True).requires_grad_()
        self.labels = torch.arange(task.num_classes, device=task.device).repeat_interleave(task.ipc)
        self.lr = torch.tensor(cfg.student_optimizer.lr, device=task.device, dtype=task.dtype)
        self.lr.requires_grad_(cfg.learn_lr)
        groups = [{"params": [self.images], "lr": cfg.lr_img}]
        if cfg.learn_lr:
            groups.append({"params": [self.lr], "lr": cfg.lr_lr})
        self.outer_opt = torch.optim.SGD(groups, momentum=cfg.momentum)
        self.model = FunctionalModel(task.new_model().train())
        self.optimizer = make_inner_optimizer(cfg.student_optimizer)
        self.graphs = StepGraphs() if cfg.engine.cuda_graphs and task.device.type == "cuda" else None

    # ------------------------------------------------------------------ one outer step

    def draw(self, step: int) -> StepDraw:
        """Outer step ``step``'s expert, start epoch and minibatches, from ``step_seed(seed, step)``."""
        cfg, task = self.config, self.task
        gen = torch.Generator().manual_seed(step_seed(task.seed, step))
        expert = int(torch.randint(self.experts.count, (1,), generator=gen))
        starts = cfg.start_epochs
        start = starts[int(torch.randint(len(starts), (1,), generator=gen))]
        schedule = student_schedule(cfg.syn_steps, self.images.shape[0], cfg.batch_syn, gen, cfg.syn_augment,
                                    task.image_shape[-1], task.device)
        return StepDraw(expert, start, schedule)

    def objective(self, draw: StepDraw) -> ParameterMatching:
        task = self.task
        start = self.experts.params(draw.expert, draw.start_epoch, task.device, task.dtype)
        target = self.experts.params(draw.expert, draw.start_epoch + self.config.expert_epochs, task.device,
                                     task.dtype)
        return ParameterMatching(start, target)

    def meta_gradient(self, step: int, mode: str | None = None) -> tuple[MetaGradient, StepDraw]:
        """Outer step ``step``'s meta-gradient from the current set (nothing updated); ``mode``
        overrides ``engine.mode``."""
        cfg, task = self.config, self.task
        draw = self.draw(step)
        objective = self.objective(draw)
        mode = mode or cfg.engine.mode
        graphs = self.graphs if mode == "recompute" else None
        options = UnrollOptions(mode=mode, channels_last=cfg.engine.channels_last,
                                steps_factory=graphs.factory if graphs else None,
                                offload_snapshots=cfg.engine.offload_snapshots and task.device.type == "cuda",
                                progress=self.inner_progress)
        with tf32(cfg.engine.tf32 and task.device.type == "cuda"):
            result = meta_gradient(self.model, objective.start, self.optimizer,
                                   Synthetic(self.images, self.labels, self.lr), draw.schedule, cfg.syn_steps,
                                   objective, options)
        return result, draw

    def step(self, step: int) -> dict[str, float]:
        result, draw = self.meta_gradient(step)
        grad_norm = float(result.images.norm())
        self.images.grad = result.images
        if self.config.learn_lr:
            self.lr.grad = result.lr
        self.outer_opt.step()
        self.outer_opt.zero_grad(set_to_none=True)
        return {"outer_loss": float(result.outer_loss), "grad_norm": grad_norm, "syn_lr": float(self.lr.detach()),
                "start_epoch": float(draw.start_epoch), "expert": float(draw.expert),
                "inner_loss": float(result.inner_losses[-1])}

    # ------------------------------------------------------------------ results and checkpoints

    def divergence(self, metrics: dict[str, float]) -> str | None:
        reason = super().divergence(metrics)
        if reason is None:
            for name, t in (("synthetic images", self.images), ("student lr", self.lr)):
                if not bool(torch.isfinite(t).all()):
                    return f"non-finite {name}"
        return reason

    def learned_lr_optimizer(self) -> InnerOptimizerConfig | None:
        return self.config.student_optimizer if self.config.learn_lr else None

    def distilled(self) -> DistilledSet:
        learned = self.config.learn_lr
        return DistilledSet(self.images.detach().cpu(), self.labels.cpu(), self.task.num_classes, self.task.ipc,
                            lr=float(self.lr.detach()) if learned else None,
                            lr_optimizer=optimizer_without_lr(self.config.student_optimizer) if learned else None)

    def state_dict(self) -> dict[str, Any]:
        """A snapshot (copies, on the CPU): the images, syn_lr and the momenta change in place."""
        state = {"images": self.images, "lr": self.lr, "outer_opt": self.outer_opt.state_dict()}
        return torch.utils._pytree.tree_map_only(torch.Tensor, lambda t: t.detach().to("cpu", copy=True), state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.images.copy_(state["images"])
            self.lr.copy_(state["lr"])
        self.outer_opt.load_state_dict(state["outer_opt"])

    def summary(self) -> dict[str, Any]:
        """The experts (their cache file relative to the cache dir, how many this run trained and
        the seconds that took: the cell's cost only when it trained them), the learned lr and how
        far the images moved from their init (relative L2 distance)."""
        moved = (self.images.detach().cpu() - self.initial).norm() / self.initial.norm()
        experts = self.experts.summary()
        experts["cost"] = ("training_seconds_this_run is part of this cell's cost (the experts this run trained); "
                           "experts read from the cache cost it nothing")
        return {"experts": experts, "syn_lr": float(self.lr.detach()), "image_change": float(moved),
                "student_steps": self.config.syn_steps, "expert_epochs": self.config.expert_epochs}
