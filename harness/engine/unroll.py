"""The unroll engine: meta-gradients through N steps of inner training on a synthetic set.

The inner problem trains a network ``f(params, x)`` on the synthetic set with a torchopt
optimizer. One inner step is the pure function

    (params, opt_state, x_t, y_t, lr) -> (params', opt_state')
    params' = params + lr * update(grad_params L(f(params, x_t), y_t), opt_state)

and :func:`meta_gradient` runs N of them from a given initialisation, then differentiates an
outer loss (cross entropy on a real batch, at the final parameters) with respect to the
synthetic images, the soft labels and the inner learning rate, through the last M steps
(the *window*). The first N - M steps run without a graph: their parameters and optimizer
state enter the window as constants, exactly as if one had called ``.detach()`` there.

Two exact ways to differentiate the window (``mode``):

* ``"full"``: keep the whole window's graph (double backward through every step) and
  backpropagate once. Memory grows with M.
* ``"recompute"``: run the window without a graph, keeping only a snapshot of
  (params, optimizer state) before each step; then walk the window backwards, rebuild one
  step's graph from its snapshot and pull the adjoints of the parameters *and* of the
  optimizer state (momentum, Adam moments) through it. Only one step's graph is alive at a
  time. Same numbers as ``"full"`` (see tests/test_engine.py).

The outer loss on the real batch is differentiated at the detached final parameters first,
optionally in chunks (``real_chunk``): the real batch's activations never coexist with the
unrolled graph, and chunking is exact because the loss is a mean of per-example terms (for
networks without batch statistics, e.g. the ConvNet's instance norm).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import torch
from torchopt.base import GradientTransformation

from harness.engine.carry import Carry, FlatLayout
from harness.engine.functional import FunctionalModel, Params, global_norm, inner_loss
from harness.engine.outer import outer_loss_and_grad
from harness.engine.schedule import InnerSchedule
from harness.engine.trajectories import (TrajectoryMasks, Trajectories, block_norms, masked_step, masked_vjp,
                                         trajectory_losses)
from harness.models.augment import apply_affine


# --------------------------------------------------------------------------- one inner step


@dataclass
class StepOutput:
    params: Params
    opt_state: object
    loss: torch.Tensor
    grad_norm: torch.Tensor


def inner_step(
    model: FunctionalModel,
    optimizer: GradientTransformation,
    params: Params,
    opt_state,
    x: torch.Tensor,
    y: torch.Tensor,
    lr: torch.Tensor | float,
    *,
    create_graph: bool,
    trajectories: int = 1,
) -> StepOutput:
    """One step of inner training, a pure function of its inputs.

    With ``create_graph`` the result is differentiable in everything (params, state, x, y, lr);
    without, the caller passes detached params that require grad and gets detached outputs.
    With K ``trajectories`` (a block-major network, see :mod:`.trajectories`) the loss and the
    gradient norm are ``[K]``, one per trajectory.
    """
    losses = step_losses(model(params, x), y, trajectories)
    grads = torch.autograd.grad(losses.sum() if trajectories > 1 else losses, params, create_graph=create_graph)
    with torch.set_grad_enabled(create_graph):
        updates, opt_state = optimizer.update(grads, opt_state, params=params, inplace=False)
        new_params = tuple(p + lr * u for p, u in zip(params, updates))
    norm = global_norm(grads) if trajectories == 1 else block_norms(grads, trajectories)
    return StepOutput(new_params, opt_state, losses.detach(), norm.detach())


def step_losses(logits: torch.Tensor, labels: torch.Tensor, trajectories: int) -> torch.Tensor:
    """The inner loss (one trajectory), or the K trajectories' mean losses ``[K]`` (their sum is
    what a batched step differentiates: block k of its gradient is trajectory k's own)."""
    return inner_loss(logits, labels) if trajectories == 1 else trajectory_losses(logits, labels, trajectories)


def _zeros_for_none(grads, like) -> list[torch.Tensor]:
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, like)]


