"""AT-BPTT (Li et al., "Beyond Random: Automatic Inner-Loop Optimization in Dataset
Distillation", NeurIPS 2025, arXiv 2510.04838): truncation that follows the inner network's
learning dynamics instead of RaT-BPTT's uniform draw. By default it runs as the public code
behind the paper (GH209515338/AT-BPTT: ``framework/base.py``, ``framework/distill_higher.py``,
the README's CIFAR-10 IPC 10 command); each deviation is listed below, each ddbench
alternative is a named option.

**The public code.** T = ``unroll`` (``--totwindow``), W = ``window``, d = ``window_delta``.

1. *Epochs.* An epoch is one pass of the real-data loader at the real batch (10 outer steps on
   CIFAR-10 at 5000). One (start, window) is drawn when an epoch begins; all its outer steps
   use it.
2. *Probe.* Early and late epochs begin with a plain T-step training of a fresh network on the
   synthetic set: ``||g_t||``, the norm of the inner loss's gradient at step t.
3. *Start and window.* Early: s ~ softmax(||g_s||) (raw norms), W* = int(W - d + 2 d eta) with
   eta = rank(D_s) / T, D_t = | ||g_t|| - ||g_{t-1}|| | (D_0 = 0) and rank = the position of
   D_s in the ascending sort (ties: the first), then the start clamped to T - W*. Middle:
   W + d, the start uniform over [0, T - W - d]. Late: W - d; s ~ softmax(||g_s||) and the
   window *ends* s steps before T (start = T - s - (W - d)).
4. *Stages.* The signal is the epoch's mean outer (real-batch) training accuracy in points,
   rounded to 2 decimals; the gain is this epoch's minus the previous epoch's (0 before the
   first). A counter of consecutive epochs with gain < 1.5 moves early -> middle when it
   reaches 0.15 T; another, of epochs with gain < 1.0, middle -> late at 0.125 T. An epoch at or
   above the threshold resets its counter. The code tests stage 1 then stage 2 in the same
   epoch, so the epoch of the first switch also counts for the second. The patience is a
   fraction of T (``args.totwindow``), not of the run's epochs (``--epoch 60000``).

**What ddbench does differently.**

a. ``>=`` where the public code compares its int counter with the float fraction x T by
   ``==``: that fires only when fraction x T is whole (at T = 300, the README's CIFAR-100 and
   Tiny-ImageNet commands, 0.125 T = 37.5: the late stage is never reached; at T = 30 neither
   switch fires). The patience is ceil(fraction x T) epochs: 30 and 25 at T = 200, where the
   public ``==`` fires at the same epochs.
b. A start and its window always fit in [0, T]: every stage draws only among the starts
   whose own window fits, S = {t : t + W*(t) <= T}, renormalised there, and trains exactly
   W*(t) steps from t. The public code clamps an early start to T - W* (the window of the
   drawn position then lies elsewhere) and lets a late start fall below 0 (its forward then
   runs no prefix: start 0); both pile the draws of the cut-off positions on one start.
c. The signal is the plain mean of the epoch's outer accuracies; the public code averages the
   running batch-weighted mean at its print points (every 10 steps): the same with 10 equal
   batches per epoch (CIFAR-10, one GPU; under 10 steps it divides by zero).
d. ``steps_per_epoch`` defaults to ceil(N_train / real_batch), the public one-GPU epoch (with
   ``--mp_distributed`` on k GPUs each process passes over the whole set at batch / k: k times
   the steps); the real batch is drawn at random each step, as in every ddbench method. The K
   trajectories of ``engine.trajectories`` share the epoch's draw (as the public code's GPUs
   share rank 0's). The probe and the draw have their own random streams.

**Options** (ddbench's; none is on by default). ``stage_signal = "probe"``: the accuracy of a
network trained the full T steps (the probe), once per epoch, so the signal does not depend
on the windows the stage itself draws. ``stage_switch = "steps"``: switches at fractions
``stage_boundaries`` of the outer steps. ``patience_of = "epochs"``: the fractions of E, the
run's epochs (``epochs``, default outer_steps / steps_per_epoch; required in a run bounded by
minutes). ``gain_threshold`` / ``patience_fraction`` take one value for both switches.
``window_eta = "softmax"``: eta = softmax(D / (tau_w mean D)) min-max scaled to [0, 1] (the
paper's softmax with temperature, made scale-free). ``start_norms = "mean"``: the norms divided
by their mean before the softmax, so ``tau`` means the same on every dataset (raw CIFAR-size
norms at tau = 1 draw nearly the argmax). ``late_start = "inverse"``: P(t) ~ exp(-g_t / tau)
late (ddbench's earlier reading of the paper). ``draw_every = "step"``: a fresh draw every outer
step from a norm table that every trajectory refreshes for free (``probe_every``), a probe
filling its gaps and, every ``full_probe_every`` steps, all of it. ``stages = false``: the
middle stage throughout; with ``adaptive_window = false`` too, RaT-BPTT's draw (N ~ U[W, T]).

**Low-rank Hessian** (``low_rank_hessian``, recompute mode, off by default): the reverse pass's
exact H_t v replaced by a rank-k randomized eigen-approximation (``LowRankCurvature``; the
optimizer's Jacobians and the mixed term stay exact). Off because the recompute mode already
keeps memory flat in the window (the paper's 63% saving is against ``higher``'s full graph) and
the exact H_t v comes out of the double backward the mixed term needs anyway (docs/engine.md).
**Patch-wise semantic preservation** (``patch_semantic``, off by default, 64x64 and above):
lambda x the prototype distance of ``harness.method.prototypes``, added to the outer loss.

Defaults: the README's CIFAR-10 IPC 10 command (W = 40, T = 200, d = 10, inner and outer Adam
at 1e-3, real batch 5000).
"""

