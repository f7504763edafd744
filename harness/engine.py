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
import torch.nn as nn
import torch.nn.functional as F
import torchopt
from torch.func import functional_call
from torchopt.base import GradientTransformation

from harness.augment import AugmentConfig, apply_affine, sample_affine

Params = tuple[torch.Tensor, ...]


# --------------------------------------------------------------------------- model as a function


class FunctionalModel:
    """An ``nn.Module`` used as a pure function of a tuple of parameter tensors."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.names = tuple(name for name, _ in module.named_parameters())
        self.buffers = dict(module.named_buffers())
        # Batch statistics couple the examples of a batch: chunked outer losses stop being exact.
        self.batch_independent = not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())

    def __call__(self, params: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.module, {**dict(zip(self.names, params)), **self.buffers}, (x,))

    def parameters(self) -> Params:
        """The module's current parameters, detached (an initialisation for the engine)."""
        return tuple(p.detach().clone() for p in self.module.parameters())


def inner_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross entropy with hard (int64) or soft labels.

    Soft labels are used as given, as probability targets (``-sum_c y_c log softmax(z)_c``),
    like the official RaT-BPTT code; learnable labels are only clipped at zero.
    """
    return F.cross_entropy(logits, labels)


def global_norm(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors]))


# --------------------------------------------------------------------------- synthetic batches


@dataclass(frozen=True)
class InnerSchedule:
    """What each of the N inner steps trains on.

    ``indices[t]`` are the rows of the synthetic set used at step t; ``affine[t]`` (optional)
    are their augmentation matrices. Drawn ahead, so any step can be recomputed exactly.
    """

    indices: torch.Tensor  # [N, B] int64
    affine: torch.Tensor | None = None  # [N, B, 2, 3]

    def __len__(self) -> int:
        return self.indices.shape[0]

    def batch(self, t: int, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.indices[t]
        x = images[idx]
        if self.affine is not None:
            x = apply_affine(x, self.affine[t])
        return x, labels[idx]

    def slice(self, start: int, stop: int) -> "InnerSchedule":
        affine = None if self.affine is None else self.affine[start:stop]
        return InnerSchedule(self.indices[start:stop], affine)


def class_balanced_schedule(
    n_steps: int,
    num_classes: int,
    ipc: int,
    *,
    per_class: int | None = None,
    classes_per_step: int | None = None,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    augment: AugmentConfig | None = None,
    image_size: int | None = None,
) -> InnerSchedule:
    """The RaT-BPTT mini-batch schedule for a class-major synthetic set (``ipc`` rows per class).

    At every step, ``classes_per_step`` classes are drawn without replacement (all classes by
    default; the "task sampler" for many classes), and ``per_class`` images of each drawn
    class without replacement (all ``ipc`` by default). Rows are sorted within a step.
    """
    per_class = min(per_class or ipc, ipc)
    classes_per_step = min(classes_per_step or num_classes, num_classes)
    rows = torch.rand(n_steps, num_classes, ipc, generator=generator).argsort(-1)[..., :per_class]
    rows = rows.sort(-1).values + torch.arange(num_classes)[None, :, None] * ipc
    if classes_per_step < num_classes:
        classes = torch.rand(n_steps, num_classes, generator=generator).argsort(-1)[:, :classes_per_step]
        classes = classes.sort(-1).values
        rows = torch.gather(rows, 1, classes[..., None].expand(-1, -1, per_class))
    indices = rows.reshape(n_steps, classes_per_step * per_class)
    affine = None
    if augment is not None and augment.enabled:
        affine = sample_affine(augment, n_steps, indices.shape[1], image_size, generator).to(device)
    return InnerSchedule(indices.to(device), affine)


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
) -> StepOutput:
    """One step of inner training, a pure function of its inputs.

    With ``create_graph`` the result is differentiable in everything (params, state, x, y, lr);
    without, the caller passes detached params that require grad and gets detached outputs.
    """
    loss = inner_loss(model(params, x), y)
    grads = torch.autograd.grad(loss, params, create_graph=create_graph)
    with torch.set_grad_enabled(create_graph):
        updates, opt_state = optimizer.update(grads, opt_state, params=params, inplace=False)
        new_params = tuple(p + lr * u for p, u in zip(params, updates))
    return StepOutput(new_params, opt_state, loss.detach(), global_norm(grads).detach())


def _detached_step(model, optimizer, params, opt_state, x, y, lr) -> StepOutput:
    """A step with no graph kept: the prefix of the unroll and the recompute mode's forward."""
    params = tuple(p.detach().requires_grad_() for p in params)
    lr = lr.detach() if isinstance(lr, torch.Tensor) else lr
    with torch.enable_grad():
        out = inner_step(model, optimizer, params, opt_state, x.detach(), y.detach(), lr, create_graph=False)
    out.params = tuple(p.detach() for p in out.params)
    return out


