"""The outer loop shared by every method that differentiates through unrolled inner training.

A subclass only says how many inner steps to run and how many of them to differentiate at
each outer step (:meth:`UnrolledMethod.plan`); this class does the rest, as the official
RaT-BPTT code does:

1. a fresh inner network (new random init) and a mini-batch schedule over the synthetic set;
2. a real batch (optionally augmented) for the outer loss;
3. the meta-gradient from ``harness.engine.meta_gradient``;
4. the images' meta-gradient clipped to ``clip_factor`` x an EMA of its past norms
   (the current norm enters the EMA first);
5. an outer Adam step on the images (and, if learned, the soft labels at
   ``outer_lr / label_lr_scale`` and the log inner lr), labels clipped at >= 0.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

from harness.core.errors import ConfigError
from harness.core.process import tf32
from harness.core.rng import Stream, seed_from, step_seed
from harness.engine import (FunctionalModel, MetaGradient, Trajectories, class_balanced_schedule, meta_gradient,
                            stack_schedules)
from harness.engine.cudagraphs import StepGraphs
from harness.engine.optim import InnerOptimizerConfig, make_inner_optimizer, optimizer_without_lr
from harness.method.base import DistilledSet, DistillTask, Method
from harness.models import AugmentConfig, augment, create_model, reinitialize
from harness.models.batched import BatchedConvNet


class EngineConfig(BaseModel):
    """How the meta-gradient is computed: exact in every setting (see ``harness.engine``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["full", "recompute"] = Field(
        "full", description="full: one graph through the window (memory grows with M); "
                            "recompute: one step's graph at a time (memory flat in M)")
    real_chunk: int | None = Field(None, description="outer loss on the real batch in chunks of this size")
    cuda_graphs: bool = Field(True, description="recompute mode on CUDA: replay the steps as captured CUDA graphs")
    tf32: bool = Field(False, description="CUDA: TF32 matmuls/convolutions (faster, ~1e-3 relative error)")
    channels_last: bool = Field(False, description="feed the network channels-last batches (same numbers)")
    offload_snapshots: bool = Field(True, description="recompute mode on CUDA: keep the window's (params, state) "
                                                      "snapshots in pinned host memory, so device memory is flat in M")
    trajectories: int = Field(1, description="K inner trajectories per outer step (own init, schedule, N and M), "
                                             "run as one batched network; the outer step uses their mean "
                                             "meta-gradient. 1 = one trajectory, as every paper does")

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        # A field added after records were written is left out at the default that reproduces
        # them, so the run ids (hashes of the dumped config) of earlier records stay valid.
        data = handler(self)
        if isinstance(data, dict) and data.get("trajectories") == 1:
            del data["trajectories"]
        return data

    @model_validator(mode="after")
    def _check(self) -> "EngineConfig":
        if self.real_chunk is not None and self.real_chunk <= 0:
            raise ValueError(f"real_chunk must be > 0, got {self.real_chunk}")
        if self.trajectories < 1:
            raise ValueError(f"trajectories must be >= 1, got {self.trajectories}")
        return self


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

    # ------------------------------------------------------------------ checks and setup

    tiny_config: ClassVar[dict[str, Any] | None] = {"unroll": 8, "window": 4}

    def check(self, task: DistillTask, *, ipc: int | None = None, scaled_rows: bool = False) -> None:
        """What :meth:`setup` would refuse, found without setting up: the network builds for the
        data, an init from real images has enough of them, a linear basis fits the set (and no
        per-row update scale, which it cannot honour). ``ipc``/``scaled_rows``: a wrapper's view."""
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
            if scaled_rows:
                raise ConfigError("a linear basis shares its basis images across rows, so per-row update "
                                  "scales (Boost-DD's beta) cannot hold rows fixed", field="parameterization")
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

    def setup(self, task: DistillTask, initial: DistilledSet | None = None,
              update_scale: torch.Tensor | None = None) -> None:
        """Start from :meth:`initial_set`, or from ``initial``; ``update_scale[i]`` multiplies row i's updates."""
        cfg = self.config
        self.check(task, ipc=None if initial is None else initial.ipc, scaled_rows=update_scale is not None)
        self.task = task
        self.model = FunctionalModel(task.new_model())
        self.optimizer = make_inner_optimizer(cfg.inner)
        start = self.initial_set(task) if initial is None else initial
        images, labels = start.images, start.labels
        self.ipc = images.shape[0] // task.num_classes
        self.images = images.detach().clone().to(task.device, task.dtype).requires_grad_()
        if cfg.learn_labels and not labels.is_floating_point():
            labels = torch.nn.functional.one_hot(labels, task.num_classes)
        self.labels = labels.detach().clone().to(task.device)
        if cfg.learn_labels:
            self.labels = self.labels.to(task.dtype).requires_grad_()
        lr0 = initial.lr if cfg.learn_lr and initial is not None and initial.lr is not None else cfg.inner.lr
        self.log_lr = torch.tensor(math.log(lr0), device=task.device, dtype=task.dtype)
        self.log_lr.requires_grad_(cfg.learn_lr)
        self.update_scale = None if update_scale is None else update_scale.to(task.device, task.dtype)
        self.basis: tuple[torch.Tensor, torch.Tensor] | None = None  # (C, B) of a linear basis
        if cfg.parameterization.kind == "linear_basis":
            self.basis = _factorize(self.images.detach(), cfg.parameterization.bases)
            self.images = self._images_from_basis()
        outer_params = list(self.basis) if self.basis is not None else [self.images]
        groups = [{"params": outer_params, "lr": cfg.outer_lr}]
        if cfg.learn_labels:
            groups.append({"params": [self.labels], "lr": cfg.outer_lr / cfg.label_lr_scale})
        if cfg.learn_lr:
            groups.append({"params": [self.log_lr], "lr": cfg.lr_outer_lr})
        self.outer_opt = torch.optim.Adam(groups, betas=cfg.outer_betas, eps=cfg.outer_eps)
        self.grad_norm_ema: float | None = None
        trajectories = cfg.engine.trajectories
        self.batched = None if trajectories == 1 else FunctionalModel(
            BatchedConvNet(self.model.module, trajectories).to(task.device, task.dtype))
        self.step_plan: Trajectories | None = None  # this outer step's (N_k, M_k)
        # CUDA graphs pay off only where launches dominate: on a GPU. Captured once per run.
        self.graphs = StepGraphs() if cfg.engine.cuda_graphs and task.device.type == "cuda" else None

    def _images_from_basis(self) -> torch.Tensor:
        """``C B`` reshaped to images: a fresh leaf the engine differentiates with respect to."""
        coeffs, bases = self.basis
        return (coeffs @ bases).detach().view_as(self.images).requires_grad_()

    def _init_images(self, task: DistillTask, ipc: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(task.num_classes).repeat_interleave(ipc)
        if self.config.init == "real":
            images, _ = task.real_per_class(ipc, gen)
            return images.cpu(), labels
        images = torch.randn(task.num_classes * ipc, *task.image_shape, generator=gen, dtype=torch.float64)
        norms = images.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        return (images / norms * self.config.init_norm).to(task.dtype), labels

    # ------------------------------------------------------------------ one outer step

    def step(self, step: int) -> dict[str, float]:
        result, info = self.meta_gradient(step)
        metrics = self.observe(step, result)
        grad_norm = self.apply(result)
        return {"outer_loss": float(result.outer_loss), "outer_acc": float(result.outer_accuracy),
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
        real_x, real_y = torch.cat([d[3] for d in draws]), torch.cat([d[4] for d in draws])
        result = self._unroll(step, self.batched, stack_schedules([d[2] for d in draws]), plan.window, real_x, real_y,
                              plan)
        return result, {"unroll": sum(plan.unrolls) / count, "window": sum(plan.windows) / count}

    def trajectory_meta_gradient(self, step: int, k: int) -> tuple[MetaGradient, dict[str, float]]:
        """Trajectory k of outer step ``step`` alone (k = 0 is the one a single-trajectory run
        takes); with K trajectories the outer step uses the mean of k = 0 .. K-1."""
        n_steps, window, schedule, real_x, real_y = self._draw(step, k)
        self.step_plan = Trajectories((n_steps,), (window,))
        result = self._unroll(step, self.model, schedule, window, real_x, real_y)
        return result, {"unroll": n_steps, "window": window}

    def _draw(self, step: int, k: int):
        """Trajectory k's draws from its own streams: ``(N, M, schedule, real_x, real_y)``, and its
        network init left in ``self.model``."""
        seed = self.task.seed
        gen = torch.Generator().manual_seed(
            step_seed(seed, step) if k == 0 else seed_from(seed, step, Stream.TRAJECTORY, k))
        n_steps, window = self.plan(step, gen)
        check_window(window, n_steps)
        init = step_seed(seed, step, Stream.NET_INIT) if k == 0 else seed_from(seed, step, Stream.TRAJECTORY_INIT, k)
        reinitialize(self.model.module, init)
        schedule = self.schedule(n_steps, gen)
        real_x, real_y = self._real_batch(gen)
        return n_steps, window, schedule, real_x, real_y

    def _unroll(self, step, model, schedule, window, real_x, real_y, trajectories=None) -> MetaGradient:
        cfg, task = self.config, self.task
        self.lr = self.log_lr.detach().exp().requires_grad_(cfg.learn_lr)
        curvature = self.curvature(step)
        engine = cfg.engine
        graphs = self.graphs if engine.mode == "recompute" and curvature is None else None
        with tf32(engine.tf32 and task.device.type == "cuda"):
            return meta_gradient(
                model, model.parameters(), self.optimizer, self.lr, self.images, self.labels, schedule,
                window, real_x, real_y, mode=engine.mode, real_chunk=engine.real_chunk, curvature=curvature,
                channels_last=engine.channels_last, steps_factory=graphs.factory if graphs else None,
                offload_snapshots=engine.offload_snapshots and task.device.type == "cuda",
                progress=self.inner_progress, trajectories=trajectories)

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
        """The outer update from ``result`` (clipped, Adam); returns the images' meta-gradient norm."""
        cfg, lr = self.config, self.lr
        grad = result.images
        norm = float(grad.norm())
        if cfg.clip_ema is not None:
            self.grad_norm_ema = norm if self.grad_norm_ema is None else (
                cfg.clip_ema * self.grad_norm_ema + (1 - cfg.clip_ema) * norm)
            max_norm = cfg.clip_factor * self.grad_norm_ema
            if norm > max_norm:
                grad = grad * (max_norm / (norm + 1e-6))  # the same 1e-6 as torch's clip_grad_norm_
        if self.basis is None:
            self.images.grad = grad
        else:  # pull the image-space gradient back to the coefficients and the bases
            coeffs, bases = self.basis
            torch.autograd.backward(coeffs @ bases, grad.reshape(coeffs.shape[0], -1))
        if cfg.learn_labels:
            self.labels.grad = result.labels
        if cfg.learn_lr:
            self.log_lr.grad = result.lr * lr.detach()  # d/dlog(lr) = lr * d/dlr
        before = self.images.detach().clone() if self.update_scale is not None else None
        labels_before = self.labels.detach().clone() if before is not None and cfg.learn_labels else None
        self.outer_opt.step()
        self.outer_opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            if before is not None:
                scale = self.update_scale.view(-1, *([1] * (self.images.dim() - 1)))
                self.images.copy_(before + scale * (self.images - before))
            if labels_before is not None:  # a row's soft label is part of the row
                self.labels.copy_(labels_before + self.update_scale[:, None] * (self.labels - labels_before))
            if cfg.learn_labels:
                self.labels.clamp_(min=0)
        if self.basis is not None:
            self.images = self._images_from_basis()
        return norm

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
                 "outer_opt": self.outer_opt.state_dict(), "grad_norm_ema": self.grad_norm_ema,
                 "basis": None if self.basis is None else list(self.basis)}
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
        self.outer_opt.load_state_dict(state["outer_opt"])
        self.grad_norm_ema = state["grad_norm_ema"]
