"""AT-BPTT (Li et al., "Beyond Random: Automatic Inner-Loop Optimization in Dataset
Distillation", NeurIPS 2025, arXiv 2510.04838): truncation that follows the inner network's
learning dynamics instead of RaT-BPTT's uniform draw. Every component can be switched off:

1. **Gradient-norm probe.** ``||g_t||``, the inner loss's gradient norm at step t, comes for
   free from every trajectory the engine runs (``MetaGradient.grad_norms``); a table over
   t in [0, T) keeps the latest value of each step (refreshed every ``probe_every`` outer
   steps). Steps never visited yet, and every ``full_probe_every`` outer steps all steps, are
   filled by a plain T-step trajectory without a graph.
2. **Three stages.** The window start t is drawn with P(t) ~ exp(||g_t|| / tau) early (where
   the network learns fast), uniformly in the middle, and with
   P(t) ~ exp(-||g_t|| / tau) late (with the adaptive window off, the middle stage's draw is
   exactly RaT-BPTT's). The stage moves forward when the outer accuracy (of the
   inner-trained network on the real batch, averaged over an outer epoch) gains less than
   ``gain_threshold`` points for ``patience_fraction`` of the epochs in a row, or at fixed
   outer-step fractions (``stage_switch = "steps"``). The public code compares an int
   counter with a float (``flag == 0.15 * totwindow``) and so never switches for some T;
   here the counter is compared with ``>=`` against a whole number of epochs.
3. **Adaptive window.** W*(t) = W - d + 2 d eta(t), rounded and clamped to [1, T], where
   eta(t) in [0, 1] grows with the gradient-norm change D_t = | ||g_t|| - ||g_{t-1}|| |
   (D_0 = 0): ``window_eta = "softmax"`` takes p = softmax(D / (tau_w mean(D))) min-max
   scaled to [0, 1] (the paper's softmax with temperature, made scale-free); ``"rank"`` takes
   rank(D_t) / T as the public code does. The window then starts at min(t, T - W*).
4. **Low-rank Hessian** (recompute mode). In the reverse pass through step t the exact
   Hessian-vector product H_t v of the inner loss in the parameters (the term that carries
   the adjoint back through the gradient g_t = dL_t/dtheta) is replaced by U diag(s) U^T v,
   a rank-k randomized eigen-approximation (``harness.lowrank``) built from exact
   Hessian-vector products. Exact everywhere else: the optimizer update's own Jacobians
   (identity, momentum/Adam moments, weight decay), and the mixed derivative
   d^2 L_t / dtheta dx in the synthetic data, without which the data would get no gradient.
   ``hessian_scope = "window"`` builds one approximation (at the first reverse step) and
   reuses it for the whole window, refreshed every ``hessian_refresh`` outer steps or when its
   relative error on a random vector in its own span (where a fresh build is accurate) exceeds
   ``hessian_drift`` at the current point; ``"step"`` rebuilds it
   at every inner step (exact when k >= rank H_t: a check, not a saving).
5. Patch-wise semantic preservation (high resolution) is not implemented.

Defaults: CIFAR-10 IPC 10 of the public code's README (W = 40, T = 200, d = 10, inner and
outer Adam at 1e-3, real batch 5000).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import Field, model_validator

from harness import (EngineConfig, MetaGradient, Stream, UnrollConfig, UnrolledMethod, check_window, register_method,
                     step_seed, uniform_unroll)
from harness.core.rng import sketch_position
from harness.engine import trajectory_grad_norms
from harness.engine.lowrank import LowRank, randomized_eigh
from harness.models import reinitialize

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
    # 2. stages
    stages: bool = True
    tau: float = 1.0
    stage_switch: Literal["accuracy", "steps"] = "accuracy"
    gain_threshold: float = 1.5  # accuracy points
    patience_fraction: float = 0.05  # of the outer epochs
    steps_per_epoch: int | None = Field(None, description="outer steps per epoch; None = one pass over the real data")
    stage_boundaries: tuple[float, float] = (1 / 3, 2 / 3)  # fractions of the outer steps (stage_switch="steps")
    # 3. adaptive window
    adaptive_window: bool = True
    window_eta: Literal["softmax", "rank"] = "softmax"
    window_tau: float = 1.0
    # 4. low-rank Hessian
    low_rank_hessian: bool = True
    hessian_rank: int = 10
    hessian_oversample: int = 5
    hessian_power_iters: int = 1
    # Every outer step trains a freshly initialised network, so a factorization rarely carries
    # over to the next outer step: by default it is rebuilt once per outer step (per window).
    hessian_refresh: int = 1
    hessian_drift: float | None = None
    hessian_scope: Literal["window", "step"] = "window"

    @model_validator(mode="after")
    def _check(self) -> "ATBPTTConfig":
        check_window(self.window, self.unroll)
        if self.adaptive_window and not 0 <= self.window_delta < self.window:
            raise ValueError(f"window_delta must be in [0, window), got {self.window_delta}")
        for name in ("probe_every", "hessian_rank", "hessian_refresh"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("full_probe_every", "steps_per_epoch"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("tau", "window_tau", "patience_fraction"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.hessian_oversample < 0 or self.hessian_power_iters < 0:
            raise ValueError("hessian_oversample and hessian_power_iters must be >= 0")
        a, b = self.stage_boundaries
        if not 0 <= a <= b <= 1:
            raise ValueError(f"stage_boundaries must satisfy 0 <= a <= b <= 1, got {self.stage_boundaries}")
        if self.low_rank_hessian and self.engine.mode != "recompute":
            raise ValueError("low_rank_hessian needs engine.mode = 'recompute'")
        return self


# --------------------------------------------------------------------------- samplers (pure)


def position_probs(norms: torch.Tensor, stage: int, tau: float) -> torch.Tensor:
    """P(window start = t) over t in [0, len(norms)): exp(+-||g_t|| / tau), or uniform."""
    norms = norms.double()
    if stage == MIDDLE:
        return torch.full_like(norms, 1 / len(norms))
    return torch.softmax((norms if stage == EARLY else -norms) / tau, dim=0)


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

    def update(self, step: int, accuracy: float) -> None:
        """Record outer step ``step``'s accuracy (in [0, 1]); may advance the stage for the next step."""
        self.seen += 1
        if self.switch == "steps":
            target = EARLY if self.seen < self.boundaries[0] else MIDDLE if self.seen < self.boundaries[1] else LATE
            while self.stage < target:
                self._advance(step + 1)
            return
        self.epoch_accs.append(100 * accuracy)
        if len(self.epoch_accs) < self.steps_per_epoch:
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