# --------------------------------------------------------------------------- the outer loss


def outer_loss_and_grad(
    model: FunctionalModel, params: Params, real_x: torch.Tensor, real_y: torch.Tensor, chunk: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, Params]:
    """Mean cross entropy on the real batch, its accuracy, and its gradient in ``params``.

    Evaluated in chunks of ``chunk`` examples (exact: the loss is a mean of per-example terms).
    """
    if chunk is not None and chunk < real_x.shape[0] and not model.batch_independent:
        raise ValueError("real-batch chunking is exact only for networks without batch statistics (BatchNorm)")
    params = tuple(p.detach().requires_grad_() for p in params)
    n = real_x.shape[0]
    chunk = chunk or n
    loss_sum = torch.zeros((), dtype=real_x.dtype, device=real_x.device)
    correct = torch.zeros((), dtype=torch.int64, device=real_x.device)
    grads = [torch.zeros_like(p) for p in params]
    with torch.enable_grad():
        for start in range(0, n, chunk):
            logits = model(params, real_x[start : start + chunk])
            labels = real_y[start : start + chunk]
            loss = F.cross_entropy(logits, labels, reduction="sum") / n
            for acc, g in zip(grads, torch.autograd.grad(loss, params)):
                acc.add_(g)
            loss_sum += loss.detach()
            correct += (logits.detach().argmax(-1) == labels).sum()
    return loss_sum, correct.to(real_x.dtype) / n, tuple(grads)


# --------------------------------------------------------------------------- the meta-gradient


@dataclass
class MetaGradient:
    """What :func:`meta_gradient` returns. Gradients are ``None`` for inputs that did not require grad."""

    outer_loss: torch.Tensor
    outer_accuracy: torch.Tensor
    images: torch.Tensor | None
    labels: torch.Tensor | None
    lr: torch.Tensor | None
    inner_losses: torch.Tensor  # [N]
    grad_norms: torch.Tensor  # [N]: ||grad_params L_t|| at every inner step (a free probe)
    final_params: Params = field(repr=False)


