"""K inner trajectories in one unroll (``engine.trajectories = K``).

The K trajectories train K networks stored as one *block-major* network: dim 0 of every
parameter (and of every optimizer-state tensor shaped like it) holds the K networks' blocks in
order (``harness.models.batched.BatchedConvNet``), the input and output rows are
trajectory-major (``[K * B, ...]``), and the inner loss is the *sum* of the K per-trajectory
mean losses, so block k of the gradient is trajectory k's own gradient.

Trajectory k runs its own N_k inner steps and differentiates its own last M_k. Unequal
lengths are **padded at the end**: every trajectory starts at step 0 (so Adam's step count,
one scalar, is right for all of them) and a trajectory that has done its N_k steps is frozen,
``carry' = where(active, step(carry), carry)``, until the longest one finishes. Its final
parameters are then exactly those after N_k steps, and its frozen steps pass its adjoint
through unchanged and add nothing to the meta-gradient. A trajectory's window start
s_k = N_k - M_k is honoured by dropping its block of the adjoint before any step t < s_k
(recompute mode) or by detaching its block of the carry at step s_k (full mode): exactly the
``.detach()`` of a single-trajectory unroll. The batched unroll covers the union of the
windows, [min_k s_k, max_k N_k); the padding costs max_k N_k - N_k steps of trajectory k.

The outer loss is the mean over the K trajectories' real batches (trajectory-major rows), so
the meta-gradient is the *mean* of the K single-trajectory meta-gradients (tests/test_trajectories.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from harness.engine.schedule import InnerSchedule


@dataclass(frozen=True)
class Trajectories:
    """The K trajectories' unroll lengths N_k and windows M_k."""

    unrolls: tuple[int, ...]
    windows: tuple[int, ...]

    def __post_init__(self):
        if not self.unrolls or len(self.unrolls) != len(self.windows):
            raise ValueError("trajectories need one (unroll, window) pair per trajectory")
        for n, m in zip(self.unrolls, self.windows):
            if not 1 <= m <= n:
                raise ValueError(f"trajectory window must be in [1, unroll], got window {m} for unroll {n}")

    @property
    def count(self) -> int:
        return len(self.unrolls)

    @property
    def length(self) -> int:
        """Inner steps of the batched unroll: the longest trajectory."""
        return max(self.unrolls)

    @property
    def starts(self) -> tuple[int, ...]:
        return tuple(n - m for n, m in zip(self.unrolls, self.windows))

    @property
    def window(self) -> int:
        """Steps the batched unroll differentiates: the union of the trajectories' windows."""
        return self.length - min(self.starts)

    @property
    def longest(self) -> int:
        """The (first) trajectory that runs every step: its probes have no padding."""
        return self.unrolls.index(self.length)


class TrajectoryMasks:
    """Per-element masks over the flat carry (see :class:`harness.engine.carry.FlatLayout`)."""

    def __init__(self, plan: Trajectories, sizes: Sequence[int], device: torch.device):
        k = plan.count
        blocks = []
        for size in sizes:
            if size % k:
                raise ValueError(f"a tensor of {size} elements cannot hold {k} trajectories' blocks")
            blocks.append(torch.arange(k, device=device).repeat_interleave(size // k))
        block = torch.cat(blocks)
        self.plan = plan
        self.unroll = torch.tensor(plan.unrolls, device=device)[block]
        self.start = torch.tensor(plan.starts, device=device)[block]

    def active(self, t: int) -> torch.Tensor | None:
        """Elements of the trajectories still training at step t (None: all of them)."""
        return None if t < min(self.plan.unrolls) else self.unroll > t

    def differentiated(self, t: int) -> torch.Tensor | None:
        """Elements of the trajectories whose window contains step t (None: all of them)."""
        return None if t >= max(self.plan.starts) else self.start <= t

    def window_starts(self, t: int, first: int) -> torch.Tensor | None:
        """Elements of the trajectories whose window starts at step t > ``first`` (full mode's detach)."""
        if t <= first or t not in self.plan.starts:
            return None
        return self.start == t

    def advance(self, t: int, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
        """The flat carry after step t: ``new`` for the trajectories still training, ``old`` for the frozen."""
        return masked_step(self.active(t), new, old)

    def pull_back(self, t: int, adjoint: torch.Tensor, vjp) -> torch.Tensor:
        """The adjoint through :meth:`advance` at step t, ``vjp`` being the step's own: dropped
        outside a trajectory's window, passed through its frozen steps."""
        kept = self.differentiated(t)
        adjoint = adjoint if kept is None else torch.where(kept, adjoint, 0.0)
        return masked_vjp(self.active(t), adjoint, vjp)


class OneTrajectory:
    """The single trajectory, as the recompute window sees it: every step advances the carry
    and is differentiated (:class:`TrajectoryMasks`' two methods, without masks)."""

    count = 1

    def advance(self, t: int, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
        return new

    def pull_back(self, t: int, adjoint: torch.Tensor, vjp) -> torch.Tensor:
        return vjp(adjoint)


def masked_step(mask: torch.Tensor | None, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """``new`` where ``mask``, else ``old`` (a frozen trajectory keeps its carry)."""
    return new if mask is None else torch.where(mask, new, old)


def masked_vjp(mask: torch.Tensor | None, adjoint: torch.Tensor, vjp) -> torch.Tensor:
    """The adjoint through :func:`masked_step`: ``vjp`` of the step for the active elements, the
    identity for the frozen ones."""
    if mask is None:
        return vjp(adjoint)
    return vjp(torch.where(mask, adjoint, 0.0)) + torch.where(mask, 0.0, adjoint)


def trajectory_losses(logits: torch.Tensor, labels: torch.Tensor, count: int) -> torch.Tensor:
    """``[K]``: each trajectory's mean cross entropy over its rows (trajectory-major batches)."""
    return F.cross_entropy(logits, labels, reduction="none").view(count, -1).mean(1)


def block_norms(tensors: Sequence[torch.Tensor], count: int) -> torch.Tensor:
    """``[K]``: the global norm of each trajectory's block of ``tensors`` (block-major)."""
    return torch.stack([t.reshape(count, -1).pow(2).sum(1) for t in tensors]).sum(0).sqrt()


def stack_schedules(schedules: Sequence[InnerSchedule]) -> InnerSchedule:
    """One trajectory-major schedule of ``max N_k`` steps from K schedules; a shorter one is padded
    at the end with its last step (computed on a frozen trajectory, then discarded)."""
    length = max(len(s) for s in schedules)

    def pad(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x[-1:].expand(length - x.shape[0], *x.shape[1:])]) if x.shape[0] < length else x

    indices = torch.cat([pad(s.indices) for s in schedules], dim=1)
    affines = [s.affine for s in schedules]
    if any(a is None for a in affines):
        if not all(a is None for a in affines):
            raise ValueError("either every trajectory's schedule is augmented or none is")
        return InnerSchedule(indices)
    return InnerSchedule(indices, torch.cat([pad(a) for a in affines], dim=1))