from __future__ import annotations

import collections
import copy
import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import Field, field_validator, model_validator

from harness import (EngineConfig, MetaGradient, Stream, UnrollConfig, UnrolledMethod, check_window, register_method,
                     step_seed, uniform_unroll)
from harness.core.errors import ConfigError
from harness.core.rng import seed_from
from harness.engine import Synthetic, accuracy, plain_trajectory
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
    # the draw and its gradient norms (docstring 1-3)
    draw_every: Literal["epoch", "step"] = "epoch"
    start_norms: Literal["raw", "mean"] = "raw"
    tau: float = 1.0
    late_start: Literal["mirrored", "inverse"] = "mirrored"
    probe_every: int = 1  # draw_every = "step" only
    full_probe_every: int | None = None  # draw_every = "step" only
    # stages (docstring 4)
    stages: bool = True
    stage_switch: Literal["accuracy", "steps"] = "accuracy"
    stage_signal: Literal["outer", "probe"] = "outer"
    gain_threshold: tuple[float, float] = (1.5, 1.0)  # accuracy points: early -> middle, middle -> late
    patience_fraction: tuple[float, float] = (0.15, 0.125)  # of T (or of E: patience_of = "epochs")
    patience_of: Literal["unroll", "epochs"] = "unroll"
    epochs: int | None = Field(None, description="E for patience_of = 'epochs'; None = outer_steps / steps_per_epoch")
    steps_per_epoch: int | None = Field(None, description="outer steps per epoch; None = one pass over the real data")
    stage_boundaries: tuple[float, float] = (1 / 3, 2 / 3)  # fractions of the outer steps (stage_switch="steps")
    # the early stage's adaptive window (docstring 3)
    adaptive_window: bool = True
    window_eta: Literal["rank", "softmax"] = "rank"
    window_tau: float = 1.0
    # low-rank Hessian (an ablation: see the module docstring)
    low_rank_hessian: bool = False
    hessian_rank: int = 10
    hessian_oversample: int = 5
    hessian_power_iters: int = 1
    hessian_refresh: int = 1  # every outer step trains a fresh network: rebuilt per window by default
    hessian_drift: float | None = None
    hessian_scope: Literal["window", "step"] = "window"
    # patch-wise semantic preservation (high resolution)
    patch_semantic: bool = False
    patch_grid: int = 4  # n: an n x n grid of patches
    patch_weight: float = 0.1  # lambda
    patch_real_batch: int = 256  # real images of the prototypes per outer step

    @field_validator("gain_threshold", "patience_fraction", mode="before")
    @classmethod
    def _one_for_both(cls, value):
        return (value, value) if isinstance(value, (int, float)) else value

    @model_validator(mode="after")
    def _check(self) -> "ATBPTTConfig":
        check_window(self.window, self.unroll)
        if self.adaptive_window and not 0 <= self.window_delta < self.window:
            raise ValueError(f"window_delta must be in [0, window), got {self.window_delta}")
        if self.adaptive_window and self.window + self.window_delta > self.unroll:
            raise ValueError(f"window_delta must be <= unroll - window (the middle stage's window W + d must fit "
                             f"in T), got {self.window} + {self.window_delta} > {self.unroll}")
        for name in ("probe_every", "hessian_rank", "hessian_refresh", "patch_grid", "patch_real_batch",
                     "full_probe_every", "steps_per_epoch", "epochs"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        positive = {"tau": self.tau, "window_tau": self.window_tau, "patch_weight": self.patch_weight,
                    "patience_fraction": min(self.patience_fraction)}
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
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


# --------------------------------------------------------------------------- the draw (pure)


def stage_window(stage: int, cfg: ATBPTTConfig) -> int:
    """The window of the middle (W + d) and late (W - d) stages; W without the adaptive window."""
    if not cfg.adaptive_window:
        return cfg.window
    return cfg.window + cfg.window_delta if stage == MIDDLE else cfg.window - cfg.window_delta


def position_probs(norms: torch.Tensor, stage: int, tau: float = 1.0, fits: torch.Tensor | None = None, *,
                   scale: str = "raw", late: str = "mirrored", late_window: int = 1) -> torch.Tensor:
    """P(window start = t) over t in [0, T), zero where ``fits`` (starts whose window fits) is False.
    Early: exp(g_t / tau); middle: uniform; late ``"mirrored"`` (the public code): the window of
    ``late_window`` steps ends s steps before T (start T - late_window - s), P(s) ~ exp(g_s / tau);
    late ``"inverse"``: exp(-g_t / tau). g: the norms, divided by their mean if ``scale = "mean"``."""
    norms = norms.double()
    fits = torch.ones_like(norms, dtype=torch.bool) if fits is None else fits
    if scale == "mean":
        norms = norms / norms.mean() if norms.mean() > 0 else torch.zeros_like(norms)
    logits = norms / tau
    if stage == MIDDLE:
        logits = torch.zeros_like(norms)
    elif stage == LATE and late == "inverse":
        logits = -logits
    elif stage == LATE:  # start t <- s = T - late_window - t; starts beyond T - late_window do not fit
        last = len(norms) - late_window
        logits = torch.cat([logits[: last + 1].flip(0), logits.new_full((len(norms) - last - 1,), -math.inf)])
    return torch.softmax(logits.masked_fill(~fits, -math.inf), dim=0)


def window_eta(norms: torch.Tensor, kind: str, tau: float = 1.0) -> torch.Tensor:
    """eta(t) in [0, 1] from the gradient-norm change D_t = | ||g_t|| - ||g_{t-1}|| | (D_0 = 0)."""
    norms = norms.double()
    change = torch.cat([norms.new_zeros(1), (norms[1:] - norms[:-1]).abs()])
    if kind == "rank":  # the public code: sorted(D).index(D_t) / T, the number of smaller changes
        return (change[None, :] < change[:, None]).sum(1).double() / len(change)
    scale = change.mean()
    p = torch.softmax(change / (tau * scale) if scale > 0 else change, dim=0)
    spread = p.max() - p.min()
    return (p - p.min()) / spread if spread > 0 else torch.full_like(p, 0.5)


def adaptive_window(eta: float, window: int, delta: int, unroll: int) -> int:
    """W* = int(W - d + 2 d eta) (truncated, in the public code's order of operations), clamped to [1, T]."""
    return min(max(int(window - delta + 2 * delta * eta), 1), unroll)


def window_sizes(norms: torch.Tensor, stage: int, cfg: ATBPTTConfig) -> torch.Tensor:
    """The window of a start at every t: W*(t) early, the stage's own window otherwise."""
    if stage != EARLY or not cfg.adaptive_window:
        return torch.full((len(norms),), stage_window(stage, cfg), dtype=torch.int64)
    eta = window_eta(norms, cfg.window_eta, cfg.window_tau)
    return torch.tensor([adaptive_window(float(e), cfg.window, cfg.window_delta, cfg.unroll) for e in eta])


def start_distribution(norms: torch.Tensor, stage: int, cfg: ATBPTTConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``(P(start = t), window(t))`` over t in [0, T): P is zero outside the starts whose own window fits."""
    windows = window_sizes(norms, stage, cfg)
    fits = torch.arange(len(norms)) + windows <= cfg.unroll
    probs = position_probs(norms, stage, cfg.tau, fits, scale=cfg.start_norms, late=cfg.late_start,
                           late_window=stage_window(LATE, cfg))
    return probs, windows


def patience_epochs(fraction: float, base: int) -> int:
    """ceil(fraction x base) epochs, at least 1 (``>=`` for the public code's ``==``; the rounding
    first drops float noise such as 0.55 x 100 = 55.00000000000001)."""
    return max(1, math.ceil(round(fraction * base, 9)))


# --------------------------------------------------------------------------- stages


@dataclass
class StageTracker:
    """The current stage, which moves forward only (early -> middle -> late), and the stage and
    window of every outer step (run-length segments ``[start, stop, stage]``, stop exclusive)."""

    switch: str
    steps_per_epoch: int
    thresholds: tuple[float, float]  # gain (points) below which an epoch counts: early, middle
    patience: tuple[int, int]  # epochs in a row below the threshold: early, middle
    boundaries: tuple[int, int]  # outer steps of this run (switch="steps")
    stage: int = EARLY
    seen: int = 0  # outer steps observed: a run may number its steps from elsewhere (Boost-DD's blocks)
    epoch_accs: list[float] = field(default_factory=list)
    last_epoch_acc: float = 0.0  # the public code's old_acc_average starts at 0
    below: list[int] = field(default_factory=lambda: [0, 0])
    switched_at: list[int] = field(default_factory=list)
    epoch_signal: list[float] = field(default_factory=list)  # every epoch's signal, points
    segments: list[list[int]] = field(default_factory=list)
    window_sums: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])

    def ends_epoch(self) -> bool:
        """Whether the next outer step is the last of an epoch."""
        return (self.seen + 1) % self.steps_per_epoch == 0

    def log(self, step: int, stage: int, window: float) -> None:
        """Outer step ``step`` ran in ``stage`` with (mean) window ``window``."""
        last = self.segments[-1] if self.segments else None
        if last is not None and last[1] == step and last[2] == stage:
            last[1] = step + 1
        else:
            self.segments.append([step, step + 1, stage])
        self.window_sums[stage] += window

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
        epoch_acc = round(sum(self.epoch_accs) / len(self.epoch_accs), 2)
        self.epoch_accs = []
        self.epoch_signal.append(epoch_acc)
        gain = epoch_acc - self.last_epoch_acc
        for stage in (EARLY, MIDDLE):  # in this order within one epoch, as the public code
            if self.stage == stage:
                self.below[stage] = self.below[stage] + 1 if gain < self.thresholds[stage] else 0
                if self.below[stage] >= self.patience[stage]:
                    self._advance(step + 1)
        self.last_epoch_acc = epoch_acc

    def _advance(self, at_step: int) -> None:
        self.stage = min(self.stage + 1, LATE)
        self.switched_at.append(at_step)

    def summary(self) -> dict:
        steps = [sum(stop - start for start, stop, s in self.segments if s == stage) for stage in range(3)]
        total = max(1, sum(steps))
        return {"stage_switched_at": list(self.switched_at),
                "stage_segments": [[start, stop, STAGE_NAMES[s]] for start, stop, s in self.segments],
                "stage_shares": {STAGE_NAMES[s]: round(n / total, 4) for s, n in enumerate(steps)},
                "stage_mean_window": {STAGE_NAMES[s]: round(self.window_sums[s] / n, 3)
                                      for s, n in enumerate(steps) if n},
                "stage_patience_epochs": list(self.patience), "steps_per_epoch": self.steps_per_epoch,
                "epoch_signal": list(self.epoch_signal)}

    def state_dict(self) -> dict:
        return copy.deepcopy({k: getattr(self, k) for k in ("stage", "seen", "epoch_accs", "last_epoch_acc", "below",
                                                            "switched_at", "epoch_signal", "segments", "window_sums")})

    def load_state_dict(self, state: dict) -> None:
        for key, value in copy.deepcopy(state).items():
            setattr(self, key, value)


# --------------------------------------------------------------------------- the method


@register_method("at_bptt")
class ATBPTT(UnrolledMethod):
    """Automatic truncated BPTT: stage-wise window position and size (low-rank Hessian optional)."""

    Config = ATBPTTConfig
    tiny_config = {"unroll": 8, "window": 4, "window_delta": 1}

    def check(self, task, *, ipc=None) -> None:
        super().check(task, ipc=ipc)
        cfg, size = self.config, task.image_shape[-1]
        if cfg.patch_semantic and size < 64:
            raise ValueError(f"patch_semantic is for images of 64x64 and above, not {size}x{size}")
        if not task.outer_steps and cfg.stages and cfg.stage_switch == "steps":
            raise ConfigError("stage_switch = 'steps' needs a step count (budget.outer_steps); a run bounded "
                              "by minutes switches on accuracy", field="stage_switch")
        if not task.outer_steps and cfg.stages and cfg.patience_of == "epochs" and cfg.epochs is None:
            raise ConfigError("patience_of = 'epochs' in a run bounded by minutes (no outer_steps): give E, "
                              "the run's epochs", field="epochs")

    def setup(self, task, initial=None) -> None:
        super().setup(task, initial)
        cfg = self.config
        per_epoch = cfg.steps_per_epoch or max(1, math.ceil(task.data.train_x.shape[0] / cfg.real_batch))
        base = cfg.unroll if cfg.patience_of == "unroll" else cfg.epochs or math.ceil(task.outer_steps / per_epoch)
        self.tracker = StageTracker(
            switch=cfg.stage_switch, steps_per_epoch=per_epoch, thresholds=cfg.gain_threshold,
            patience=tuple(patience_epochs(f, base) for f in cfg.patience_fraction),
            boundaries=tuple(round(f * task.outer_steps) for f in cfg.stage_boundaries))
        self.norms = torch.full((cfg.unroll,), float("nan"), dtype=torch.float64)
        self.epoch_draw: list[int] | None = None  # [epoch, stage, start, window] (draw_every = "epoch")
        self.starts: collections.Counter = collections.Counter()  # start -> draws, for the record
        self.hessian = None
        if cfg.low_rank_hessian:
            self.hessian = LowRankCurvature(rank=cfg.hessian_rank, oversample=cfg.hessian_oversample,
                                            power_iters=cfg.hessian_power_iters, refresh=cfg.hessian_refresh,
                                            drift=cfg.hessian_drift, scope=cfg.hessian_scope, seed=task.seed)

    def stage(self) -> int:
        return self.tracker.stage if self.config.stages else MIDDLE

    def plan(self, step: int, gen: torch.Generator) -> tuple[int, int]:
        if self.config.draw_every == "step":
            start, window = self._draw_window(step, gen, fresh_probe=False)
        else:  # one draw per epoch (and per stage, should a step-fraction switch fall inside an epoch)
            key = [self.tracker.seen // self.tracker.steps_per_epoch, self.stage()]
            if self.epoch_draw is None or self.epoch_draw[:2] != key:
                # Its own stream, so that a step's other draws (from ``gen``) do not depend on
                # whether the epoch's draw was made at this call.
                own = torch.Generator().manual_seed(seed_from(self.task.seed, step, Stream.PROBE, 1))
                self.epoch_draw = key + list(self._draw_window(step, own, fresh_probe=True))
            start, window = self.epoch_draw[2:]
        self.starts[start] += 1
        return start + window, window

    def _draw_window(self, step: int, gen: torch.Generator, fresh_probe: bool) -> tuple[int, int]:
        """``(start, window)`` in the current stage. The middle stage needs no norms: with the
        adaptive window off this is RaT-BPTT's own draw, N ~ U[W, T]."""
        cfg, stage = self.config, self.stage()
        if stage == MIDDLE:
            window = stage_window(MIDDLE, cfg)
            return uniform_unroll(window, cfg.unroll, gen) - window, window
        if fresh_probe:
            self._probe(step)
        else:
            self._ensure_probe(step)
        probs, windows = start_distribution(self.norms, stage, cfg)
        start = int(torch.multinomial(probs, 1, generator=gen))
        return start, int(windows[start])

    def _probe(self, step: int) -> tuple[torch.Generator, tuple]:
        """A plain T-step trajectory from a fresh init (its own streams): norms and final parameters."""
        gen = torch.Generator().manual_seed(step_seed(self.task.seed, step, Stream.PROBE))
        reinitialize(self.model.module, step_seed(self.task.seed, step, Stream.PROBE_INIT))
        synthetic = Synthetic(self.images, self.labels, float(self.log_lr.detach().exp()))
        norms, final = plain_trajectory(self.model, self.model.parameters(), self.optimizer, synthetic,
                                        self.schedule(self.config.unroll, gen))
        self.norms = norms.double().cpu()
        return gen, final

    def _ensure_probe(self, step: int) -> None:
        """draw_every = "step": probe when the norm table has gaps or a full probe is due."""
        cfg = self.config
        due = cfg.full_probe_every is not None and step % cfg.full_probe_every == 0
        if due or torch.isnan(self.norms).any():
            self._probe(step)

    def _probe_accuracy(self, step: int) -> float:
        """stage_signal = "probe": real-batch accuracy of a network trained the full T steps (norms refreshed too)."""
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
        cfg = self.config
        norms = self.longest_trajectory_norms(result)
        if step % cfg.probe_every == 0:
            self.norms[:len(norms)] = norms.double().cpu()  # the free probe (draw_every = "step")
        stage = self.stage()
        windows = self.step_plan.windows
        self.tracker.log(step, stage, sum(windows) / len(windows))
        if cfg.stage_signal == "outer":
            signal = float(result.outer_metric)
        else:  # once per epoch, from a full-length trajectory (only when the stages switch on accuracy)
            wanted = cfg.stages and cfg.stage_switch == "accuracy" and self.tracker.ends_epoch()
            signal = self._probe_accuracy(step) if wanted else None
        self.tracker.update(step, signal)
        metrics = {"stage": stage}
        if signal is not None and cfg.stage_signal == "probe":
            metrics["probe_accuracy"] = signal
        if self.hessian is not None:
            metrics["hessian_builds"] = self.hessian.builds
            if self.hessian.last_drift is not None:
                metrics["hessian_drift"] = self.hessian.last_drift
        return metrics

    def summary(self) -> dict:
        out = {**self.tracker.summary(), "final_stage": STAGE_NAMES[self.stage()],
               "start_histogram": {str(k): v for k, v in sorted(self.starts.items())}}
        if self.hessian is not None:
            out["hessian_builds"] = self.hessian.builds
        return out

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["at_bptt"] = {"tracker": self.tracker.state_dict(), "norms": self.norms.clone(),
                            "epoch_draw": copy.copy(self.epoch_draw), "starts": dict(self.starts),
                            "hessian": None if self.hessian is None else self.hessian.state_dict()}
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        own = state["at_bptt"]
        self.tracker.load_state_dict(own["tracker"])
        self.norms = own["norms"].clone()
        self.epoch_draw = copy.copy(own["epoch_draw"])
        self.starts = collections.Counter(own["starts"])
        if self.hessian is not None:
            self.hessian.load_state_dict(own["hessian"], self.task.device)