Curvature = Callable[[int, Params, Params], Params]


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
) -> MetaGradient:
    """The meta-gradient of the real-batch loss after ``len(schedule)`` inner steps.

    Args:
        model: the network, as a function of a parameter tuple.
        init_params: its initialisation (treated as a constant).
        optimizer: a torchopt transformation at learning rate 1 (see ``harness.optim``).
        lr: inner learning rate; a tensor with ``requires_grad`` gets a meta-gradient.
        images: the synthetic images (gets a gradient if it requires grad).
        labels: int64 class labels, or float soft labels (get a gradient if they require grad).
        schedule: the mini-batch (and augmentation) of every inner step; N = ``len(schedule)``.
        window: M, the number of final steps differentiated (1 <= M <= N).
        real_x, real_y: the real batch of the outer loss.
        mode: ``"full"`` graph or ``"recompute"`` (one step's graph at a time); both exact.
        real_chunk: evaluate the outer loss in chunks of this many real examples.
        curvature: recompute mode only: ``curvature(t, params_t, v)`` replaces the exact
            Hessian-vector product ``H_t v`` of the inner loss at step t in the reverse pass
            (used by AT-BPTT's low-rank approximation). The mixed derivative in the synthetic
            data stays exact.
    """
    n_steps = len(schedule)
    if not 1 <= window <= n_steps:
        raise ValueError(f"window must be in [1, {n_steps}] (the number of inner steps), got {window}")
    if mode not in ("full", "recompute"):
        raise ValueError(f"mode must be 'full' or 'recompute', got {mode!r}")
    if curvature is not None and mode != "recompute":
        raise ValueError("a curvature approximation needs mode='recompute'")
    wrt = [t for t in (images, labels, lr) if isinstance(t, torch.Tensor) and t.requires_grad]

    params = tuple(p.detach() for p in init_params)
    opt_state = optimizer.init(params)
    losses, norms = [], []

    def record(out: StepOutput) -> None:
        losses.append(out.loss)
        norms.append(out.grad_norm)

    for t in range(n_steps - window):
        x, y = schedule.batch(t, images, labels)
        out = _detached_step(model, optimizer, params, opt_state, x, y, lr)
        params, opt_state = out.params, out.opt_state
        record(out)

    if mode == "full":
        grads, final, outer = _window_full(model, optimizer, params, opt_state, lr, images, labels, schedule,
                                           n_steps - window, real_x, real_y, real_chunk, wrt, record)
    else:
        grads, final, outer = _window_recompute(model, optimizer, params, opt_state, lr, images, labels, schedule,
                                                n_steps - window, real_x, real_y, real_chunk, wrt, record, curvature)

    by_input = {id(t): g for t, g in zip(wrt, grads)}
    pick = lambda t: by_input.get(id(t)) if isinstance(t, torch.Tensor) else None  # noqa: E731
    return MetaGradient(
        outer_loss=outer[0],
        outer_accuracy=outer[1],
        images=pick(images),
        labels=pick(labels),
        lr=pick(lr),
        inner_losses=torch.stack(losses),
        grad_norms=torch.stack(norms),
        final_params=final,
    )


def _zeros_for_none(grads, like) -> list[torch.Tensor]:
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, like)]


def _window_full(model, optimizer, params, opt_state, lr, images, labels, schedule, start, real_x, real_y, chunk, wrt,
                 record):
    params = tuple(p.detach().requires_grad_() for p in params)
    with torch.enable_grad():
        for t in range(start, len(schedule)):
            x, y = schedule.batch(t, images, labels)
            out = inner_step(model, optimizer, params, opt_state, x, y, lr, create_graph=True)
            params, opt_state = out.params, out.opt_state
            record(out)
    final = tuple(p.detach() for p in params)
    loss, acc, adjoint = outer_loss_and_grad(model, final, real_x, real_y, chunk)
    grads = torch.autograd.grad(params, wrt, grad_outputs=adjoint, allow_unused=True) if wrt else []
    return _zeros_for_none(grads, wrt), final, (loss, acc)


def _float_leaves(state) -> tuple[list[torch.Tensor], Callable[[list[torch.Tensor]], object], list[int]]:
    """The optimizer state's leaves, a function rebuilding the state, and which leaves are floating."""
    leaves, treespec = torchopt.pytree.tree_flatten(state)
    floating = [i for i, leaf in enumerate(leaves) if torch.is_floating_point(leaf)]
    return leaves, lambda new: torchopt.pytree.tree_unflatten(treespec, new), floating


