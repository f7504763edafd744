"""AT-BPTT (Li et al., "Beyond Random: Automatic Inner-Loop Optimization in Dataset
Distillation", NeurIPS 2025, arXiv 2510.04838): truncation that follows the inner network's
learning dynamics instead of RaT-BPTT's uniform draw. Every component can be switched off.

1. **Gradient-norm probe.** ``||g_t||``, the inner loss's gradient norm at step t, comes for
   free from every trajectory the engine runs (``MetaGradient.grad_norms``); a table over
   t in [0, T) keeps the latest value of each step (refreshed every ``probe_every`` outer
   steps). Steps never visited yet, and every ``full_probe_every`` outer steps all steps, are
   filled by a plain T-step trajectory without a graph.
2. **Three stages, one support.** The window start t is drawn with the paper's
   P(t) ~ exp(+g^_t / tau) early (where the network learns fast), uniformly in the middle, and
   P(t) ~ exp(-g^_t / tau) late, where g^_t = ||g_t|| / mean_s ||g_s||. *Deviation:* the paper
   uses the raw norm; divided by its mean, tau means the same on every dataset and network
   (with raw CIFAR-size norms tau = 1 is an argmax). The paper leaves open how the start and
   the adaptive window W*(t) fit together; here every stage draws t only among the starts
   whose own window fits, S = {t in [0, T) : t + W*(t) <= T}, renormalised there, and trains
   exactly W*(t) steps from t (N = t + W*(t)): the window belongs to the step it starts at,
   and no start is piled up by clamping. With the adaptive window off, S = [0, T - W] and the
   middle stage is exactly RaT-BPTT's draw (N ~ U[W, T]).
3. **Stage switch.** The stage moves forward when the epoch's accuracy gains less than
   ``gain_threshold`` points for ``patience_fraction`` of the epochs in a row (``>=``: the
   public code compares an int counter with a float by ``==`` and never switches for some T),
   or at outer-step fractions (``stage_switch = "steps"``). ``stage_signal = "probe"`` (default)
   measures the epoch's accuracy once per epoch on a network trained the full T inner steps
   (the probe trajectory, which also refreshes the norm table), so the signal does not depend
   on the unroll lengths the current stage itself draws; ``"outer"`` averages the outer steps'
   own accuracies as the public code does.
4. **Adaptive window.** W*(t) = W - d + 2 d eta(t), rounded and clamped to [1, T], where
   eta(t) in [0, 1] grows with the gradient-norm change D_t = | ||g_t|| - ||g_{t-1}|| |
   (D_0 = 0): ``window_eta = "softmax"`` takes p = softmax(D / (tau_w mean(D))) min-max scaled
   to [0, 1] (the paper's softmax with temperature, made scale-free); ``"rank"`` takes
   rank(D_t) / T as the public code does.
5. **Low-rank Hessian** (``low_rank_hessian``, recompute mode; an ablation, **off by
   default**). In the reverse pass the exact Hessian-vector product H_t v of the inner loss is
   replaced by a rank-k randomized eigen-approximation built from exact HVPs
   (``harness.engine.lowrank.LowRankCurvature``); the optimizer's Jacobians and the mixed term
   d^2 L_t / dtheta dx stay exact. Why off: ddbench's recompute mode already keeps memory flat
   in the window (the paper's 63% saving is against RaT-BPTT run with ``higher``'s full graph),
   and the exact H_t v costs nothing extra there: it comes out of the same double backward
   pass that the mixed term (without which the data get no gradient) needs at every step. The
   approximation can only add (k + p)(q + 2) HVPs per build and keep CUDA graphs from
   capturing the reverse step; ``benchmarks/unroll.py`` measures it.
6. **Patch-wise semantic preservation** (``patch_semantic``, off by default, images of 64x64
   and above): lambda x the global and per-patch prototype distance of
   ``harness.method.prototypes`` (n x n grid, the inner network at the end of the unroll) is
   added to the outer loss; its gradient in the images joins the meta-gradient.

Defaults: CIFAR-10 IPC 10 of the public code's README (W = 40, T = 200, d = 10, inner and
outer Adam at 1e-3, real batch 5000).
"""