# --------------------------------------------------------------------------- low-rank Hessian


class LowRankHessian:
    """The engine's ``curvature`` callback: H_t v ~ U diag(s) U^T v (see the module docstring)."""

    def __init__(self, cfg: ATBPTTConfig, seed: int):
        self.cfg, self.seed = cfg, seed
        self.approx: LowRank | None = None
        self.built_at = -1  # outer step of the last build
        self.builds = 0
        self.last_drift: float | None = None

    def for_step(self, step: int):
        """The callback for outer step ``step``: refresh (lazily, at its first reverse step) when due."""
        due = self.approx is None or step - self.built_at >= self.cfg.hessian_refresh
        state = {"first": True, "due": due}

        def curvature(t, params, v, hvp):
            flat_v = _flatten(v)
            if self.cfg.hessian_scope == "step" or state["due"]:
                self._build(step, t, params, hvp)
                state["due"] = False
            elif state["first"] and self.cfg.hessian_drift is not None:
                if self._drift(step, t, params, hvp) > self.cfg.hessian_drift:
                    self._build(step, t, params, hvp)
            state["first"] = False
            return _unflatten(self.approx @ flat_v, params)

        return curvature

    def _matvec(self, params, hvp):
        def matvec(V: torch.Tensor) -> torch.Tensor:
            return torch.stack([_flatten(hvp(_unflatten(col, params))) for col in V.T], dim=1)
        return matvec

    def _build(self, step: int, t: int, params, hvp) -> None:
        gen = torch.Generator().manual_seed(step_seed(self.seed, sketch_position(step, t), Stream.SKETCH))
        n = sum(p.numel() for p in params)
        self.approx = randomized_eigh(self._matvec(params, hvp), n, self.cfg.hessian_rank,
                                      oversample=self.cfg.hessian_oversample,
                                      power_iters=self.cfg.hessian_power_iters, generator=gen,
                                      dtype=params[0].dtype, device=params[0].device)
        self.built_at, self.builds = step, self.builds + 1

    def _drift(self, step: int, t: int, params, hvp) -> float:
        """How far the kept eigenpairs are from the current Hessian: the relative error of
        ``U diag(s) U^T z`` against ``H z`` for a random z in the span of U (one exact HVP).

        A random z in the whole space would mostly measure the spectrum the rank-k
        approximation leaves out by design, not drift."""
        gen = torch.Generator().manual_seed(step_seed(self.seed, step, Stream.SKETCH_DRIFT))
        U = self.approx.U
        z = U @ torch.randn(U.shape[1], generator=gen, dtype=U.dtype).to(U.device)
        exact = _flatten(hvp(_unflatten(z, params)))
        self.last_drift = float((exact - self.approx @ z).norm() / exact.norm().clamp_min(1e-30))
        return self.last_drift

    def state_dict(self) -> dict:
        approx = None if self.approx is None else {"U": self.approx.U.to("cpu", copy=True),
                                                   "s": self.approx.s.to("cpu", copy=True)}
        return {"approx": approx, "built_at": self.built_at, "builds": self.builds}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        a = state["approx"]
        self.approx = None if a is None else LowRank(a["U"].to(device), a["s"].to(device))
        self.built_at, self.builds = state["built_at"], state["builds"]


