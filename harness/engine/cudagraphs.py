"""CUDA-graph replay of the unroll's step functions.

On a large GPU the inner steps of dataset distillation are launch-bound: a ConvNet step on
100 small images is a few hundred tiny kernels, each costing more to launch than to run.
:class:`GraphedSteps` captures :meth:`UnrollSteps.forward_body` (the no-graph step of the
prefix and of the recompute forward) and :meth:`UnrollSteps.reverse_body` (the recompute
mode's rebuilt step and its vector-Jacobian product) once per shape, and then replays them:
one launch per step instead of hundreds.

A captured graph reads and writes fixed addresses, so every call copies its inputs into
*static* buffers, replays, and copies the outputs out. The buffers are named *slots*, one per
keyword argument of the body (``flat``, ``aux``, ``idx``, ``theta``, ``images``, ``labels``,
``lr``, and the reverse step's ``adjoint``), and the outputs are the body's named tuple: a body
whose arguments no longer match the slots fails when its graph is built (:func:`check_slots`),
and copying into a slot that does not exist fails too. The synthetic images, labels and
learning rate are copied in once per outer step. The graphs live in a :class:`StepGraphs`
cache that outlives one meta-gradient, keyed by the network and optimizer objects and every
shape, so capture (a few warm-up calls and a recording) is paid once per run as long as the
caller reuses its network and optimizer (the ``UnrolledMethod`` outer loop does).

``capture=False`` runs the very same static-buffer plumbing without CUDA graphs (calling the
bodies directly): that is how the CPU tests check that the plumbing is exact. Not captured:
steps with a curvature callback (AT-BPTT's low-rank Hessian calls back into Python).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from harness.engine.carry import Carry
from harness.engine.steps import UnrollSteps


def check_slots(body: Callable[..., Any], slots: dict[str, Any]) -> None:
    """Raise ``TypeError`` unless ``body`` takes exactly the named ``slots`` (its other parameters,
    if any, have defaults): a renamed, added or dropped argument fails here, loudly."""
    params = inspect.signature(body).parameters
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params.values()):
        raise TypeError(f"{body.__qualname__} must take named arguments only, to be bound to graph slots")
    missing = [name for name, p in params.items() if p.default is p.empty and name not in slots]
    unknown = [name for name in slots if name not in params]
    if missing or unknown:
        raise TypeError(f"{body.__qualname__} does not match its graph slots ({', '.join(slots)}): "
                        f"arguments without a slot {missing}, slots without an argument {unknown}")


@dataclass
class _Graph:
    """One captured (or, without CUDA, emulated) body with its named static inputs and outputs."""

    body: Callable[..., tuple]
    slots: dict[str, Any]  # argument name -> static buffer (a tensor, a tuple of tensors, or None)
    graph: Any = None  # torch.cuda.CUDAGraph when captured
    static_out: tuple = ()

    def __post_init__(self) -> None:
        check_slots(self.body, self.slots)

    def bind(self, body: Callable[..., tuple]) -> None:
        check_slots(body, self.slots)
        self.body = body

    def load(self, **values: Any) -> None:
        """Copy ``values`` into the slots of the same names (None: leave that slot as it is)."""
        with torch.no_grad():
            for name, value in values.items():
                if name not in self.slots:
                    raise KeyError(f"{self.body.__qualname__} has no graph slot {name!r} "
                                   f"(slots: {', '.join(self.slots)})")
                dst = self.slots[name]
                if value is None or dst is None:
                    continue
                if isinstance(dst, tuple):
                    for d, v in zip(dst, value, strict=True):
                        d.copy_(v)
                else:
                    dst.copy_(value)

    def run(self, capture: bool, warmup: int) -> tuple:
        if not capture:
            return self.body(**self.slots)
        with torch.cuda.device(self.slots["flat"].device):  # the buffers' device, not the current one
            if self.graph is None:
                self._capture(warmup)
            self.graph.replay()
        return self.static_out

    def _capture(self, warmup: int) -> None:
        # Warm up on a side stream (cuDNN/cuBLAS pick their kernels, lazy state is created),
        # then record; the recording's outputs become the static outputs. The graph is kept
        # only once its capture succeeded.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self.body(**self.slots)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.body(**self.slots)
        self.graph, self.static_out = graph, out


def _static_like(x: Any) -> Any:
    if isinstance(x, tuple):
        return tuple(_static_like(v) for v in x)
    return x.detach().clone() if isinstance(x, torch.Tensor) else x


@dataclass
class StepGraphs:
    """Captured step graphs of a run, keyed by everything that fixes their shapes.

    Use ``UnrollOptions(steps_factory=graphs.factory)`` in :func:`harness.engine.meta_gradient`.
    """

    capture: bool = True
    warmup: int = 3
    _entries: dict[tuple, dict[str, _Graph]] = field(default_factory=dict)

    def factory(self, *args, **kwargs) -> UnrollSteps:
        steps = GraphedSteps(*args, **kwargs)
        steps.graphs = self
        return steps

    def entry(self, steps: "GraphedSteps", carry: Carry) -> dict[str, _Graph]:
        flat, aux = carry
        idx, theta = steps.batch(0)
        key = (
            id(steps.model), id(steps.optimizer), tuple(steps.layout.sizes), flat.dtype, flat.device,
            tuple((a.shape, a.dtype) for a in aux), tuple(idx.shape), None if theta is None else tuple(theta.shape),
            tuple(steps.images.shape), steps.images.dtype, tuple(steps.labels.shape), steps.labels.dtype,
            isinstance(steps.lr, torch.Tensor), steps.learn_images, steps.learn_labels, steps.learn_lr,
            steps.channels_last,
        )
        if key not in self._entries:
            # The data slots and the optimizer state's non-float leaves are shared by both graphs.
            shared = {"aux": _static_like(aux), "idx": _static_like(idx), "theta": _static_like(theta),
                      "images": _static_like(steps.images.detach()), "labels": _static_like(steps.labels.detach()),
                      "lr": _static_like(steps.lr_tensor(flat))}
            forward = {"flat": _static_like(flat), **shared}
            reverse = {"flat": _static_like(flat), **shared, "adjoint": torch.zeros_like(flat)}
            self._entries[key] = {"forward": _Graph(steps.forward_body, forward),
                                  "reverse": _Graph(steps.reverse_body, reverse)}
        entry = self._entries[key]
        # Bind the bodies to this outer step's steps object: a captured graph no longer calls
        # them, but the uncaptured path does, and the previous one can then be freed.
        entry["forward"].bind(steps.forward_body)
        entry["reverse"].bind(steps.reverse_body)
        return entry


class GraphedSteps(UnrollSteps):
    """:class:`UnrollSteps` whose two steps replay captured graphs (see the module docstring)."""

    graphs: StepGraphs

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.curvature is not None:
            raise ValueError("steps with a curvature callback cannot be captured in a CUDA graph")
        self._entry: dict[str, _Graph] | None = None

    def init(self, params) -> Carry:
        carry = super().init(params)
        self._entry = self.graphs.entry(self, carry)
        # This outer step's data, copied once into the slots both graphs read.
        self._entry["forward"].load(images=self.images.detach(), labels=self.labels.detach(),
                                    lr=self.lr_tensor(carry[0]))
        return carry

    def lr_tensor(self, like: torch.Tensor) -> torch.Tensor:
        """The inner lr as a detached tensor on ``like``'s device (the graphs read a buffer)."""
        lr = self.lr.detach() if isinstance(self.lr, torch.Tensor) else self.lr
        return torch.as_tensor(lr, dtype=like.dtype, device=like.device)

    def forward(self, t: int, carry: Carry) -> tuple[Carry, torch.Tensor, torch.Tensor]:
        graph = self._entry["forward"]
        idx, theta = self.batch(t)
        graph.load(flat=carry[0], aux=carry[1], idx=idx, theta=theta)
        out = graph.run(self.graphs.capture, self.graphs.warmup)
        return (out.flat.clone(), tuple(a.clone() for a in out.aux)), out.loss.clone(), out.grad_norm.clone()

    def reverse(self, t: int, carry: Carry, adjoint: torch.Tensor) -> torch.Tensor:
        graph = self._entry["reverse"]
        idx, theta = self.batch(t)
        graph.load(flat=carry[0], aux=carry[1], idx=idx, theta=theta, adjoint=adjoint)
        out = graph.run(self.graphs.capture, self.graphs.warmup)
        self.accumulate(idx, out.data_grads)
        return out.adjoint.clone()  # the graph's own output buffer is overwritten by the next replay