HVP = Callable[[Params], Params]
# curvature(t, params_t, v, hvp) -> an approximation of H_t v, where H_t is the Hessian of the
# inner loss at step t in the parameters; ``hvp`` computes the exact H_t v (for building or
# checking the approximation, e.g. by randomized SVD).
Curvature = Callable[[int, Params, Params, HVP], Params]


class UnrollSteps:
    """The step functions of one unroll, bound to this outer step's synthetic data.

    The carry between steps is ``(flat, aux)`` (see :class:`FlatLayout`).

    * :meth:`forward` ``(t, carry) -> (carry, loss, grad_norm)``: step t without a graph (the
      prefix, and the forward pass of the recompute mode);
    * :meth:`reverse` ``(t, carry_t, adj_{t+1}) -> adj_t``: step t's graph rebuilt from its
      input carry, the adjoint of its output (params *and* optimizer state) pulled back to its
      input, and step t's contribution to the meta-gradient added to :attr:`grads`.

    Both delegate to pure tensor functions (:meth:`forward_body`, :meth:`reverse_body`) of
    fixed-shape inputs, which ``harness.cudagraphs`` captures. The reverse step differentiates
    with respect to the *selected* rows ``images[idx]`` (before augmentation) and scatters the
    result with ``index_add_``: its cost is per batch, not per synthetic set.
    """

    def __init__(self, model: FunctionalModel, optimizer: GradientTransformation, images: torch.Tensor,
                 labels: torch.Tensor, lr: torch.Tensor | float, schedule: InnerSchedule, *,
                 curvature: Curvature | None = None, channels_last: bool = False, trajectories: int = 1):
        self.model, self.optimizer, self.schedule = model, optimizer, schedule
        self.trajectories = trajectories
        self.images, self.labels, self.lr = images, labels, lr
        self.curvature = curvature
        self.channels_last = channels_last
        self.learn_images = images.requires_grad
        self.learn_labels = labels.is_floating_point() and labels.requires_grad
        self.learn_lr = isinstance(lr, torch.Tensor) and lr.requires_grad
        self.layout: FlatLayout | None = None
        # Meta-gradient accumulators, filled by reverse().
        self.grads = {
            "images": torch.zeros_like(images) if self.learn_images else None,
            "labels": torch.zeros_like(labels) if self.learn_labels else None,
            "lr": torch.zeros_like(lr) if self.learn_lr else None,
        }

    # -- carry

    def init(self, params: Params) -> Carry:
        params = tuple(p.detach() for p in params)
        state = self.optimizer.init(params)
        self.layout = FlatLayout(params, state)
        return self.layout.pack(params, state)

    def params(self, carry: Carry) -> Params:
        return tuple(p.detach() for p in self.layout.unpack(*carry)[0])

    def final_adjoint(self, adj_params: Params) -> torch.Tensor:
        """A carry-shaped adjoint from a params-shaped one, zero for the optimizer state (as for the
        last carry: the outer loss reads the params, not the optimizer state)."""
        state_size = sum(self.layout.sizes[self.layout.n_params:])
        return torch.cat([a.reshape(-1) for a in adj_params] + [adj_params[0].new_zeros(state_size)])

    def batch(self, t: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.schedule.indices[t], None if self.schedule.affine is None else self.schedule.affine[t]

    def network_input(self, selected: torch.Tensor, theta: torch.Tensor | None) -> torch.Tensor:
        x = selected if theta is None else apply_affine(selected, theta)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    # -- the two steps

    def forward(self, t: int, carry: Carry) -> tuple[Carry, torch.Tensor, torch.Tensor]:
        idx, theta = self.batch(t)
        lr = self.lr.detach() if isinstance(self.lr, torch.Tensor) else self.lr
        flat, aux, loss, norm = self.forward_body(carry[0], carry[1], idx, theta, self.images.detach(),
                                                  self.labels.detach(), lr)
        return (flat, aux), loss, norm

    def reverse(self, t: int, carry: Carry, adjoint: torch.Tensor) -> torch.Tensor:
        idx, theta = self.batch(t)
        adjoint, *data_grads = self.reverse_body(carry[0], carry[1], idx, theta, self.images.detach(),
                                                 self.labels.detach(), self.lr, adjoint, t)
        self._accumulate(idx, data_grads)
        return adjoint

    def forward_body(self, flat, aux, idx, theta, images, labels, lr):
        """Step ``(flat, aux) -> (flat', aux', loss, ||grad||)`` on the batch ``idx``, no graph kept."""
        with torch.enable_grad():
            flat = flat.detach().requires_grad_()
            params, state = self.layout.unpack(flat, aux)
            x = self.network_input(images[idx], theta)
            out = inner_step(self.model, self.optimizer, params, state, x, labels[idx], lr, create_graph=False,
                             trajectories=self.trajectories)
        new_flat, new_aux = self.layout.pack(out.params, out.opt_state)
        return new_flat.detach(), new_aux, out.loss, out.grad_norm

    def reverse_body(self, flat, aux, idx, theta, images, labels, lr, adjoint, t=None):
        """The vector-Jacobian product of one step: ``adjoint`` of its output -> adjoint of its input,
        and the gradients of this batch's data (selected images, selected labels, lr)."""
        flat = flat.detach().requires_grad_()
        # Leaves for the data of this step only: what the meta-gradient is taken with respect to.
        x_sel = images[idx].requires_grad_(self.learn_images)
        y_sel = labels[idx].requires_grad_(self.learn_labels)
        lr = lr.detach().requires_grad_() if self.learn_lr else lr
        data = [v for v, on in ((x_sel, self.learn_images), (y_sel, self.learn_labels), (lr, self.learn_lr)) if on]
        with torch.enable_grad():
            params, state = self.layout.unpack(flat, aux)
            loss = step_losses(self.model(params, self.network_input(x_sel, theta)), y_sel, self.trajectories)
            g = torch.autograd.grad(loss.sum() if self.trajectories > 1 else loss, params, create_graph=True)
            # With a curvature approximation, cut the graph at g: the optimizer update's own
            # derivatives stay exact, g's derivative in the params (the Hessian) is approximated
            # below, and its derivative in the data (the mixed term) stays exact.
            g_used = tuple(gi.detach().requires_grad_() for gi in g) if self.curvature is not None else g
            updates, new_state = self.optimizer.update(g_used, state, params=params, inplace=False)
            new_flat, _ = self.layout.pack(tuple(p + lr * u for p, u in zip(params, updates)), new_state)
            inputs = [flat] + data + (list(g_used) if self.curvature is not None else [])
            res = _zeros_for_none(torch.autograd.grad(new_flat, inputs, grad_outputs=adjoint, allow_unused=True),
                                  inputs)
            adj_flat, data_grads = res[0], res[1:1 + len(data)]
            if self.curvature is not None:
                adj_g = res[1 + len(data):]

                def hvp(vectors: Params) -> Params:  # the exact Hessian-vector product at this step
                    return tuple(h.detach() for h in _zeros_for_none(
                        torch.autograd.grad(g, params, grad_outputs=vectors, retain_graph=True, allow_unused=True),
                        params))

                approx = self.curvature(t, tuple(p.detach() for p in params), tuple(adj_g), hvp)
                adj_flat = adj_flat + self.final_adjoint(approx)  # H v enters the params' part only
                data_leaves = data[: int(self.learn_images) + int(self.learn_labels)]
                if data_leaves:
                    mixed = torch.autograd.grad(g, data_leaves, grad_outputs=adj_g, allow_unused=True)
                    mixed = _zeros_for_none(mixed, data_leaves)
                    data_grads = [d + m for d, m in zip(data_grads, mixed)] + data_grads[len(mixed):]
        return (adj_flat, *data_grads)

    def _accumulate(self, idx: torch.Tensor, data_grads: Sequence[torch.Tensor]) -> None:
        grads = iter(data_grads)
        if self.learn_images:
            self.grads["images"].index_add_(0, idx, next(grads))
        if self.learn_labels:
            self.grads["labels"].index_add_(0, idx, next(grads))
        if self.learn_lr:
            self.grads["lr"].add_(next(grads))


StepsFactory = Callable[..., UnrollSteps]


# --------------------------------------------------------------------------- the meta-gradient


@dataclass
class MetaGradient:
    """What :func:`meta_gradient` returns. Gradients are ``None`` for inputs that did not require grad."""

    outer_loss: torch.Tensor
    outer_accuracy: torch.Tensor
    images: torch.Tensor | None
    labels: torch.Tensor | None
    lr: torch.Tensor | None
    inner_losses: torch.Tensor  # [N] ([N, K] for K trajectories; a frozen trajectory's padding steps repeat)
    grad_norms: torch.Tensor  # [N] ([N, K]): ||grad_params L_t|| at every inner step (a free probe)
    final_params: Params = field(repr=False)


def meta_gradient(
    model: FunctionalModel,
    init_params: Params,
    optimizer: GradientTransformation,
    lr: torch.Tensor | float,
    images: torch.Tensor,
    labels: torch.Tensor,
    schedule: InnerSchedule,
    window: int,
    real_x: torch.Tensor,
    real_y: torch.Tensor,
    *,
    mode: Literal["full", "recompute"] = "full",
    real_chunk: int | None = None,
    curvature: Curvature | None = None,
    channels_last: bool = False,
    steps_factory: StepsFactory | None = None,
    offload_snapshots: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
    trajectories: Trajectories | None = None,
) -> MetaGradient:
    """The meta-gradient of the real-batch loss after ``len(schedule)`` inner steps.

    Args:
        model: the network, as a function of a parameter tuple.
        init_params: its initialisation (treated as a constant).
        optimizer: a torchopt transformation at learning rate 1 (see ``harness.optim``).
        lr: inner learning rate; a tensor with ``requires_grad`` gets a meta-gradient.
        images: the synthetic images (get a gradient if they require grad).
        labels: int64 class labels, or float soft labels (get a gradient if they require grad).
        schedule: the mini-batch (and augmentation) of every inner step; N = ``len(schedule)``.
        window: M, the number of final steps differentiated (1 <= M <= N); the first N - M
            steps run without a graph.
        real_x, real_y: the real batch of the outer loss.
        mode: ``"full"`` graph (memory grows with M) or ``"recompute"`` (one step's graph at a
            time, memory flat in M); both exact.
        real_chunk: evaluate the outer loss in chunks of this many real examples (exact).
        curvature: recompute mode only: ``curvature(t, params_t, v, hvp)`` replaces the exact
            Hessian-vector product ``H_t v`` of the inner loss at step t in the reverse pass
            (AT-BPTT's low-rank approximation). The mixed derivative in the data stays exact.
        channels_last: feed the network channels-last batches (a layout change; same numbers).
        steps_factory: builds the :class:`UnrollSteps` (default: eager); ``harness.cudagraphs``
            passes one that replays captured CUDA graphs.
        offload_snapshots: recompute mode: keep the window's snapshots in host memory.
        progress: called as ``progress(done, total, phase)`` after every inner step of the
            forward pass and every reverse step (a long outer step's progress bar).
        trajectories: K trajectories in one block-major network (``harness.models.batched``),
            with their own N_k and M_k (see :mod:`.trajectories`): ``schedule`` and the real
            batch are trajectory-major, ``len(schedule) = max N_k``, ``window`` is the union of
            their windows, and the meta-gradient is the mean of the K trajectories' own.
    """
    n_steps = len(schedule)
    if trajectories is not None and (trajectories.length, trajectories.window) != (n_steps, window):
        raise ValueError(f"trajectories span {trajectories.length} steps with a window of {trajectories.window}, "
                         f"the unroll {n_steps} steps with a window of {window}")
    if trajectories is not None and curvature is not None:
        raise ValueError("a curvature approximation is not available with several trajectories")
    if not 1 <= window <= n_steps:
        raise ValueError(f"window must be in [1, {n_steps}] (the number of inner steps), got {window}")
    if mode not in ("full", "recompute"):
        raise ValueError(f"mode must be 'full' or 'recompute', got {mode!r}")
    if curvature is not None and mode != "recompute":
        raise ValueError("a curvature approximation needs mode='recompute'")
    count = 1 if trajectories is None else trajectories.count
    steps = (steps_factory or UnrollSteps)(model, optimizer, images, labels, lr, schedule, curvature=curvature,
                                           channels_last=channels_last, trajectories=count)
    carry = steps.init(init_params)
    # Every trajectory is active and differentiated-or-prefix before the window: no masks there.
    masks = None if trajectories is None else TrajectoryMasks(trajectories, steps.layout.sizes, carry[0].device)
    losses, norms = [], []
    start = n_steps - window
    report = progress or (lambda done, total, phase: None)
    for t in range(start):
        carry, loss, norm = steps.forward(t, carry)
        losses.append(loss)
        norms.append(norm)
        report(t + 1, n_steps, "forward")

    if mode == "full":
        outer, final = _window_full(steps, carry, start, real_x, real_y, real_chunk, losses, norms, report, masks)
    else:
        outer, final = _window_recompute(steps, carry, start, real_x, real_y, real_chunk, losses, norms,
                                         offload_snapshots, report, masks)
    return MetaGradient(outer_loss=outer[0], outer_accuracy=outer[1], images=steps.grads["images"],
                        labels=steps.grads["labels"], lr=steps.grads["lr"], inner_losses=torch.stack(losses),
                        grad_norms=torch.stack(norms), final_params=final)


def plain_trajectory(model: FunctionalModel, init_params: Params, optimizer: GradientTransformation,
                     lr: torch.Tensor | float, images: torch.Tensor, labels: torch.Tensor,
                     schedule: InnerSchedule) -> tuple[torch.Tensor, Params]:
    """Plain inner training (no graph kept): ``||grad_params L_t||`` at every step, and the final
    parameters. A probe of the trajectory the unroll differentiates."""
    steps = UnrollSteps(model, optimizer, images.detach(), labels.detach(),
                        lr.detach() if isinstance(lr, torch.Tensor) else lr, schedule)
    carry, norms = steps.init(init_params), []
    for t in range(len(schedule)):
        carry, _, norm = steps.forward(t, carry)
        norms.append(norm)
    return torch.stack(norms), steps.params(carry)


def trajectory_grad_norms(*args) -> torch.Tensor:
    """``||grad_params L_t||`` at every step of :func:`plain_trajectory` (same arguments)."""
    return plain_trajectory(*args)[0]


def _window_full(steps: UnrollSteps, carry, start, real_x, real_y, chunk, losses, norms, report, masks=None):
    """Keep the whole window's graph, then backpropagate the outer adjoint once."""
    wrt = [(k, v) for k, v in (("images", steps.images), ("labels", steps.labels), ("lr", steps.lr))
           if steps.grads[k] is not None]
    if masks is not None:
        return _window_full_trajectories(steps, carry, start, real_x, real_y, chunk, losses, norms, report, masks,
                                         wrt)
    params, opt_state = steps.layout.unpack(*carry)
    params = tuple(p.detach().requires_grad_() for p in params)
    with torch.enable_grad():
        for t in range(start, len(steps.schedule)):
            idx, theta = steps.batch(t)
            x = steps.network_input(steps.images[idx], theta)
            out = inner_step(steps.model, steps.optimizer, params, opt_state, x, steps.labels[idx], steps.lr,
                             create_graph=True)
            params, opt_state = out.params, out.opt_state
            losses.append(out.loss)
            norms.append(out.grad_norm)
            report(t + 1, len(steps.schedule), "forward")
    final = tuple(p.detach() for p in params)
    loss, acc, adjoint = outer_loss_and_grad(steps.model, final, real_x, real_y, chunk)
    _add_data_grads(steps, wrt, params, adjoint)
    return (loss, acc), final


def _add_data_grads(steps: UnrollSteps, wrt, outputs, grad_outputs) -> None:
    """Backpropagate ``grad_outputs`` from the window's ``outputs`` into the data's gradients."""
    if wrt:
        res = torch.autograd.grad(outputs, [v for _, v in wrt], grad_outputs=grad_outputs, allow_unused=True)
        for (key, _), g in zip(wrt, _zeros_for_none(res, [v for _, v in wrt])):
            steps.grads[key].add_(g)


def _window_full_trajectories(steps, carry, start, real_x, real_y, chunk, losses, norms, report, masks, wrt):
    """:func:`_window_full` for K trajectories, on the flat carry: a trajectory's block is detached
    where its own window starts, and frozen once it has run its own N_k steps."""
    flat, aux = carry[0].detach().requires_grad_(), carry[1]
    with torch.enable_grad():
        for t in range(start, len(steps.schedule)):
            starting = masks.window_starts(t, start)
            if starting is not None:
                flat = torch.where(starting, flat.detach(), flat)
            params, opt_state = steps.layout.unpack(flat, aux)
            idx, theta = steps.batch(t)
            x = steps.network_input(steps.images[idx], theta)
            out = inner_step(steps.model, steps.optimizer, params, opt_state, x, steps.labels[idx], steps.lr,
                             create_graph=True, trajectories=steps.trajectories)
            new_flat, aux = steps.layout.pack(out.params, out.opt_state)
            flat = masked_step(masks.active(t), new_flat, flat)
            losses.append(out.loss)
            norms.append(out.grad_norm)
            report(t + 1, len(steps.schedule), "forward")
    final = tuple(p.detach() for p in steps.layout.unpack(flat, aux)[0])
    loss, acc, adj_params = outer_loss_and_grad(steps.model, final, real_x, real_y, chunk, steps.trajectories)
    _add_data_grads(steps, wrt, flat, steps.final_adjoint(adj_params))
    return (loss, acc), final


def _window_recompute(steps: UnrollSteps, carry, start, real_x, real_y, chunk, losses, norms, offload=False,
                      report=lambda done, total, phase: None, masks=None):
    """Snapshots forward, then one step's graph at a time backward (memory flat in the window).

    With ``offload`` the snapshots wait in pinned host memory (CUDA): device memory is then
    independent of the window, not just nearly so (a snapshot is params + optimizer state).
    """
    snapshots = []
    for t in range(start, len(steps.schedule)):
        snapshots.append(_to_host(carry) if offload else carry)
        new_carry, loss, norm = steps.forward(t, carry)
        carry = new_carry if masks is None else (masked_step(masks.active(t), new_carry[0], carry[0]), new_carry[1])
        losses.append(loss)
        norms.append(norm)
        report(t + 1, len(steps.schedule), "forward")
    final = steps.params(carry)
    device = final[0].device
    loss, acc, adj_params = outer_loss_and_grad(steps.model, final, real_x, real_y, chunk, steps.trajectories)
    adjoint = steps.final_adjoint(adj_params)
    for offset in reversed(range(len(snapshots))):
        snapshot, snapshots[offset] = snapshots[offset], None  # free each snapshot once used
        if offload:
            snapshot = (snapshot[0].to(device, non_blocking=True),
                        tuple(a.to(device, non_blocking=True) for a in snapshot[1]))
        t = start + offset
        if masks is None:
            adjoint = steps.reverse(t, snapshot, adjoint)
        else:  # outside a trajectory's window its adjoint is dropped; through its frozen steps, kept
            kept = masks.differentiated(t)
            adjoint = adjoint if kept is None else torch.where(kept, adjoint, 0.0)
            adjoint = masked_vjp(masks.active(t), adjoint, lambda a: steps.reverse(t, snapshot, a))
        report(len(snapshots) - offset, len(snapshots), "reverse")
    return (loss, acc), final


def _to_host(carry: Carry) -> Carry:
    """A copy of ``carry`` in (pinned, where CUDA is up) host memory; asynchronous on CUDA."""
    def copy(t: torch.Tensor) -> torch.Tensor:
        if t.device.type == "cpu":
            return t
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        return host.copy_(t, non_blocking=True)
    return copy(carry[0]), tuple(copy(a) for a in carry[1])
