"""Differentiable Siamese Augmentation (DSA; Zhao & Bilen, ICML 2021), the augmentation of the
DC/DSA/MTT/DATM evaluation protocols and of DD-Ranking's hard-label protocol.

Six ops, their parameters as DSA's ``ParamDiffAug``: ``scale`` (each axis by a factor in
[1/1.2, 1.2]), ``rotate`` (within +-15 degrees), ``flip`` (horizontal, probability 0.5),
``color`` (brightness + (r - 0.5), then saturation x 2r around the per-pixel channel mean, then
contrast x (r + 0.5) around the image mean), ``crop`` (an integer shift of up to 12.5% of each
side, zeros shifted in), ``cutout`` (a zeroed square of half the side, its centre anywhere).
``mode="one"`` draws one op per batch (DSA's default ``aug_mode = 'S'``), ``"all"`` applies
them all in order (``'M'``). Every op is differentiable in the images.

**Per image by default.** In the reference code (``DiffAugment`` in VICO-UoE/DatasetCondensation
and GeorgeCazenavette/mtt-distillation ``utils.py``; ``DSA`` in NUS-HPC-AI-Lab/DD-Ranking
``ddranking/aug/dsa.py``) a call with ``seed = -1`` (every evaluation: ``epoch(...,
aug=True)``) sets ``param.batchmode`` / ``Siamese`` / ``siamese`` False and every image gets
its own random parameters; one draw shared by the whole batch (``seed != -1``) is only the
*siamese* use during distillation, where a real and a synthetic batch must see the same
transform. ``siamese=True`` is that one-draw-per-batch option. In both, ``mode="one"`` picks
one op for the whole batch, as the reference does.

Checked against the reference, op by op: the same parameter ranges, the same strategy order
(``color_crop_cutout_flip_scale_rotate``; ``color`` = brightness, saturation, contrast), the
same affine maps (``align_corners=True``, zero padding), crop's row shift drawn before its
column shift and the source pixel at (row + shift), cutout's centre in ``[0, side + (1 -
size % 2))``. Deviations: the draws come from a seeded ``torch.Generator`` in float64, cast
to the images' dtype (the reference: the global generator in float32, re-seeded with seed,
seed + 1, ... per draw in siamese mode), so the same distributions, not the same numbers;
DD-Ranking lists its ops as scale, rotate, flip, color, crop, cutout, which only relabels the
uniform op draw of ``mode="one"`` (its ``'M'`` order would differ from DSA's; ddbench composes
in DSA's order).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator

DSA_OPS = ("color", "crop", "cutout", "flip", "scale", "rotate")


class DSAConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    ops: tuple[str, ...] = DSA_OPS
    mode: Literal["one", "all"] = "one"
    # False: each image its own parameters (the reference's evaluation, seed -1); True: one draw
    # shared by the batch (DSA's siamese use while distilling; ddbench's default before issue 17).
    siamese: bool = False
    brightness: float = Field(1.0, ge=0)
    saturation: float = Field(2.0, ge=0)
    contrast: float = Field(0.5, ge=0)
    scale: float = Field(1.2, ge=1)
    rotate: float = Field(15.0, ge=0)  # degrees
    crop: float = Field(0.125, ge=0, lt=1)  # of the side
    cutout: float = Field(0.5, ge=0, le=1)  # of the side
    flip: float = Field(0.5, ge=0, le=1)

    @field_validator("ops")
    @classmethod
    def _known(cls, ops: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [op for op in ops if op not in DSA_OPS]
        if unknown:
            raise ValueError(f"unknown DSA op {unknown[0]!r} (known: {', '.join(DSA_OPS)})")
        return ops


def _uniform(n: int, cfg: DSAConfig, gen: torch.Generator, device, dtype) -> torch.Tensor:
    """``n`` draws in [0, 1), or one shared by all (siamese)."""
    r = torch.rand(1 if cfg.siamese else n, generator=gen, dtype=torch.float64)
    return r.expand(n).to(device, dtype)


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, align_corners=True)


def dsa_scale(x, cfg, gen):
    sx = _uniform(len(x), cfg, gen, x.device, x.dtype) * (cfg.scale - 1 / cfg.scale) + 1 / cfg.scale
    sy = _uniform(len(x), cfg, gen, x.device, x.dtype) * (cfg.scale - 1 / cfg.scale) + 1 / cfg.scale
    theta = torch.zeros(len(x), 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 1, 1] = sx, sy
    return _affine(x, theta)


def dsa_rotate(x, cfg, gen):
    angle = (_uniform(len(x), cfg, gen, x.device, x.dtype) - 0.5) * 2 * math.radians(cfg.rotate)
    theta = torch.zeros(len(x), 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 1] = angle.cos(), -angle.sin()
    theta[:, 1, 0], theta[:, 1, 1] = angle.sin(), angle.cos()
    return _affine(x, theta)


def dsa_flip(x, cfg, gen):
    r = _uniform(len(x), cfg, gen, x.device, x.dtype)
    return torch.where((r < cfg.flip).view(-1, 1, 1, 1), x.flip(3), x)


def dsa_color(x, cfg, gen):
    n = len(x)
    x = x + (_uniform(n, cfg, gen, x.device, x.dtype) - 0.5).view(-1, 1, 1, 1) * cfg.brightness
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_uniform(n, cfg, gen, x.device, x.dtype) * cfg.saturation).view(-1, 1, 1, 1) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_uniform(n, cfg, gen, x.device, x.dtype) + cfg.contrast).view(-1, 1, 1, 1) + mean


def _integers(n: int, low: int, high: int, cfg: DSAConfig, gen: torch.Generator) -> torch.Tensor:
    """``n`` integers in [low, high), or one shared (siamese)."""
    return torch.randint(low, high, (1 if cfg.siamese else n,), generator=gen).expand(n)


def dsa_crop(x, cfg, gen):
    """Shift by whole pixels (up to ``crop`` x each side), zeros shifted in: the output pixel
    (i, j) is the input's (i + dy, j + dx), as the reference's pad-and-index."""
    n, _, h, w = x.shape
    sy, sx = int(h * cfg.crop + 0.5), int(w * cfg.crop + 0.5)
    dy, dx = _integers(n, -sy, sy + 1, cfg, gen), _integers(n, -sx, sx + 1, cfg, gen)
    rows = torch.arange(h).view(1, h) + dy.view(n, 1)  # source row of each output row
    cols = torch.arange(w).view(1, w) + dx.view(n, 1)
    valid = ((rows >= 0) & (rows < h)).view(n, 1, h, 1) & ((cols >= 0) & (cols < w)).view(n, 1, 1, w)
    rows, cols = rows.clamp(0, h - 1).to(x.device), cols.clamp(0, w - 1).to(x.device)
    gathered = x[torch.arange(n, device=x.device).view(n, 1, 1), :, rows.view(n, h, 1), cols.view(n, 1, w)]
    return gathered.permute(0, 3, 1, 2) * valid.to(x.device, x.dtype)


def dsa_cutout(x, cfg, gen):
    """Zero a square of ``cutout`` x the side, its centre anywhere in the image."""
    n, _, h, w = x.shape
    size = int(h * cfg.cutout + 0.5), int(w * cfg.cutout + 0.5)
    cy = _integers(n, 0, h + (1 - size[0] % 2), cfg, gen).view(n, 1)
    cx = _integers(n, 0, w + (1 - size[1] % 2), cfg, gen).view(n, 1)
    ys, xs = torch.arange(h).view(1, h), torch.arange(w).view(1, w)
    in_y = (ys >= cy - size[0] // 2) & (ys < cy - size[0] // 2 + size[0])
    in_x = (xs >= cx - size[1] // 2) & (xs < cx - size[1] // 2 + size[1])
    keep = ~(in_y.view(n, 1, h, 1) & in_x.view(n, 1, 1, w))
    return x * keep.to(x.device, x.dtype)


_OPS = {"color": dsa_color, "crop": dsa_crop, "cutout": dsa_cutout, "flip": dsa_flip, "scale": dsa_scale,
        "rotate": dsa_rotate}


def dsa_augment(x: torch.Tensor, cfg: DSAConfig, gen: torch.Generator) -> torch.Tensor:
    """One batch augmented by DSA (see the module docstring); ``x`` is ``[B, C, H, W]``."""
    if not cfg.ops:
        return x
    if cfg.mode == "all":
        for op in cfg.ops:
            x = _OPS[op](x, cfg, gen)
        return x
    op = cfg.ops[int(torch.randint(len(cfg.ops), (1,), generator=gen))]
    return _OPS[op](x, cfg, gen)
