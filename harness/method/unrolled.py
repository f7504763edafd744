"""The outer loop shared by every method that differentiates through unrolled inner training.

A subclass only says how many inner steps to run and how many of them to differentiate at
each outer step (:meth:`UnrolledMethod.plan`); this class does the rest, as the official
RaT-BPTT code does:

1. a fresh inner network (new random init) and a mini-batch schedule over the synthetic set;
2. the outer objective: the cross entropy on a real batch (optionally augmented) at the final
   parameters (:meth:`UnrolledMethod.outer_objective`);
3. the meta-gradient from ``harness.engine.meta_gradient``;
4. the outer update, a chain of transforms (:mod:`harness.method.outer_update`): the images'
   meta-gradient clipped to ``clip_factor`` x an EMA of its past norms (the current norm
   enters the EMA first); an outer Adam step on the images (and, if learned, the soft labels
   at ``outer_lr / label_lr_scale`` and the log inner lr); labels kept >= 0. A wrapper adds
   its own transforms (:meth:`UnrolledMethod.add_outer_transform`: Boost-DD's row scale).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness.core.errors import ConfigError
from harness.core.process import tf32
from harness.core.rng import Stream, seed_from, step_seed
from harness.engine import (FunctionalModel, MetaGradient, RealBatchLoss, Synthetic, Trajectories, UnrollOptions,
                            class_balanced_schedule, meta_gradient, stack_schedules)
from harness.engine.config import EngineConfig
from harness.engine.cudagraphs import StepGraphs
from harness.engine.optim import InnerOptimizerConfig, make_inner_optimizer, optimizer_without_lr
from harness.engine.outer import OuterObjective
from harness.method.base import DistilledSet, DistillTask, Method
from harness.method.outer_update import (Transform, adam, adam_state_from_torch, apply_updates, chain,
                                         clip_to_ema_norm, ema_state, keep_non_negative, pull_back_basis)
from harness.models import AugmentConfig, augment, create_model, reinitialize
from harness.models.batched import BatchedConvNet

__all__ = ["EngineConfig", "ParameterizationConfig", "UnrollConfig", "UnrolledMethod", "check_window",
           "uniform_unroll"]


class ParameterizationConfig(BaseModel):
    """How the synthetic images are parameterized for the outer optimizer.

    ``pixels``: every pixel is a parameter. ``linear_basis``: the N images are linear
    combinations of K shared basis images, ``X = C B`` (C: [N, K] coefficients, B: [K, D]),
    both learned, as in the RaT-BPTT paper's linear-basis variant. Initialised from the
    initial images by a truncated SVD (exact when K >= their rank), so both start from the
    same set; the meta-gradient in image space is pulled back through ``C B`` by autograd.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["pixels", "linear_basis"] = "pixels"
    bases: int | None = Field(None, description="linear_basis: K, the number of basis images (<= N and <= pixels)")

    @model_validator(mode="after")
    def _check(self) -> "ParameterizationConfig":
        if self.kind == "linear_basis" and (self.bases is None or self.bases < 1):
            raise ValueError(f"linear_basis needs bases >= 1, got {self.bases}")
        if self.kind == "pixels" and self.bases is not None:
            raise ValueError("bases applies to kind = 'linear_basis' only")
        return self