from __future__ import annotations

import collections
import copy
import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import Field, model_validator

from harness import (EngineConfig, MetaGradient, Stream, UnrollConfig, UnrolledMethod, check_window, register_method,
                     step_seed, uniform_unroll)
from harness.engine import accuracy, plain_trajectory
from harness.engine.lowrank import LowRankCurvature
from harness.method.prototypes import prototype_loss
from harness.models import augment, reinitialize

EARLY, MIDDLE, LATE = 0, 1, 2
STAGE_NAMES = ("early", "middle", "late")


class ATBPTTConfig(UnrollConfig):
    unroll: int = 200  # T
    window: int = 40  # W
    window_delta: int = 10  # d
    engine: EngineConfig = EngineConfig(mode="recompute")
    # 1. probe
    probe_every: int = 1
    full_probe_every: int | None = None
    # 2-3. stages
    stages: bool = True
    tau: float = 1.0  # on norms divided by their mean
    stage_switch: Literal["accuracy", "steps"] = "accuracy"
    stage_signal: Literal["probe", "outer"] = "probe"
    gain_threshold: float = 1.5  # accuracy points
    patience_fraction: float = 0.05  # of the outer epochs
    steps_per_epoch: int | None = Field(None, description="outer steps per epoch; None = one pass over the real data")
    stage_boundaries: tuple[float, float] = (1 / 3, 2 / 3)  # fractions of the outer steps (stage_switch="steps")
    # 4. adaptive window
    adaptive_window: bool = True
    window_eta: Literal["softmax", "rank"] = "softmax"
    window_tau: float = 1.0
    # 5. low-rank Hessian (an ablation: see the module docstring)
    low_rank_hessian: bool = False
    hessian_rank: int = 10
    hessian_oversample: int = 5
    hessian_power_iters: int = 1
    hessian_refresh: int = 1  # every outer step trains a fresh network: rebuilt per window by default
    hessian_drift: float | None = None
    hessian_scope: Literal["window", "step"] = "window"
    # 6. patch-wise semantic preservation (high resolution)
    patch_semantic: bool = False
    patch_grid: int = 4  # n: an n x n grid of patches
    patch_weight: float = 0.1  # lambda
    patch_real_batch: int = 256  # real images of the prototypes per outer step

    @model_validator(mode="after")
    def _check(self) -> "ATBPTTConfig":
        check_window(self.window, self.unroll)
        if self.adaptive_window and not 0 <= self.window_delta < self.window:
            raise ValueError(f"window_delta must be in [0, window), got {self.window_delta}")
        for name in ("probe_every", "hessian_rank", "hessian_refresh", "patch_grid", "patch_real_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("full_probe_every", "steps_per_epoch"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("tau", "window_tau", "patience_fraction", "patch_weight"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.hessian_oversample < 0 or self.hessian_power_iters < 0:
            raise ValueError("hessian_oversample and hessian_power_iters must be >= 0")
        a, b = self.stage_boundaries
        if not 0 <= a <= b <= 1:
            raise ValueError(f"stage_boundaries must satisfy 0 <= a <= b <= 1, got {self.stage_boundaries}")
        if self.low_rank_hessian and self.engine.mode != "recompute":
            raise ValueError("low_rank_hessian needs engine.mode = 'recompute'")
        if self.engine.trajectories > 1 and (self.low_rank_hessian or self.patch_semantic):
            raise ValueError("low_rank_hessian and patch_semantic work on one trajectory: "
                             "set engine.trajectories = 1")
        return self


# --------------------------------------------------------------------------- samplers (pure)


def position_probs(norms: torch.Tensor, stage: int, tau: float, fits: torch.Tensor | None = None) -> torch.Tensor:
    """P(window start = t) over t in [0, len(norms)): exp(+-g^_t / tau) with g^ = norms / mean(norms),
    or uniform; zero where ``fits`` (a bool mask of starts whose window fits) is False, renormalised."""
    norms = norms.double()
    fits = torch.ones_like(norms, dtype=torch.bool) if fits is None else fits
    if stage == MIDDLE:
        logits = torch.zeros_like(norms)
    else:
        scale = norms.mean()
        scaled = norms / scale if scale > 0 else torch.zeros_like(norms)
        logits = (scaled if stage == EARLY else -scaled) / tau
    return torch.softmax(logits.masked_fill(~fits, -math.inf), dim=0)


def window_eta(norms: torch.Tensor, kind: str, tau: float) -> torch.Tensor:
    """eta(t) in [0, 1] from the gradient-norm change D_t = | ||g_t|| - ||g_{t-1}|| | (D_0 = 0)."""
    norms = norms.double()
    change = torch.cat([norms.new_zeros(1), (norms[1:] - norms[:-1]).abs()])
    if kind == "rank":  # the public code: position of D_t among the sorted changes, over T
        return change.argsort().argsort().double() / len(change)
    scale = change.mean()
    p = torch.softmax(change / (tau * scale) if scale > 0 else change, dim=0)
    spread = p.max() - p.min()
    return (p - p.min()) / spread if spread > 0 else torch.full_like(p, 0.5)


def adaptive_window(eta: float, window: int, delta: int, unroll: int) -> int:
    """W* = W - d + 2 d eta, rounded, clamped to [1, T]."""
    return int(min(max(round(window - delta + 2 * delta * eta), 1), unroll))


def window_sizes(norms: torch.Tensor, cfg: ATBPTTConfig) -> torch.Tensor:
    """W*(t) for every start t (``cfg.window`` everywhere when the adaptive window is off)."""
    if not cfg.adaptive_window:
        return torch.full((len(norms),), cfg.window, dtype=torch.int64)
    eta = window_eta(norms, cfg.window_eta, cfg.window_tau)
    return torch.tensor([adaptive_window(float(e), cfg.window, cfg.window_delta, cfg.unroll) for e in eta])


def start_distribution(norms: torch.Tensor, stage: int, cfg: ATBPTTConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``(P(start = t), W*(t))`` over t in [0, T): P is zero outside the starts whose own window fits."""
    windows = window_sizes(norms, cfg)
    fits = torch.arange(len(norms)) + windows <= cfg.unroll
    return position_probs(norms, stage, cfg.tau, fits), windows


# --------------------------------------------------------------------------- stages


@dataclass
class StageTracker:
    """The current stage; moves forward only (early -> middle -> late)."""

    switch: str
    steps_per_epoch: int
    threshold: float
    patience: int  # epochs in a row below the threshold
    boundaries: tuple[int, int]  # outer steps of this run (switch="steps")
    stage: int = EARLY
    seen: int = 0  # outer steps observed: a run may number its steps from elsewhere (Boost-DD's blocks)
    epoch_accs: list[float] = field(default_factory=list)
    last_epoch_acc: float | None = None
    below: int = 0
    switched_at: list[int] = field(default_factory=list)

    def ends_epoch(self) -> bool:
        """Whether the next outer step is the last of an epoch."""
        return (self.seen + 1) % self.steps_per_epoch == 0

    def update(self, step: int, accuracy: float | None) -> None:
        """Outer step ``step`` is done; ``accuracy`` (in [0, 1]) is its signal, or None when it has
        none (the probe signal is measured once per epoch). May advance the stage for the next step."""
        self.seen += 1
        if self.switch == "steps":
            target = EARLY if self.seen < self.boundaries[0] else MIDDLE if self.seen < self.boundaries[1] else LATE
            while self.stage < target:
                self._advance(step + 1)
            return
        if accuracy is not None:
            self.epoch_accs.append(100 * accuracy)
        if self.seen % self.steps_per_epoch or not self.epoch_accs:
            return
        epoch_acc = sum(self.epoch_accs) / len(self.epoch_accs)
        self.epoch_accs = []
        if self.last_epoch_acc is not None and self.stage < LATE:
            self.below = self.below + 1 if epoch_acc - self.last_epoch_acc < self.threshold else 0
            if self.below >= self.patience:
                self._advance(step + 1)
        self.last_epoch_acc = epoch_acc

    def _advance(self, at_step: int) -> None:
        self.stage = min(self.stage + 1, LATE)
        self.switched_at.append(at_step)
        self.below = 0

    def state_dict(self) -> dict:
        return copy.deepcopy({k: getattr(self, k) for k in ("stage", "seen", "epoch_accs", "last_epoch_acc",
                                                            "below", "switched_at")})

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


# --------------------------------------------------------------------------- the method


@register_method("at_bptt")
class ATBPTT(UnrolledMethod):
    """Automatic truncated BPTT: stage-wise window position, adaptive window (low-rank Hessian optional)."""

    Config = ATBPTTConfig
    tiny_config = {"unroll": 8, "window": 4, "window_delta": 1}

    def check(self, task, *, ipc=None, scaled_rows=False) -> None:
        super().check(task, ipc=ipc, scaled_rows=scaled_rows)
        size = task.image_shape[-1]
        if self.config.patch_semantic and size < 64:
            raise ValueError(f"patch_semantic is for images of 64x64 and above, not {size}x{size}")

    def setup(self, task, initial=None, update_scale=None) -> None:
        super().setup(task, initial, update_scale)
        cfg = self.config
        per_epoch = cfg.steps_per_epoch or max(1, math.ceil(task.data.train_x.shape[0] / cfg.real_batch))
        epochs = max(1, math.ceil(task.outer_steps / per_epoch))
        self.tracker = StageTracker(
            switch=cfg.stage_switch, steps_per_epoch=per_epoch,
            threshold=cfg.gain_threshold, patience=max(1, math.ceil(cfg.patience_fraction * epochs)),
            boundaries=tuple(round(f * task.outer_steps) for f in cfg.stage_boundaries))
        self.norms = torch.full((cfg.unroll,), float("nan"), dtype=torch.float64)
        self.starts: collections.Counter = collections.Counter()  # start -> draws, for the record
        self.hessian = None
        if cfg.low_rank_hessian:
            self.hessian = LowRankCurvature(rank=cfg.hessian_rank, oversample=cfg.hessian_oversample,
                                            power_iters=cfg.hessian_power_iters, refresh=cfg.hessian_refresh,
                                            drift=cfg.hessian_drift, scope=cfg.hessian_scope, seed=task.seed)

    def stage(self) -> int:
        return self.tracker.stage if self.config.stages else MIDDLE

    def plan(self, step: int, gen: torch.Generator) -> tuple[int, int]:
        cfg, stage = self.config, self.stage()
        if stage == MIDDLE and not cfg.adaptive_window:
            # Uniform over [0, T - W]: RaT-BPTT's own draw, so with every switch off the two
            # methods make the same draws.
            n_steps = uniform_unroll(cfg.window, cfg.unroll, gen)
            start, window = n_steps - cfg.window, cfg.window
        else:
            self._ensure_probe(step)
            probs, windows = start_distribution(self.norms, stage, cfg)
            start = int(torch.multinomial(probs, 1, generator=gen))
            window = int(windows[start])
        self.starts[start] += 1
        return start + window, window

    def _probe(self, step: int) -> tuple[torch.Tensor, tuple]:
        """A plain T-step trajectory from a fresh init (its own streams): norms and final parameters."""
        gen = torch.Generator().manual_seed(step_seed(self.task.seed, step, Stream.PROBE))
        reinitialize(self.model.module, step_seed(self.task.seed, step, Stream.PROBE_INIT))
        norms, final = plain_trajectory(self.model, self.model.parameters(), self.optimizer,
                                        float(self.log_lr.detach().exp()), self.images, self.labels,
                                        self.schedule(self.config.unroll, gen))
        self.norms = norms.double().cpu()
        return gen, final

    def _ensure_probe(self, step: int) -> None:
        """Fill the gradient-norm table with a probe trajectory when it has gaps or is due."""
        cfg = self.config
        due = cfg.full_probe_every is not None and step % cfg.full_probe_every == 0
        if due or torch.isnan(self.norms).any():
            self._probe(step)

    def _probe_accuracy(self, step: int) -> float:
        """The stage signal: real-batch accuracy of a network trained the full T steps (norms refreshed too)."""
        gen, final = self._probe(step)
        data = self.task.data
        idx = torch.randperm(data.train_x.shape[0], generator=gen)[: self.config.real_batch].to(data.train_x.device)
        x = augment(data.train_x[idx], self.config.real_augment, gen)
        return accuracy(self.model, final, x, data.train_y[idx], chunk=self.config.engine.real_chunk or 1024)

    def curvature(self, step: int):
        return None if self.hessian is None else self.hessian.for_step(step)

    def meta_gradient(self, step: int) -> tuple[MetaGradient, dict[str, float]]:
        result, info = super().meta_gradient(step)
        if self.config.patch_semantic:
            info["patch_loss"] = self._add_patch_semantic(step, result)
        return result, info

    def _add_patch_semantic(self, step: int, result: MetaGradient) -> float:
        """Add lambda x the prototype distance's gradient to the images' meta-gradient (at the
        final parameters of this step's unroll); returns the distance."""
        cfg, task = self.config, self.task
        gen = torch.Generator().manual_seed(step_seed(task.seed, step, Stream.PATCH))
        n = task.data.train_x.shape[0]
        idx = torch.randperm(n, generator=gen)[: min(cfg.patch_real_batch, n)].to(task.data.train_x.device)
        images = self.images.detach().requires_grad_()
        hard = torch.arange(task.num_classes, device=images.device).repeat_interleave(self.ipc)
        params = tuple(p.detach() for p in result.final_params)
        loss = prototype_loss(self.model, params, images, hard, task.data.train_x[idx], task.data.train_y[idx],
                              cfg.patch_grid)
        (grad,) = torch.autograd.grad(cfg.patch_weight * loss, images)
        result.images = grad if result.images is None else result.images + grad
        return float(loss.detach())

    def observe(self, step: int, result: MetaGradient) -> dict[str, float]:
        norms = self.longest_trajectory_norms(result)
        if step % self.config.probe_every == 0:
            self.norms[:len(norms)] = norms.double().cpu()  # the free probe
        stage = self.stage()
        if self.config.stage_signal == "outer":
            signal = float(result.outer_accuracy)
        else:  # once per epoch, from a full-length trajectory (only when the stages switch on accuracy)
            wanted = self.config.stages and self.config.stage_switch == "accuracy" and self.tracker.ends_epoch()
            signal = self._probe_accuracy(step) if wanted else None
        self.tracker.update(step, signal)
        metrics = {"stage": stage}
        if signal is not None and self.config.stage_signal == "probe":
            metrics["probe_accuracy"] = signal
        if self.hessian is not None:
            metrics["hessian_builds"] = self.hessian.builds
            if self.hessian.last_drift is not None:
                metrics["hessian_drift"] = self.hessian.last_drift
        return metrics

    def summary(self) -> dict:
        out = {"stage_switched_at": list(self.tracker.switched_at), "final_stage": STAGE_NAMES[self.stage()],
               "stage_patience_epochs": self.tracker.patience, "steps_per_epoch": self.tracker.steps_per_epoch,
               "start_histogram": {str(k): v for k, v in sorted(self.starts.items())}}
        if self.hessian is not None:
            out["hessian_builds"] = self.hessian.builds
        return out

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["at_bptt"] = {"tracker": self.tracker.state_dict(), "norms": self.norms.clone(),
                            "starts": dict(self.starts),
                            "hessian": None if self.hessian is None else self.hessian.state_dict()}
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        own = state["at_bptt"]
        self.tracker.load_state_dict(own["tracker"])
        self.norms = own["norms"].clone()
        self.starts = collections.Counter(own["starts"])
        if self.hessian is not None:
            self.hessian.load_state_dict(own["hessian"], self.task.device)
