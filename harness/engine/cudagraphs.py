"""CUDA-graph replay of the unroll's step functions.

On a large GPU the inner steps of dataset distillation are launch-bound: a ConvNet step on
100 small images is a few hundred tiny kernels, each costing more to launch than to run.
:class:`GraphedSteps` captures :meth:`UnrollSteps.forward_body` (the no-graph step of the
prefix and of the recompute forward) and :meth:`UnrollSteps.reverse_body` (the recompute
mode's rebuilt step and its vector-Jacobian product) once per shape, and then replays them:
one launch per step instead of hundreds.

A captured graph reads and writes fixed addresses, so every call copies its inputs (carry,
batch indices, augmentation matrices, adjoint) into *static* buffers, replays, and copies the
outputs out. The synthetic images, labels and learning rate are copied in once per outer step.
The graphs live in a :class:`StepGraphs` cache that outlives one meta-gradient, keyed by the
network and optimizer objects and every shape, so capture (a few warm-up calls and a
recording) is paid once per run as long as the caller reuses its network and optimizer (the
``UnrolledMethod`` outer loop does).

``capture=False`` runs the very same static-buffer plumbing without CUDA graphs (calling the
bodies directly): that is how the CPU tests check that the plumbing is exact. Not captured:
steps with a curvature callback (AT-BPTT's low-rank Hessian calls back into Python).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from harness.engine.unroll import Carry, UnrollSteps


@dataclass
class _Graph:
    """One captured (or, without CUDA, emulated) body with its static inputs and outputs."""

    body: Callable[..., tuple]
    static_in: list[Any]
    graph: Any = None  # torch.cuda.CUDAGraph when captured
    static_out: tuple = ()

    def run(self, capture: bool, warmup: int) -> tuple:
        if not capture:
            return self.body(*self.static_in)
        with torch.cuda.device(self.static_in[0].device):  # the buffers' device, not the current one
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
                self.body(*self.static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.body(*self.static_in)
        self.graph, self.static_out = graph, out


def _static_like(x: Any) -> Any:
    return x.detach().clone() if isinstance(x, torch.Tensor) else x


def _copy_in(static: list[Any], values: list[Any]) -> None:
    with torch.no_grad():
        for dst, src in zip(static, values):
            if isinstance(dst, torch.Tensor) and src is not None:  # None: leave this buffer as it is
                dst.copy_(src)


@dataclass
class StepGraphs:
    """Captured step graphs of a run, keyed by everything that fixes their shapes.

    Use ``graphs.factory`` as the ``steps_factory`` of :func:`harness.engine.meta_gradient`.
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
        lr = steps.lr
        key = (
            id(steps.model), id(steps.optimizer), tuple(steps.layout.sizes), flat.dtype, flat.device,
            tuple((a.shape, a.dtype) for a in aux), tuple(idx.shape), None if theta is None else tuple(theta.shape),
            tuple(steps.images.shape), steps.images.dtype, tuple(steps.labels.shape), steps.labels.dtype,
            isinstance(lr, torch.Tensor), steps.learn_images, steps.learn_labels, steps.learn_lr, steps.channels_last,
        )
        if key not in self._entries:
            shared = [_static_like(idx), _static_like(theta), _static_like(steps.images.detach()),
                      _static_like(steps.labels.detach()), _static_like(steps.lr_tensor(flat))]
            fwd_in = [_static_like(flat), tuple(_static_like(a) for a in aux), *shared]
            rev_in = [_static_like(flat), fwd_in[1], *shared, torch.zeros_like(flat)]
            self._entries[key] = {"forward": _Graph(steps.forward_body, fwd_in),
                                  "reverse": _Graph(steps.reverse_body, rev_in)}
        entry = self._entries[key]
        # Bind the bodies to this outer step's steps object: a captured graph no longer calls
        # them, but the uncaptured path does, and the previous one can then be freed.
        entry["forward"].body, entry["reverse"].body = steps.forward_body, steps.reverse_body
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
        # This outer step's data, copied once into the buffers both graphs read.
        fwd = self._entry["forward"].static_in
        _copy_in(fwd[4:7], [self.images.detach(), self.labels.detach(), self.lr_tensor(carry[0])])
        return carry

    def lr_tensor(self, like: torch.Tensor) -> torch.Tensor:
        """The inner lr as a detached tensor on ``like``'s device (the graphs read a buffer)."""
        lr = self.lr.detach() if isinstance(self.lr, torch.Tensor) else self.lr
        return torch.as_tensor(lr, dtype=like.dtype, device=like.device)

    def forward(self, t: int, carry: Carry) -> tuple[Carry, torch.Tensor, torch.Tensor]:
        graph = self._entry["forward"]
        idx, theta = self.batch(t)
        _copy_in(graph.static_in[:4], [carry[0], None, idx, theta])
        _copy_in(list(graph.static_in[1]), list(carry[1]))
        flat, aux, loss, norm = graph.run(self.graphs.capture, self.graphs.warmup)
        return (flat.clone(), tuple(a.clone() for a in aux)), loss.clone(), norm.clone()

    def reverse(self, t: int, carry: Carry, adjoint: torch.Tensor) -> torch.Tensor:
        graph = self._entry["reverse"]
        idx, theta = self.batch(t)
        _copy_in(graph.static_in, [carry[0], None, idx, theta, None, None, None, adjoint])
        _copy_in(list(graph.static_in[1]), list(carry[1]))
        adjoint, *data_grads = graph.run(self.graphs.capture, self.graphs.warmup)
        self._accumulate(idx, data_grads)
        return adjoint.clone()  # the graph's own output buffer is overwritten by the next replay