class UnrollConfig(BaseModel):
    """Settings shared by the unrolled methods; defaults from the RaT-BPTT code (CIFAR-10, IPC 10)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    inner: InnerOptimizerConfig = InnerOptimizerConfig(name="adam", lr=1e-3)
    batch_per_class: int | None = Field(None, description="synthetic images per class per inner step; None = all")
    classes_per_step: int | None = Field(None, description="classes drawn per inner step; None = all")
    real_batch: int = 5000
    outer_lr: float = 1e-3
    outer_betas: tuple[float, float] = (0.9, 0.999)
    outer_eps: float = 1e-8
    clip_ema: float | None = Field(0.9, description="EMA coefficient of the meta-gradient norm; None = no clipping")
    clip_factor: float = 2.0
    learn_labels: bool = False
    label_lr_scale: float = 1.0
    learn_lr: bool = False
    lr_outer_lr: float = 1e-3  # Adam lr of log(inner lr)
    init: Literal["gaussian", "real"] = "gaussian"
    init_norm: float = 1.0  # gaussian init: every image scaled to this L2 norm (the official unit sphere)
    syn_augment: AugmentConfig = AugmentConfig()
    real_augment: AugmentConfig = AugmentConfig()
    engine: EngineConfig = EngineConfig()
    parameterization: ParameterizationConfig = ParameterizationConfig()

    @model_validator(mode="after")
    def _check_shared(self) -> "UnrollConfig":
        positive = {"real_batch": self.real_batch, "outer_lr": self.outer_lr, "clip_factor": self.clip_factor,
                    "label_lr_scale": self.label_lr_scale, "lr_outer_lr": self.lr_outer_lr,
                    "init_norm": self.init_norm}
        for name in ("batch_per_class", "classes_per_step"):
            if getattr(self, name) is not None:
                positive[name] = getattr(self, name)
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if self.clip_ema is not None and not 0 <= self.clip_ema < 1:
            raise ValueError(f"clip_ema must be in [0, 1), got {self.clip_ema}")
        return self


def _factorize(images: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(C, B)`` with ``C @ B`` the best rank-``rank`` approximation of the flattened images."""
    flat = images.reshape(images.shape[0], -1)
    if rank > min(flat.shape):
        raise ConfigError(f"linear basis of {rank} images for {flat.shape[0]} images of {flat.shape[1]} pixels: "
                          f"at most {min(flat.shape)}", field="parameterization.bases")
    U, S, Vh = torch.linalg.svd(flat.double(), full_matrices=False)
    coeffs = (U[:, :rank] * S[:rank]).to(images.dtype)
    return coeffs.contiguous().requires_grad_(), Vh[:rank].to(images.dtype).contiguous().requires_grad_()


def uniform_unroll(low: int, high: int, gen: torch.Generator) -> int:
    """An unroll length drawn uniformly from [low, high] (RaT-BPTT's draw)."""
    return int(torch.randint(low, high + 1, (1,), generator=gen))


def check_window(window: int, unroll: int, window_name: str = "window", unroll_name: str = "unroll") -> None:
    if window < 1:
        raise ValueError(f"{window_name} must be >= 1, got {window}")
    if unroll < 1:
        raise ValueError(f"{unroll_name} must be >= 1, got {unroll}")
    if window > unroll:
        raise ValueError(f"{window_name} ({window}) must be <= {unroll_name} ({unroll})")