def _flatten(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _unflatten(flat: torch.Tensor, like) -> tuple[torch.Tensor, ...]:
    return tuple(v.view_as(p) for v, p in zip(flat.split([p.numel() for p in like]), like))


# --------------------------------------------------------------------------- the method


@register_method("at_bptt")
class ATBPTT(UnrolledMethod):
    """Automatic truncated BPTT: stage-wise window position, adaptive window, low-rank Hessian."""

    Config = ATBPTTConfig
    tiny_config = {"unroll": 8, "window": 4, "window_delta": 1, "low_rank_hessian": False}

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
        self.hessian = LowRankHessian(cfg, task.seed) if cfg.low_rank_hessian else None

    def stage(self) -> int:
        return self.tracker.stage if self.config.stages else MIDDLE

    def plan(self, step: int, gen: torch.Generator) -> tuple[int, int]:
        cfg, stage = self.config, self.stage()
        if stage == MIDDLE and not cfg.adaptive_window:
            # RaT-BPTT's own draw, so that with every switch off the two methods make the same draws.
            return uniform_unroll(cfg.window, cfg.unroll, gen), cfg.window
        self._ensure_probe(step)
        if stage == MIDDLE:
            start = uniform_unroll(cfg.window, cfg.unroll, gen) - cfg.window
        else:
            start = int(torch.multinomial(position_probs(self.norms, stage, cfg.tau), 1, generator=gen))
        window = cfg.window
        if cfg.adaptive_window:
            eta = float(window_eta(self.norms, cfg.window_eta, cfg.window_tau)[start])
            window = adaptive_window(eta, cfg.window, cfg.window_delta, cfg.unroll)
        start = min(start, cfg.unroll - window)
        return start + window, window

    def _ensure_probe(self, step: int) -> None:
        """Fill the gradient-norm table with a plain T-step trajectory when it has gaps or is due."""
        cfg = self.config
        due = cfg.full_probe_every is not None and step % cfg.full_probe_every == 0
        if not (due or torch.isnan(self.norms).any()):
            return
        gen = torch.Generator().manual_seed(step_seed(self.task.seed, step, Stream.PROBE))
        reinitialize(self.model.module, step_seed(self.task.seed, step, Stream.PROBE_INIT))
        norms = trajectory_grad_norms(self.model, self.model.parameters(), self.optimizer,
                                      float(self.log_lr.detach().exp()), self.images, self.labels,
                                      self.schedule(cfg.unroll, gen))
        self.norms = norms.double().cpu()

    def curvature(self, step: int):
        return None if self.hessian is None else self.hessian.for_step(step)

    def observe(self, step: int, result: MetaGradient) -> dict[str, float]:
        n = len(result.grad_norms)
        if step % self.config.probe_every == 0:
            self.norms[:n] = result.grad_norms.double().cpu()  # the free probe
        stage = self.stage()
        self.tracker.update(step, float(result.outer_accuracy))
        metrics = {"stage": stage}
        if self.hessian is not None:
            metrics["hessian_builds"] = self.hessian.builds
            if self.hessian.last_drift is not None:
                metrics["hessian_drift"] = self.hessian.last_drift
        return metrics

    def summary(self) -> dict:
        out = {"stage_switched_at": list(self.tracker.switched_at), "final_stage": STAGE_NAMES[self.stage()],
               "stage_patience_epochs": self.tracker.patience, "steps_per_epoch": self.tracker.steps_per_epoch}
        if self.hessian is not None:
            out["hessian_builds"] = self.hessian.builds
        return out

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["at_bptt"] = {"tracker": self.tracker.state_dict(), "norms": self.norms.clone(),
                            "hessian": None if self.hessian is None else self.hessian.state_dict()}
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        own = state["at_bptt"]
        self.tracker.load_state_dict(own["tracker"])
        self.norms = own["norms"].clone()
        if self.hessian is not None:
            self.hessian.load_state_dict(own["hessian"], self.task.device)
