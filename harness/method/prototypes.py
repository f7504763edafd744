"""Prototype (class-centroid) matching in a network's feature space, globally and per patch:
AT-BPTT's patch-wise semantic preservation for high-resolution images (Li et al., NeurIPS 2025).

With a network ``f`` at fixed parameters and ``phi(x)`` its penultimate features (the input of
its last linear layer), for every class c:

* global term: ``|| mean_{x in S_c} phi(x) - mean_{x in R_c} phi(x) ||^2``, the centroid of the
  class's synthetic images S_c against that of its real images R_c;
* local term: every image is cut into an n x n grid of patches, each patch resized (bilinear)
  to the input size and embedded; for every grid cell p the same distance between the
  centroids of the class's synthetic and real patches at p.

``L = mean_c global_c + mean_{c, p} local_{c, p}`` over the classes present in both sets; the
real side is a constant. The paper gives the n x n grid (n = 4), the local and global prototype
centroid matching and its weight lambda in the outer loss; the feature layer, the squared
Euclidean distance, the class-balanced means and the patch resizing are this module's choices.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.engine import FunctionalModel, Params


def penultimate_features(model: FunctionalModel, params: Params, x: torch.Tensor) -> torch.Tensor:
    """``phi(x)``: the input of the network's last ``nn.Linear`` (ConvNet's classifier, ResNet's fc)."""
    last = [m for m in model.module.modules() if isinstance(m, nn.Linear)]
    if not last:
        raise ValueError("prototype matching needs a network that ends in a linear layer")
    captured: list[torch.Tensor] = []
    handle = last[-1].register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    try:
        model(params, x)
    finally:
        handle.remove()
    return captured[0].flatten(1)


def grid_patches(x: torch.Tensor, grid: int) -> torch.Tensor:
    """``[B, C, H, W] -> [B, grid * grid, C, H, W]``: the n x n patches, each resized to H x W."""
    b, c, h, w = x.shape
    ph, pw = h // grid, w // grid
    tiles = x[:, :, : ph * grid, : pw * grid].unfold(2, ph, ph).unfold(3, pw, pw)  # [B, C, n, n, ph, pw]
    tiles = tiles.permute(0, 2, 3, 1, 4, 5).reshape(b * grid * grid, c, ph, pw)
    tiles = F.interpolate(tiles, size=(h, w), mode="bilinear", align_corners=False)
    return tiles.view(b, grid * grid, c, h, w)


def _centroids(features: torch.Tensor, labels: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """Per class (of ``classes``): the mean of ``features [N, ..., D]`` over its rows."""
    return torch.stack([features[labels == c].mean(0) for c in classes])


def prototype_loss(model: FunctionalModel, params: Params, syn_x: torch.Tensor, syn_y: torch.Tensor,
                   real_x: torch.Tensor, real_y: torch.Tensor, grid: int) -> torch.Tensor:
    """The global + local prototype distance (see the module docstring); differentiable in ``syn_x``."""
    classes = sorted(set(syn_y.tolist()) & set(real_y.tolist()))
    if not classes:
        return syn_x.sum() * 0
    b = syn_x.shape[0]
    with torch.no_grad():
        real_global = _centroids(penultimate_features(model, params, real_x), real_y, classes)
        real_patches = grid_patches(real_x, grid)
        real_local = _centroids(penultimate_features(model, params, real_patches.flatten(0, 1))
                                .view(real_x.shape[0], grid * grid, -1), real_y, classes)
    syn_global = _centroids(penultimate_features(model, params, syn_x), syn_y, classes)
    syn_local = _centroids(penultimate_features(model, params, grid_patches(syn_x, grid).flatten(0, 1))
                           .view(b, grid * grid, -1), syn_y, classes)
    global_term = (syn_global - real_global).pow(2).sum(-1).mean()
    local_term = (syn_local - real_local).pow(2).sum(-1).mean()
    return global_term + local_term