class UnrolledMethod(Method):
    """Base class: subclasses implement :meth:`plan` (and may use the :meth:`observe` hook)."""

    config: UnrollConfig
    # Set by the runner for long outer steps: ``progress(done, total, phase)`` per inner step.
    inner_progress = None

    def plan(self, step: int, gen: torch.Generator) -> tuple[int, int]:
        """``(N, M)`` for this outer step: run N inner steps, differentiate the last M."""
        raise NotImplementedError

    def observe(self, step: int, result: MetaGradient) -> dict[str, float]:
        """Hook called with every meta-gradient before the outer update; returns extra metrics."""
        del step, result
        return {}

    def curvature(self, step: int):
        """Optional Hessian-vector-product approximation for the engine's reverse pass."""
        del step
        return None

    def outer_objective(self, step: int, gen: torch.Generator) -> OuterObjective:
        """The outer objective of outer step ``step`` (one trajectory's), drawn from ``gen``: by
        default the cross entropy on a real batch. With K trajectories the K objectives are
        stacked by their class's ``stacked``."""
        del step
        x, y = self._real_batch(gen)
        return RealBatchLoss(x, y, self.config.engine.real_chunk)

    # ------------------------------------------------------------------ checks and setup

    tiny_config: ClassVar[dict[str, Any] | None] = {"unroll": 8, "window": 4}

    def check(self, task: DistillTask, *, ipc: int | None = None) -> None:
        """What :meth:`setup` would refuse, found without setting up: the network builds for the
        data, an init from real images has enough of them, a linear basis fits the set.
        ``ipc``: a wrapper's view (Boost-DD's prefix of blocks)."""
        cfg = self.config
        ipc = task.ipc if ipc is None else ipc
        network = create_model(task.model, task.image_shape, task.num_classes)  # a ValueError names the problem
        if cfg.engine.trajectories > 1:
            try:
                BatchedConvNet(network, cfg.engine.trajectories)
            except ValueError as exc:
                raise ConfigError(str(exc), field="engine.trajectories") from None
        if cfg.init == "real":
            task.check_real_per_class(ipc)
        if cfg.parameterization.kind == "linear_basis":
            rows, pixels = task.num_classes * ipc, math.prod(task.image_shape)
            if cfg.parameterization.bases > min(rows, pixels):
                raise ConfigError(f"linear basis of {cfg.parameterization.bases} images for {rows} images of "
                                  f"{pixels} pixels: at most {min(rows, pixels)}", field="parameterization.bases")

    def initial_set(self, task: DistillTask) -> DistilledSet:
        """The set a run on ``task`` starts from (drawn from the run's SYN_INIT stream), on the CPU;
        one-hot float labels when the labels are learned."""
        gen = torch.Generator().manual_seed(step_seed(task.seed, 0, Stream.SYN_INIT))
        images, labels = self._init_images(task, task.ipc, gen)
        if self.config.learn_labels:
            labels = torch.nn.functional.one_hot(labels, task.num_classes).to(task.dtype)
        return DistilledSet(images, labels, task.num_classes, task.ipc)

    def setup(self, task: DistillTask, initial: DistilledSet | None = None) -> None:
        """Start from :meth:`initial_set`, or from ``initial``."""
        cfg = self.config
        self.check(task, ipc=None if initial is None else initial.ipc)
        self.task = task
        self.model = FunctionalModel(task.new_model())
        self.optimizer = make_inner_optimizer(cfg.inner)
        self._start_from(self.initial_set(task) if initial is None else initial)
        self.extra_transforms: list[tuple[str, Transform]] = []
        self.outer_update = self._outer_chain()
        self.outer_state = self.outer_update.init(self.outer_params())
        trajectories = cfg.engine.trajectories
        self.batched = None if trajectories == 1 else FunctionalModel(
            BatchedConvNet(self.model.module, trajectories).to(task.device, task.dtype))
        self.step_plan: Trajectories | None = None  # this outer step's (N_k, M_k)
        # CUDA graphs pay off only where launches dominate: on a GPU. Captured once per run.
        self.graphs = StepGraphs() if cfg.engine.cuda_graphs and task.device.type == "cuda" else None

    def _start_from(self, start: DistilledSet) -> None:
        """The learned tensors from ``start``: images (or their linear basis), labels, log inner lr."""
        cfg, task = self.config, self.task
        images, labels = start.images, start.labels
        self.ipc = images.shape[0] // task.num_classes
        self.images = images.detach().clone().to(task.device, task.dtype).requires_grad_()
        if cfg.learn_labels and not labels.is_floating_point():
            labels = torch.nn.functional.one_hot(labels, task.num_classes)
        self.labels = labels.detach().clone().to(task.device)
        if cfg.learn_labels:
            self.labels = self.labels.to(task.dtype).requires_grad_()
        lr0 = start.lr if cfg.learn_lr and start.lr is not None else cfg.inner.lr
        self.log_lr = torch.tensor(math.log(lr0), device=task.device, dtype=task.dtype)
        self.log_lr.requires_grad_(cfg.learn_lr)
        self.basis: tuple[torch.Tensor, torch.Tensor] | None = None  # (C, B) of a linear basis
        if cfg.parameterization.kind == "linear_basis":
            self.basis = _factorize(self.images.detach(), cfg.parameterization.bases)
            self.images = self._images_from_basis()

    def outer_params(self) -> dict[str, torch.Tensor]:
        """The tensors the outer update changes, by name (the outer Adam's parameter groups, in order)."""
        params = {"images": self.images} if self.basis is None else {"coeffs": self.basis[0], "bases": self.basis[1]}
        if self.config.learn_labels:
            params["labels"] = self.labels
        if self.config.learn_lr:
            params["log_lr"] = self.log_lr
        return params

    def _outer_chain(self) -> Transform:
        cfg = self.config
        lrs = {"images": cfg.outer_lr, "coeffs": cfg.outer_lr, "bases": cfg.outer_lr,
               "labels": cfg.outer_lr / cfg.label_lr_scale, "log_lr": cfg.lr_outer_lr}
        stages = [] if cfg.clip_ema is None else [("clip", clip_to_ema_norm(cfg.clip_ema, cfg.clip_factor))]
        if self.basis is not None:
            stages.append(("basis", pull_back_basis()))
        stages += [("adam", adam(lrs, cfg.outer_betas, cfg.outer_eps)), *self.extra_transforms]
        if cfg.learn_labels:
            stages.append(("labels", keep_non_negative("labels")))
        return chain(*stages)

    def add_outer_transform(self, name: str, transform: Transform) -> None:
        """Add ``transform`` to the outer update after Adam (before the labels' clamp): a wrapper's
        hook (Boost-DD's row scale). Call it after :meth:`setup`, before the first step: the
        update's state starts afresh."""
        self.extra_transforms.append((name, transform))
        self.outer_update = self._outer_chain()
        self.outer_state = self.outer_update.init(self.outer_params())

    def _images_from_basis(self) -> torch.Tensor:
        """``C B`` reshaped to images: a fresh leaf the engine differentiates with respect to."""
        coeffs, bases = self.basis
        return (coeffs @ bases).detach().view_as(self.images).requires_grad_()

    def _init_images(self, task: DistillTask, ipc: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(task.num_classes).repeat_interleave(ipc)
        images = task.initial_images(ipc, self.config.init, gen, norm=self.config.init_norm)
        return images.cpu().to(task.dtype), labels

    # ------------------------------------------------------------------ one outer step

    def step(self, step: int) -> dict[str, float]:
        result, info = self.meta_gradient(step)
        metrics = self.observe(step, result)
        grad_norm = self.apply(result)
        return {"outer_loss": float(result.outer_loss), "outer_acc": float(result.outer_metric),
                "grad_norm": grad_norm, **info, **metrics}

    def meta_gradient(self, step: int) -> tuple[MetaGradient, dict[str, float]]:
        """Outer step ``step``'s meta-gradient, from the current synthetic set (nothing is updated):
        one trajectory's, or the mean of ``engine.trajectories`` trajectories' computed as one batch."""
        count = self.config.engine.trajectories
        if count == 1:
            return self.trajectory_meta_gradient(step, 0)
        draws = []
        for k in range(count):
            draws.append(self._draw(step, k))
            self.batched.module.load_block(k, self.model.module)  # trajectory k's fresh init
        plan = Trajectories(tuple(d[0] for d in draws), tuple(d[1] for d in draws))
        self.step_plan = plan
        objective = type(draws[0][3]).stacked([d[3] for d in draws])
        result = self._unroll(step, self.batched, stack_schedules([d[2] for d in draws]), plan.window, objective,
                              plan)
        return result, {"unroll": sum(plan.unrolls) / count, "window": sum(plan.windows) / count}

    def trajectory_meta_gradient(self, step: int, k: int) -> tuple[MetaGradient, dict[str, float]]:
        """Trajectory k of outer step ``step`` alone (k = 0 is the one a single-trajectory run
        takes); with K trajectories the outer step uses the mean of k = 0 .. K-1."""
        n_steps, window, schedule, objective = self._draw(step, k)
        self.step_plan = Trajectories((n_steps,), (window,))
        result = self._unroll(step, self.model, schedule, window, objective)
        return result, {"unroll": n_steps, "window": window}

    def _draw(self, step: int, k: int):
        """Trajectory k's draws from its own streams: ``(N, M, schedule, objective)``, and its
        network init left in ``self.model``."""
        seed = self.task.seed
        gen = torch.Generator().manual_seed(
            step_seed(seed, step) if k == 0 else seed_from(seed, step, Stream.TRAJECTORY, k))
        n_steps, window = self.plan(step, gen)
        check_window(window, n_steps)
        init = step_seed(seed, step, Stream.NET_INIT) if k == 0 else seed_from(seed, step, Stream.TRAJECTORY_INIT, k)
        reinitialize(self.model.module, init)
        schedule = self.schedule(n_steps, gen)
        return n_steps, window, schedule, self.outer_objective(step, gen)

    def _unroll(self, step, model, schedule, window, objective, trajectories=None) -> MetaGradient:
        cfg, task = self.config, self.task
        self.lr = self.log_lr.detach().exp().requires_grad_(cfg.learn_lr)
        curvature = self.curvature(step)
        engine = cfg.engine
        graphs = self.graphs if engine.mode == "recompute" and curvature is None else None
        options = UnrollOptions(mode=engine.mode, curvature=curvature, channels_last=engine.channels_last,
                                steps_factory=graphs.factory if graphs else None,
                                offload_snapshots=engine.offload_snapshots and task.device.type == "cuda",
                                progress=self.inner_progress, trajectories=trajectories)
        with tf32(engine.tf32 and task.device.type == "cuda"):
            synthetic = Synthetic(self.images, self.labels, self.lr)
            return meta_gradient(model, model.parameters(), self.optimizer, synthetic, schedule, window, objective,
                                 options)

    def longest_trajectory_norms(self, result: MetaGradient) -> torch.Tensor:
        """``||g_t||`` at every step of this outer step's longest trajectory (no padding steps)."""
        norms = result.grad_norms
        return norms if norms.dim() == 1 else norms[:, self.step_plan.longest]

    def schedule(self, n_steps: int, gen: torch.Generator):
        """The synthetic mini-batches (and augmentations) of ``n_steps`` inner steps, drawn from ``gen``."""
        cfg, task = self.config, self.task
        return class_balanced_schedule(
            n_steps, task.num_classes, self.ipc, per_class=cfg.batch_per_class,
            classes_per_step=cfg.classes_per_step, generator=gen, device=task.device,
            augment=cfg.syn_augment, image_size=task.image_shape[-1])

    def _real_batch(self, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        data = self.task.data
        n = data.train_x.shape[0]
        idx = torch.randperm(n, generator=gen)[: min(self.config.real_batch, n)].to(data.train_x.device)
        x = augment(data.train_x[idx], self.config.real_augment, gen)
        return x, data.train_y[idx]

    def apply(self, result: MetaGradient) -> float:
        """The outer update from ``result`` (the chain of transforms); returns the images' meta-gradient norm."""
        grads = {"images": result.images}
        if self.config.learn_labels:
            grads["labels"] = result.labels
        if self.config.learn_lr:
            grads["log_lr"] = result.lr * self.lr.detach()  # d/dlog(lr) = lr * d/dlr
        params = self.outer_params()
        updates, self.outer_state = self.outer_update.update(grads, self.outer_state, params)
        apply_updates(params, updates)
        if self.basis is not None:
            self.images = self._images_from_basis()
        return float(result.images.norm())

    # ------------------------------------------------------------------ results and checkpoints

    def divergence(self, metrics: dict[str, float]) -> str | None:
        """The outer loss or meta-gradient norm is not finite, or the synthetic set (or its soft
        labels, or the learned lr) has gone non-finite."""
        reason = super().divergence(metrics)
        if reason is None:
            for name, t in (("synthetic images", self.images), ("soft labels", self.labels), ("inner lr", self.log_lr)):
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    return f"non-finite {name}"
        return reason

    def learned_lr_optimizer(self) -> InnerOptimizerConfig | None:
        return self.config.inner if self.config.learn_lr else None

    def distilled(self) -> DistilledSet:
        lr = float(self.log_lr.detach().exp()) if self.config.learn_lr else None
        return DistilledSet(self.images.detach().cpu(), self.labels.detach().cpu(), self.task.num_classes,
                            self.ipc, lr=lr, lr_optimizer=optimizer_without_lr(self.config.inner) if lr else None)

    def state_dict(self) -> dict[str, Any]:
        """A snapshot (copies, on the CPU): the run goes on updating its own tensors in place."""
        state = {"images": self.images, "labels": self.labels, "log_lr": self.log_lr,
                 "outer_update": self.outer_state, "basis": None if self.basis is None else list(self.basis)}
        # copy=True: one copy of each tensor whatever its device (the other values are fresh or immutable).
        return torch.utils._pytree.tree_map_only(torch.Tensor, lambda t: t.detach().to("cpu", copy=True), state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.images.copy_(state["images"])
            self.labels.copy_(state["labels"])
            self.log_lr.copy_(state["log_lr"])
            if self.basis is not None:
                for mine, saved in zip(self.basis, state["basis"]):
                    mine.copy_(saved)
        if self.basis is not None:
            self.images = self._images_from_basis()
        saved = state["outer_update"] if "outer_update" in state else self._outer_state_of_torch_adam(state)
        # Each saved tensor where (and as what) a fresh state keeps it: the structures must match.
        self.outer_state = torch.utils._pytree.tree_map(lambda fresh, kept: kept.to(fresh.device, fresh.dtype),
                                                        self.outer_update.init(self.outer_params()), saved)

    def _outer_state_of_torch_adam(self, state: dict[str, Any]) -> dict[str, Any]:
        """The chain's state from a checkpoint written before it (a ``torch.optim.Adam`` state dict
        under ``outer_opt``, the clipping EMA under ``grad_norm_ema``)."""
        outer = self.outer_update.init(self.outer_params())
        outer["adam"] = adam_state_from_torch(state["outer_opt"], list(self.outer_params()), outer["adam"])
        if "clip" in outer:
            outer["clip"] = ema_state(state["grad_norm_ema"])
        return outer