def _window_recompute(model, optimizer, params, opt_state, lr, images, labels, schedule, start, real_x, real_y, chunk,
                      wrt, record, curvature):
    snapshots = []
    for t in range(start, len(schedule)):
        snapshots.append((params, opt_state))
        x, y = schedule.batch(t, images, labels)
        out = _detached_step(model, optimizer, params, opt_state, x, y, lr)
        params, opt_state = out.params, out.opt_state
        record(out)
    final = params
    loss, acc, adj_params = outer_loss_and_grad(model, final, real_x, real_y, chunk)

    adj_params = list(adj_params)
    adj_state = None  # zero after the last step: nothing downstream reads the final optimizer state
    grads = [torch.zeros_like(w) for w in wrt]
    for offset in reversed(range(len(snapshots))):
        t = start + offset
        snap_params, snap_state = snapshots[offset]
        adj_params, adj_state, step_grads = _reverse_step(model, optimizer, snap_params, snap_state, lr, images,
                                                          labels, schedule, t, adj_params, adj_state, wrt, curvature)
        for g, s in zip(grads, step_grads):
            g.add_(s)
        snapshots[offset] = None  # free the snapshot as soon as it is used
    return grads, final, (loss, acc)


def _reverse_step(model, optimizer, snap_params, snap_state, lr, images, labels, schedule, t, adj_params, adj_state,
                  wrt, curvature):
    """Pull the adjoints of (params_{t+1}, state_{t+1}) back through step t, rebuilt from its snapshot.

    Returns the adjoints of (params_t, state_t) and this step's contribution to the gradients
    of ``wrt``.
    """
    n_params = len(snap_params)
    params = tuple(p.detach().requires_grad_() for p in snap_params)
    leaves, rebuild, floating = _float_leaves(snap_state)
    leaves = [leaf.detach().requires_grad_() if i in floating else leaf for i, leaf in enumerate(leaves)]
    state_in = [leaves[i] for i in floating]
    with torch.enable_grad():
        x, y = schedule.batch(t, images, labels)
        loss = inner_loss(model(params, x), y)
        g = torch.autograd.grad(loss, params, create_graph=True)
        if curvature is not None:
            # Cut the graph at g: the update's own derivatives stay exact; g's dependence on
            # the params (the Hessian) is approximated below, its dependence on the data is exact.
            g_leaf = tuple(gi.detach().requires_grad_() for gi in g)
            g_used = g_leaf
        else:
            g_used = g
        updates, new_state = optimizer.update(g_used, rebuild(leaves), params=params, inplace=False)
        new_params = tuple(p + lr * u for p, u in zip(params, updates))
        new_leaves, _, new_floating = _float_leaves(new_state)
        outputs = list(new_params) + [new_leaves[i] for i in new_floating]
        out_adj = list(adj_params) + (list(adj_state) if adj_state is not None else
                                      [torch.zeros_like(new_leaves[i]) for i in new_floating])
        inputs = list(params) + state_in + list(wrt)
        if curvature is not None:
            inputs += list(g_leaf)
        res = torch.autograd.grad(outputs, inputs, grad_outputs=out_adj, allow_unused=True)
        res = _zeros_for_none(res, inputs)
        adj_p = res[:n_params]
        adj_s = res[n_params:n_params + len(state_in)]
        step_grads = res[n_params + len(state_in):n_params + len(state_in) + len(wrt)]
        if curvature is not None:
            adj_g = res[-n_params:]
            # g = grad_params L(params, x(images), y): its VJP with adj_g is H adj_g for the
            # params (approximated) and the exact mixed derivative for the data.
            approx = curvature(t, tuple(p.detach() for p in params), tuple(adj_g))
            adj_p = [a + h for a, h in zip(adj_p, approx)]
            data_wrt = [w for w in wrt if w is images or w is labels]
            if data_wrt:
                mixed = torch.autograd.grad(g, data_wrt, grad_outputs=adj_g, allow_unused=True)
                mixed = {id(w): m for w, m in zip(data_wrt, _zeros_for_none(mixed, data_wrt))}
                step_grads = [s + mixed[id(w)] if id(w) in mixed else s for s, w in zip(step_grads, wrt)]
    return list(adj_p), list(adj_s), list(step_grads)
