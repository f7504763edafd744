"""Differentiable image augmentation with parameters drawn ahead of time.

Every geometric op (flip, crop, rotate, scale) is an affine map, so a whole augmentation is
one ``[B, 2, 3]`` matrix per batch and one ``grid_sample`` call. Drawing the matrices up
front (from a seeded generator) makes an augmented inner step a pure function of its inputs:
the recompute pass of the engine rebuilds exactly the images the forward pass saw, and the
shapes are fixed for graph capture.

The ops and constants follow the differentiable augmentation of the RaT-BPTT code (DSA
style): flip with probability 0.5, crop as a shift of up to 12.5% of the side, rotation
within +-15 degrees, scale within [1/1.2, 1.2]. ``mode="one"`` draws one op per batch (the
official ``flip_rotate`` strategy); ``mode="all"`` composes all of them.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, field_validator

OPS = ("flip", "crop", "rotate", "scale")


class AugmentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    ops: tuple[str, ...] = ()
    mode: Literal["one", "all"] = "one"
    flip_prob: float = 0.5
    crop_fraction: float = 0.125
    rotate_degrees: float = 15.0
    scale_ratio: float = 1.2

    @field_validator("ops")
    @classmethod
    def _known_ops(cls, ops: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [op for op in ops if op not in OPS]
        if unknown:
            raise ValueError(f"unknown augmentation {unknown[0]!r} (known: {', '.join(OPS)})")
        return ops

    @property
    def enabled(self) -> bool:
        return bool(self.ops)


def _op_matrices(op: str, cfg: AugmentConfig, n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """``[n, 3, 3]`` float64 affine matrices (in grid_sample's normalized coordinates) for one op."""
    eye = torch.eye(3, dtype=torch.float64).repeat(n, 1, 1)
    u = torch.rand(n, 2, generator=gen, dtype=torch.float64)
    if op == "flip":
        eye[:, 0, 0] = torch.where(u[:, 0] < cfg.flip_prob, -1.0, 1.0)
    elif op == "crop":
        # Integer pixel shifts: with align_corners=False a shift of s pixels is 2s/size in
        # normalized coordinates, so bilinear sampling copies pixels up to rounding (~1e-7
        # relative in float32): a crop, not a blur.
        max_shift = int(size * cfg.crop_fraction + 0.5)
        shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=gen).to(torch.float64)
        eye[:, :2, 2] = 2.0 * shifts / size
    elif op == "rotate":
        angle = (u[:, 0] - 0.5) * 2 * math.radians(cfg.rotate_degrees)
        cos, sin = angle.cos(), angle.sin()
        eye[:, 0, 0], eye[:, 0, 1], eye[:, 1, 0], eye[:, 1, 1] = cos, -sin, sin, cos
    elif op == "scale":
        r = cfg.scale_ratio
        eye[:, 0, 0] = u[:, 0] * (r - 1 / r) + 1 / r
        eye[:, 1, 1] = u[:, 1] * (r - 1 / r) + 1 / r
    return eye


def sample_affine(
    cfg: AugmentConfig, n_batches: int, batch_size: int, size: int, gen: torch.Generator
) -> torch.Tensor | None:
    """``[n_batches, batch_size, 2, 3]`` augmentation matrices, or ``None`` when no op is enabled."""
    if not cfg.enabled:
        return None
    total = n_batches * batch_size
    theta = torch.eye(3, dtype=torch.float64).repeat(total, 1, 1)
    if cfg.mode == "all":
        for op in cfg.ops:
            theta = _op_matrices(op, cfg, total, size, gen) @ theta
    else:
        chosen = torch.randint(len(cfg.ops), (n_batches,), generator=gen).repeat_interleave(batch_size)
        for k, op in enumerate(cfg.ops):
            mats = _op_matrices(op, cfg, total, size, gen)
            theta = torch.where((chosen == k)[:, None, None], mats, theta)
    return theta[:, :2, :].reshape(n_batches, batch_size, 2, 3)


def apply_affine(x: torch.Tensor, theta: torch.Tensor | None) -> torch.Tensor:
    """Warp a batch ``[B, C, H, W]`` by ``theta [B, 2, 3]`` (zero padding); differentiable in ``x``."""
    if theta is None:
        return x
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def augment(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Augment one batch with freshly drawn parameters (for plain training and real batches)."""
    theta = sample_affine(cfg, 1, x.shape[0], x.shape[-1], gen)
    return x if theta is None else apply_affine(x, theta[0].to(x.device))
