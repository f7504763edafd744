"""One inner step, and the two step functions of an unroll (forward without a graph; reverse as a
vector-Jacobian product rebuilt from a snapshot) that :func:`harness.engine.meta_gradient` runs.

The inner problem trains a network ``f(params, x)`` on the synthetic set with a torchopt
optimizer at learning rate 1. One inner step is the pure function

    (params, opt_state, x_t, y_t, lr) -> (params', opt_state')
    params' = params + lr * update(grad_params L(f(params, x_t), y_t), opt_state)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import torch
from torchopt.base import GradientTransformation

from harness.engine.carry import Carry, FlatLayout
from harness.engine.functional import FunctionalModel, Params, global_norm, inner_loss
from harness.engine.schedule import InnerSchedule
from harness.engine.trajectories import block_norms, trajectory_losses
from harness.models.augment import apply_affine


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


def zeros_for_none(grads, like) -> list[torch.Tensor]:
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, like)]


HVP = Callable[[Params], Params]
# curvature(t, params_t, v, hvp) -> an approximation of H_t v, where H_t is the Hessian of the
# inner loss at step t in the parameters; ``hvp`` computes the exact H_t v (for building or
# checking the approximation, e.g. by randomized SVD).
Curvature = Callable[[int, Params, Params, HVP], Params]


class ForwardOut(NamedTuple):
    """What :meth:`UnrollSteps.forward_body` returns (named: the CUDA graphs read it by name)."""

    flat: torch.Tensor
    aux: tuple[torch.Tensor, ...]
    loss: torch.Tensor
    grad_norm: torch.Tensor


class ReverseOut(NamedTuple):
    """What :meth:`UnrollSteps.reverse_body` returns: the adjoint of the step's input carry, and
    this batch's data gradients (selected images, selected labels, lr: those learned, in order)."""

    adjoint: torch.Tensor
    data_grads: tuple[torch.Tensor, ...]


class UnrollSteps:
    """The step functions of one unroll, bound to this outer step's synthetic data.

    The carry between steps is ``(flat, aux)`` (see :class:`FlatLayout`).

    * :meth:`forward` ``(t, carry) -> (carry, loss, grad_norm)``: step t without a graph (the
      prefix, and the forward pass of the recompute mode);
    * :meth:`reverse` ``(t, carry_t, adj_{t+1}) -> adj_t``: step t's graph rebuilt from its
      input carry, the adjoint of its output (params *and* optimizer state) pulled back to its
      input, and step t's contribution to the meta-gradient added to :attr:`grads`.

    Both delegate to pure tensor functions of fixed-shape inputs passed by keyword
    (:meth:`forward_body`, :meth:`reverse_body`), which :mod:`harness.engine.cudagraphs` captures
    with one named static buffer per argument. The reverse step differentiates with respect to
    the *selected* rows ``images[idx]`` (before augmentation) and scatters the result with
    ``index_add_``: its cost is per batch, not per synthetic set.
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

    def learned(self) -> list[tuple[str, torch.Tensor]]:
        """``(name, tensor)`` of the data the meta-gradient is taken with respect to."""
        return [(k, v) for k, v in (("images", self.images), ("labels", self.labels), ("lr", self.lr))
                if self.grads[k] is not None]

    # -- the two steps

    def forward(self, t: int, carry: Carry) -> tuple[Carry, torch.Tensor, torch.Tensor]:
        idx, theta = self.batch(t)
        lr = self.lr.detach() if isinstance(self.lr, torch.Tensor) else self.lr
        out = self.forward_body(flat=carry[0], aux=carry[1], idx=idx, theta=theta, images=self.images.detach(),
                                labels=self.labels.detach(), lr=lr)
        return (out.flat, out.aux), out.loss, out.grad_norm

    def reverse(self, t: int, carry: Carry, adjoint: torch.Tensor) -> torch.Tensor:
        idx, theta = self.batch(t)
        out = self.reverse_body(flat=carry[0], aux=carry[1], idx=idx, theta=theta, images=self.images.detach(),
                                labels=self.labels.detach(), lr=self.lr, adjoint=adjoint, t=t)
        self.accumulate(idx, out.data_grads)
        return out.adjoint

    def forward_body(self, *, flat, aux, idx, theta, images, labels, lr) -> ForwardOut:
        """Step ``(flat, aux) -> (flat', aux', loss, ||grad||)`` on the batch ``idx``, no graph kept."""
        with torch.enable_grad():
            flat = flat.detach().requires_grad_()
            params, state = self.layout.unpack(flat, aux)
            x = self.network_input(images[idx], theta)
            out = inner_step(self.model, self.optimizer, params, state, x, labels[idx], lr, create_graph=False,
                             trajectories=self.trajectories)
        new_flat, new_aux = self.layout.pack(out.params, out.opt_state)
        return ForwardOut(new_flat.detach(), new_aux, out.loss, out.grad_norm)

    def reverse_body(self, *, flat, aux, idx, theta, images, labels, lr, adjoint, t=None) -> ReverseOut:
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
            res = zeros_for_none(torch.autograd.grad(new_flat, inputs, grad_outputs=adjoint, allow_unused=True),
                                 inputs)
            adj_flat, data_grads = res[0], res[1:1 + len(data)]
            if self.curvature is not None:
                adj_flat, data_grads = self._approximate_curvature(t, params, g, res[1 + len(data):], data,
                                                                   adj_flat, data_grads)
        return ReverseOut(adj_flat, tuple(data_grads))

    def _approximate_curvature(self, t, params, g, adj_g, data, adj_flat, data_grads):
        """The reverse step's Hessian term from the curvature callback (the params' part of the
        adjoint), and the exact mixed term d^2 L / dtheta dx added to the data gradients."""

        def hvp(vectors: Params) -> Params:  # the exact Hessian-vector product at this step
            return tuple(h.detach() for h in zeros_for_none(
                torch.autograd.grad(g, params, grad_outputs=vectors, retain_graph=True, allow_unused=True), params))

        approx = self.curvature(t, tuple(p.detach() for p in params), tuple(adj_g), hvp)
        adj_flat = adj_flat + self.final_adjoint(approx)  # H v enters the params' part only
        data_leaves = data[: int(self.learn_images) + int(self.learn_labels)]
        if data_leaves:
            mixed = zeros_for_none(torch.autograd.grad(g, data_leaves, grad_outputs=adj_g, allow_unused=True),
                                   data_leaves)
            data_grads = [d + m for d, m in zip(data_grads, mixed)] + list(data_grads[len(mixed):])
        return adj_flat, data_grads

    def accumulate(self, idx: torch.Tensor, data_grads: Sequence[torch.Tensor]) -> None:
        """Add one reverse step's data gradients into :attr:`grads` (selected rows scattered back)."""
        grads = iter(data_grads)
        if self.learn_images:
            self.grads["images"].index_add_(0, idx, next(grads))
        if self.learn_labels:
            self.grads["labels"].index_add_(0, idx, next(grads))
        if self.learn_lr:
            self.grads["lr"].add_(next(grads))


StepsFactory = Callable[..., UnrollSteps]
