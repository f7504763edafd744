"""The unroll's carry: parameters and optimizer state packed into one flat tensor."""

from __future__ import annotations

from typing import Sequence

import torch
import torchopt

from harness.engine.functional import Params


class FlatLayout:
    """Parameters and optimizer state packed into one flat vector (plus non-float leaves).

    The unroll's carry is ``(flat, aux)``: ``flat`` holds every parameter and every floating
    optimizer-state leaf (momentum, Adam moments) end to end; ``aux`` the other leaves (Adam's
    integer step count). One tensor per carry makes a snapshot one copy and an adjoint one
    tensor, and gives a CUDA graph a single static input.
    """

    def __init__(self, params: Params, state):
        leaves, self.treespec = torchopt.pytree.tree_flatten(state)
        self.n_params = len(params)
        self.n_leaves = len(leaves)
        self.float_leaves = [i for i, leaf in enumerate(leaves) if torch.is_floating_point(leaf)]
        self.aux_leaves = [i for i in range(len(leaves)) if i not in self.float_leaves]
        tensors = list(params) + [leaves[i] for i in self.float_leaves]
        self.shapes = [t.shape for t in tensors]
        self.sizes = [t.numel() for t in tensors]
        dtypes = {t.dtype for t in tensors}
        if len(dtypes) != 1:
            raise ValueError(f"parameters and optimizer state must share one float dtype, got {sorted(map(str, dtypes))}")

    def pack(self, params: Params, state) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        leaves = torchopt.pytree.tree_flatten(state)[0]
        tensors = list(params) + [leaves[i] for i in self.float_leaves]
        return torch.cat([t.reshape(-1) for t in tensors]), tuple(leaves[i] for i in self.aux_leaves)

    def unpack(self, flat: torch.Tensor, aux: Sequence[torch.Tensor]) -> tuple[Params, object]:
        """Views into ``flat`` (differentiable: gradients flow back to ``flat``)."""
        views = [v.view(shape) for v, shape in zip(flat.split(self.sizes), self.shapes)]
        leaves: list = [None] * self.n_leaves
        for i, view in zip(self.float_leaves, views[self.n_params:]):
            leaves[i] = view
        for i, leaf in zip(self.aux_leaves, aux):
            leaves[i] = leaf
        return tuple(views[: self.n_params]), torchopt.pytree.tree_unflatten(self.treespec, leaves)


Carry = tuple[torch.Tensor, tuple[torch.Tensor, ...]]
