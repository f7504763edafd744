"""The unroll engine: meta-gradients through N steps of inner training on a synthetic set.

:func:`meta_gradient` runs N inner steps (:mod:`.steps`) from a given initialisation, then
differentiates an outer objective at the final parameters (:mod:`.outer`; by default the cross
entropy on a real batch) with respect to the synthetic images, the soft labels and the inner
learning rate, through the last M steps (the *window*). The first N - M steps run without a
graph: their parameters and optimizer state enter the window as constants, exactly as if one
had called ``.detach()`` there.

Two exact ways to differentiate the window (``UnrollOptions.mode``):

* ``"full"``: keep the whole window's graph (double backward through every step) and
  backpropagate once. Memory grows with M.
* ``"recompute"``: run the window without a graph, keeping only a snapshot of
  (params, optimizer state) before each step; then walk the window backwards, rebuild one
  step's graph from its snapshot and pull the adjoints of the parameters *and* of the
  optimizer state (momentum, Adam moments) through it. Only one step's graph is alive at a
  time. Same numbers as ``"full"`` (see tests/test_engine.py).

The outer objective is differentiated at the detached final parameters first (the real-batch
loss optionally in chunks): the real batch's activations never coexist with the unrolled graph.
With K trajectories (``UnrollOptions.trajectories``) the window runs on masks over the flat
carry (:class:`~harness.engine.trajectories.TrajectoryMasks`); one trajectory needs none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
from torchopt.base import GradientTransformation

from harness.engine.carry import Carry
from harness.engine.functional import FunctionalModel, Params
from harness.engine.outer import OuterObjective, OuterValue
from harness.engine.schedule import InnerSchedule
from harness.engine.steps import Curvature, StepsFactory, UnrollSteps, inner_step, zeros_for_none
from harness.engine.trajectories import OneTrajectory, TrajectoryMasks, Trajectories, masked_step

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class Synthetic:
    """What inner training trains on, and at which learning rate: the leaves of the meta-gradient
    (each one that requires grad gets one)."""

    images: torch.Tensor
    labels: torch.Tensor  # int64 classes, or float soft labels
    lr: torch.Tensor | float


@dataclass(frozen=True)
class UnrollOptions:
    """How :func:`meta_gradient` computes; every option but ``curvature`` leaves the numbers exact.

    * ``mode``: ``"full"`` graph (memory grows with M) or ``"recompute"`` (one step's graph at a
      time, memory flat in M); both exact.
    * ``curvature``: recompute mode only: ``curvature(t, params_t, v, hvp)`` replaces the exact
      Hessian-vector product ``H_t v`` of the inner loss at step t in the reverse pass (AT-BPTT's
      low-rank approximation). The mixed derivative in the data stays exact.
    * ``channels_last``: feed the network channels-last batches (a layout change; same numbers).
    * ``steps_factory``: builds the :class:`UnrollSteps` (default: eager);
      :class:`harness.engine.cudagraphs.StepGraphs` passes one that replays captured CUDA graphs.
    * ``offload_snapshots``: recompute mode: keep the window's snapshots in host memory.
    * ``progress``: called as ``progress(done, total, phase)`` after every inner step of the
      forward pass and every reverse step (a long outer step's progress bar).
    * ``trajectories``: K trajectories in one block-major network (``harness.models.batched``),
      with their own N_k and M_k (see :mod:`.trajectories`): the schedule and the objective are
      trajectory-major, ``len(schedule) = max N_k``, ``window`` is the union of their windows,
      and the meta-gradient is the mean of the K trajectories' own.
    """

    mode: Literal["full", "recompute"] = "full"
    curvature: Curvature | None = None
    channels_last: bool = False
    steps_factory: StepsFactory | None = None
    offload_snapshots: bool = False
    progress: Progress | None = None
    trajectories: Trajectories | None = None


@dataclass
class MetaGradient:
    """What :func:`meta_gradient` returns. Gradients are ``None`` for inputs that did not require grad."""

    outer_loss: torch.Tensor
    outer_metric: torch.Tensor  # the objective's metric (the real-batch accuracy by default)
    images: torch.Tensor | None
    labels: torch.Tensor | None
    lr: torch.Tensor | None
    inner_losses: torch.Tensor  # [N] ([N, K] for K trajectories; a frozen trajectory's padding steps repeat)
    grad_norms: torch.Tensor  # [N] ([N, K]): ||grad_params L_t|| at every inner step (a free probe)
    final_params: Params = field(repr=False)


@dataclass
class Window:
    """What the window runners share: this unroll's steps, its objective, the first step of the
    window, and the record of every inner step (its loss and gradient norm, appended as it runs)."""

    steps: UnrollSteps
    objective: OuterObjective
    start: int
    progress: Progress
    losses: list[torch.Tensor] = field(default_factory=list)
    norms: list[torch.Tensor] = field(default_factory=list)

    @property
    def end(self) -> int:
        return len(self.steps.schedule)

    def record(self, t: int, loss: torch.Tensor, norm: torch.Tensor) -> None:
        self.losses.append(loss)
        self.norms.append(norm)
        self.progress(t + 1, self.end, "forward")

    def outer(self, final: Params) -> OuterValue:
        return self.objective(self.steps.model, final, self.steps.trajectories)


def meta_gradient(model: FunctionalModel, init_params: Params, optimizer: GradientTransformation,
                  synthetic: Synthetic, schedule: InnerSchedule, window: int, objective: OuterObjective,
                  options: UnrollOptions = UnrollOptions()) -> MetaGradient:
    """The meta-gradient of ``objective`` after ``len(schedule)`` inner steps.

    Args:
        model: the network, as a function of a parameter tuple.
        init_params: its initialisation (treated as a constant).
        optimizer: a torchopt transformation at learning rate 1 (see :mod:`harness.engine.optim`).
        synthetic: the images and labels trained on, and the inner lr (see :class:`Synthetic`).
        schedule: the mini-batch (and augmentation) of every inner step; N = ``len(schedule)``.
        window: M, the number of final steps differentiated (1 <= M <= N); the first N - M
            steps run without a graph.
        objective: the outer objective at the final parameters, e.g.
            ``RealBatchLoss(real_x, real_y, chunk)`` (see :mod:`harness.engine.outer`).
        options: how to compute it (:class:`UnrollOptions`).
    """
    _check(len(schedule), window, options)
    count = 1 if options.trajectories is None else options.trajectories.count
    steps = (options.steps_factory or UnrollSteps)(
        model, optimizer, synthetic.images, synthetic.labels, synthetic.lr, schedule, curvature=options.curvature,
        channels_last=options.channels_last, trajectories=count)
    carry = steps.init(init_params)
    ctx = Window(steps, objective, len(schedule) - window, options.progress or _silent)
    for t in range(ctx.start):  # the prefix: every trajectory runs there, no mask needed
        carry, loss, norm = steps.forward(t, carry)
        ctx.record(t, loss, norm)
    full = options.mode == "full"
    if options.trajectories is None:
        outer, final = (_window_full(ctx, carry) if full
                        else _window_recompute(ctx, carry, OneTrajectory(), options.offload_snapshots))
    else:
        masks = TrajectoryMasks(options.trajectories, steps.layout.sizes, carry[0].device)
        outer, final = (_window_full_trajectories(ctx, carry, masks) if full
                        else _window_recompute(ctx, carry, masks, options.offload_snapshots))
    return MetaGradient(outer_loss=outer.loss, outer_metric=outer.metric, images=steps.grads["images"],
                        labels=steps.grads["labels"], lr=steps.grads["lr"], inner_losses=torch.stack(ctx.losses),
                        grad_norms=torch.stack(ctx.norms), final_params=final)


def _check(n_steps: int, window: int, options: UnrollOptions) -> None:
    plan, curvature = options.trajectories, options.curvature
    if plan is not None and (plan.length, plan.window) != (n_steps, window):
        raise ValueError(f"trajectories span {plan.length} steps with a window of {plan.window}, "
                         f"the unroll {n_steps} steps with a window of {window}")
    if plan is not None and curvature is not None:
        raise ValueError("a curvature approximation is not available with several trajectories")
    if not 1 <= window <= n_steps:
        raise ValueError(f"window must be in [1, {n_steps}] (the number of inner steps), got {window}")
    if options.mode not in ("full", "recompute"):
        raise ValueError(f"mode must be 'full' or 'recompute', got {options.mode!r}")
    if curvature is not None and options.mode != "recompute":
        raise ValueError("a curvature approximation needs mode='recompute'")


def _silent(done: int, total: int, phase: str) -> None:
    del done, total, phase


def plain_trajectory(model: FunctionalModel, init_params: Params, optimizer: GradientTransformation,
                     synthetic: Synthetic, schedule: InnerSchedule) -> tuple[torch.Tensor, Params]:
    """Plain inner training (no graph kept): ``||grad_params L_t||`` at every step, and the final
    parameters. A probe of the trajectory the unroll differentiates."""
    lr = synthetic.lr.detach() if isinstance(synthetic.lr, torch.Tensor) else synthetic.lr
    steps = UnrollSteps(model, optimizer, synthetic.images.detach(), synthetic.labels.detach(), lr, schedule)
    carry, norms = steps.init(init_params), []
    for t in range(len(schedule)):
        carry, _, norm = steps.forward(t, carry)
        norms.append(norm)
    return torch.stack(norms), steps.params(carry)


# --------------------------------------------------------------------------- the window runners


def _window_full(ctx: Window, carry: Carry) -> tuple[OuterValue, Params]:
    """Keep the whole window's graph, then backpropagate the outer adjoint once."""
    steps = ctx.steps
    params, opt_state = steps.layout.unpack(*carry)
    params = tuple(p.detach().requires_grad_() for p in params)
    with torch.enable_grad():
        for t in range(ctx.start, ctx.end):
            idx, theta = steps.batch(t)
            x = steps.network_input(steps.images[idx], theta)
            out = inner_step(steps.model, steps.optimizer, params, opt_state, x, steps.labels[idx], steps.lr,
                             create_graph=True)
            params, opt_state = out.params, out.opt_state
            ctx.record(t, out.loss, out.grad_norm)
    final = tuple(p.detach() for p in params)
    outer = ctx.outer(final)
    _add_data_grads(steps, params, outer.adjoint)
    return outer, final


def _window_full_trajectories(ctx: Window, carry: Carry, masks: TrajectoryMasks) -> tuple[OuterValue, Params]:
    """:func:`_window_full` for K trajectories, on the flat carry: a trajectory's block is detached
    where its own window starts, and frozen once it has run its own N_k steps."""
    steps = ctx.steps
    flat, aux = carry[0].detach().requires_grad_(), carry[1]
    with torch.enable_grad():
        for t in range(ctx.start, ctx.end):
            starting = masks.window_starts(t, ctx.start)
            if starting is not None:
                flat = torch.where(starting, flat.detach(), flat)
            params, opt_state = steps.layout.unpack(flat, aux)
            idx, theta = steps.batch(t)
            x = steps.network_input(steps.images[idx], theta)
            out = inner_step(steps.model, steps.optimizer, params, opt_state, x, steps.labels[idx], steps.lr,
                             create_graph=True, trajectories=steps.trajectories)
            new_flat, aux = steps.layout.pack(out.params, out.opt_state)
            flat = masked_step(masks.active(t), new_flat, flat)
            ctx.record(t, out.loss, out.grad_norm)
    final = tuple(p.detach() for p in steps.layout.unpack(flat, aux)[0])
    outer = ctx.outer(final)
    _add_data_grads(steps, flat, steps.final_adjoint(outer.adjoint))
    return outer, final


def _add_data_grads(steps: UnrollSteps, outputs, grad_outputs) -> None:
    """Backpropagate ``grad_outputs`` from the window's ``outputs`` into the data's gradients."""
    wrt = steps.learned()
    if wrt:
        res = torch.autograd.grad(outputs, [v for _, v in wrt], grad_outputs=grad_outputs, allow_unused=True)
        for (key, _), g in zip(wrt, zeros_for_none(res, [v for _, v in wrt])):
            steps.grads[key].add_(g)


def _window_recompute(ctx: Window, carry: Carry, route: OneTrajectory | TrajectoryMasks,
                      offload: bool = False) -> tuple[OuterValue, Params]:
    """Snapshots forward, then one step's graph at a time backward (memory flat in the window).

    ``route`` says how a step moves the carry and its adjoint: every element for one trajectory,
    the active (and differentiated) trajectories' elements for K. With ``offload`` the snapshots
    wait in pinned host memory (CUDA): device memory is then independent of the window, not just
    nearly so (a snapshot is params + optimizer state).
    """
    steps, snapshots = ctx.steps, []
    for t in range(ctx.start, ctx.end):
        snapshots.append(_to_host(carry) if offload else carry)
        new_carry, loss, norm = steps.forward(t, carry)
        carry = (route.advance(t, new_carry[0], carry[0]), new_carry[1])
        ctx.record(t, loss, norm)
    final = steps.params(carry)
    device = final[0].device
    outer = ctx.outer(final)
    adjoint = steps.final_adjoint(outer.adjoint)
    for offset in reversed(range(len(snapshots))):
        snapshot, snapshots[offset] = snapshots[offset], None  # free each snapshot once used
        if offload:
            snapshot = (snapshot[0].to(device, non_blocking=True),
                        tuple(a.to(device, non_blocking=True) for a in snapshot[1]))
        t = ctx.start + offset
        adjoint = route.pull_back(t, adjoint, lambda a: steps.reverse(t, snapshot, a))  # noqa: B023 (called now)
        ctx.progress(len(snapshots) - offset, len(snapshots), "reverse")
    return outer, final


def _to_host(carry: Carry) -> Carry:
    """A copy of ``carry`` in (pinned, where CUDA is up) host memory; asynchronous on CUDA."""
    def copy(t: torch.Tensor) -> torch.Tensor:
        if t.device.type == "cpu":
            return t
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        return host.copy_(t, non_blocking=True)
    return copy(carry[0]), tuple(copy(a) for a in carry[1])
