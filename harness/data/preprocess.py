"""Preprocessing, fitted on the train split only and applied to both splits: resize ->
per-channel normalize -> ZCA whitening. Each step returns a JSON-able description of what it
did, which the record keeps."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from harness.core.errors import ConfigError
from harness.core.progress import progress_bar


def zca_whitening(
    train_x: torch.Tensor, test_x: torch.Tensor, regularization: float
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """ZCA whitening as in KIP / RaT-BPTT, fitted on ``train_x`` and applied to both splits.

    Each image is centered on its own mean and scaled to unit L2 norm; then with
    C = X^T X / n (float64) = V diag(e) V^T, both splits are multiplied by
    W = V diag(1 / sqrt(e + regularization * mean(e))) V^T. Returns float32 tensors of the input
    shapes and a JSON-able description.
    """
    if not (math.isfinite(regularization) and regularization > 0):
        raise ConfigError(
            f"zca_regularization must be a finite number > 0, got {regularization}",
            field="zca_regularization",
        )
    dim = math.prod(train_x.shape[1:])
    cov = torch.zeros(dim, dim, dtype=torch.float64)
    for rows in progress_bar(_row_chunks(train_x), total=-(-train_x.shape[0] // 4096), desc="ZCA: covariance",
                             unit="chunk"):
        cov += rows.T @ rows
    cov /= train_x.shape[0]
    eigvals, eigvecs = torch.linalg.eigh(cov)
    eigvals = eigvals.clamp_min(0)  # round-off can make the null direction slightly negative
    shift = regularization * eigvals.mean()
    whiten = (eigvecs * (eigvals + shift).rsqrt()) @ eigvecs.T
    info = {
        "regularization": regularization,
        "per_image": "subtract own mean, divide by L2 norm",
        "dim": dim,
        "eigenvalue_mean": float(eigvals.mean()),
    }
    return _apply_rows(train_x, whiten), _apply_rows(test_x, whiten), info


def _row_chunks(x: torch.Tensor, rows: int = 4096):
    """Per-image standardized float64 rows of ``x``, in chunks to bound memory."""
    flat = x.reshape(x.shape[0], -1)
    for start in range(0, flat.shape[0], rows):
        chunk = flat[start : start + rows].double()
        chunk = chunk - chunk.mean(dim=1, keepdim=True)
        yield chunk / chunk.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _apply_rows(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    parts = [(rows @ matrix).float() for rows in _row_chunks(x)]
    out = torch.cat(parts) if parts else torch.empty(0, matrix.shape[0])
    return out.reshape(x.shape)


def to_unit_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[0] == 0:
        return x.new_empty(*x.shape[:2], size, size)
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def normalize(train_x: torch.Tensor, test_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
    # float32 is enough: torch's reductions sum pairwise; float64 copies cost seconds on big sets.
    std, mean = torch.std_mean(train_x, dim=(0, 2, 3), correction=0)
    std = std.clamp_min(1e-8)  # a constant channel stays constant (zero) instead of turning NaN
    m, s = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)
    info = {"mean": mean.tolist(), "std": std.tolist(), "fitted_on": "train"}
    return (train_x - m) / s, (test_x - m) / s, info
