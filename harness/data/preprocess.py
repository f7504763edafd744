"""Preprocessing, fitted on the train split only and applied to every split: resize ->
per-channel normalize -> ZCA whitening. Each step is a fitted transform that says what it did
(a JSON-able description the record keeps) and can be undone for showing images.

ZCA as the official RaT-BPTT code does it (``framework/config.py``, ``preprocess``): every image
is centered on its own mean (over all its pixels) and scaled to unit L2 norm; with the train
split's C = X^T X / n = V diag(e) V^T, every split is multiplied by
W = V diag(1 / sqrt(e + r mean(e))) V^T (r = ``zca_regularization``, 0.1 in the official CIFAR
scripts), with no rescaling after. The official code applies it to the raw pixels, without
per-channel normalization first: ``normalize = false, zca = true`` is exactly that recipe (the
pixel scale does not matter: each image is scaled to unit norm). With ``normalize = true`` the
per-channel standardization comes first: a different recipe, and the record says which.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness.core.errors import ConfigError
from harness.core.progress import progress_bar


@dataclass
class Normalize:
    mean: torch.Tensor  # [C]
    std: torch.Tensor

    @classmethod
    def fit(cls, train_x: torch.Tensor) -> "Normalize":
        # float32 is enough: torch's reductions sum pairwise; float64 copies cost seconds on big sets.
        std, mean = torch.std_mean(train_x, dim=(0, 2, 3), correction=0)
        return cls(mean, std.clamp_min(1e-8))  # a constant channel stays constant (zero) instead of NaN

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)

    def apply_(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`__call__` in place (the same numbers): no second copy of a large split."""
        return x.sub_(self.mean.view(1, -1, 1, 1)).div_(self.std.view(1, -1, 1, 1))

    def invert(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std.view(1, -1, 1, 1).to(x) + self.mean.view(1, -1, 1, 1).to(x)

    def info(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "fitted_on": "train"}


@dataclass
class ZCA:
    whiten: torch.Tensor  # [D, D] float64
    unwhiten: torch.Tensor  # its inverse
    regularization: float
    eigenvalue_mean: float

    @classmethod
    def fit(cls, train_x: torch.Tensor, regularization: float) -> "ZCA":
        if not (math.isfinite(regularization) and regularization > 0):
            raise ConfigError(f"zca_regularization must be a finite number > 0, got {regularization}",
                              field="zca_regularization")
        dim = math.prod(train_x.shape[1:])
        cov = torch.zeros(dim, dim, dtype=torch.float64)
        for rows in progress_bar(_row_chunks(train_x), total=-(-train_x.shape[0] // 4096), desc="ZCA: covariance",
                                 unit="chunk"):
            cov += rows.T @ rows
        cov /= train_x.shape[0]
        eigvals, eigvecs = torch.linalg.eigh(cov)
        eigvals = eigvals.clamp_min(0)  # round-off can make the null direction slightly negative
        shifted = eigvals + regularization * eigvals.mean()
        return cls((eigvecs * shifted.rsqrt()) @ eigvecs.T, (eigvecs * shifted.sqrt()) @ eigvecs.T, regularization,
                   float(eigvals.mean()))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        parts = [(rows @ self.whiten).float() for rows in _row_chunks(x)]
        out = torch.cat(parts) if parts else torch.empty(0, self.whiten.shape[0])
        return out.reshape(x.shape)

    def invert(self, x: torch.Tensor) -> torch.Tensor:
        """The per-image standardized image (its own mean and norm are not recoverable)."""
        flat = x.reshape(x.shape[0], -1).double() @ self.unwhiten.to(x.device)
        return flat.reshape(x.shape).to(x.dtype)

    def info(self) -> dict:
        return {"recipe": "official RaT-BPTT (per-image center and unit L2 norm, W = V (e + r mean e)^-1/2 V^T)",
                "regularization": self.regularization, "per_image": "subtract own mean, divide by L2 norm",
                "dim": self.whiten.shape[0], "eigenvalue_mean": self.eigenvalue_mean}


def zca_whitening(train_x: torch.Tensor, test_x: torch.Tensor, regularization: float
                  ) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """ZCA (see the module docstring) fitted on ``train_x`` and applied to both splits."""
    zca = ZCA.fit(train_x, regularization)
    return zca(train_x), zca(test_x), zca.info()


def _row_chunks(x: torch.Tensor, rows: int = 4096):
    """Per-image standardized float64 rows of ``x``, in chunks to bound memory."""
    flat = x.reshape(x.shape[0], -1)
    for start in range(0, flat.shape[0], rows):
        chunk = flat[start : start + rows].double()
        chunk = chunk - chunk.mean(dim=1, keepdim=True)
        yield chunk / chunk.norm(dim=1, keepdim=True).clamp_min(1e-12)


def to_unit_float(x: torch.Tensor) -> torch.Tensor:
    """A new float32 tensor in [0, 1] (never ``x`` itself: a loader's tensor may be cached, and the
    result is normalized in place)."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x.to(torch.float32, copy=True)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[0] == 0:
        return x.new_empty(*x.shape[:2], size, size)
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def pixels(x: torch.Tensor, normalize: Normalize | None, zca: ZCA | None) -> torch.Tensor:
    """Preprocessed images back in [0, 1] for showing them: ZCA and normalization undone; after
    ZCA each image's own mean and scale are lost, so each is min-max scaled to [0, 1]."""
    x = x.detach().float().cpu()
    if zca is not None:
        x = zca.invert(x)
    if normalize is not None:
        x = normalize.invert(x)
    if zca is None:
        return x.clamp(0, 1)
    lo = x.flatten(1).min(1).values.view(-1, 1, 1, 1)
    hi = x.flatten(1).max(1).values.view(-1, 1, 1, 1)
    return (x - lo) / (hi - lo).clamp_min(1e-12)
