"""What a dataset is to the rest of ddbench: its config (a suite's ``[data.NAME]`` table), the raw
splits a source returns and the preprocessed splits every layer above uses."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
from pydantic import BaseModel, ConfigDict, field_validator


class DataConfig(BaseModel):
    """Which dataset to load and how to preprocess it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    root: str | None = None
    download: bool = False
    normalize: bool = True
    zca: bool = False
    zca_regularization: float = 0.1
    image_size: int | None = None
    # A validation split held out of the training set before anything is fitted or distilled
    # (stratified, the same for every cell): what protocols select on, never the test set.
    validation_size: int = 0
    validation_seed: int = 0

    @field_validator("name")
    @classmethod
    def _name_not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("name must be a registered dataset name, not an empty string")
        return v

    @field_validator("root")
    @classmethod
    def _root_not_blank(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("root must be a directory path, or null for the dataset's default")
        return v

    @field_validator("zca_regularization")
    @classmethod
    def _reg_positive(cls, v: float) -> float:
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"zca_regularization must be a finite number > 0, got {v}")
        return v

    @field_validator("validation_size", "validation_seed")
    @classmethod
    def _non_negative(cls, v: int) -> int:
        if v < 0:
            raise ValueError(f"must be >= 0, got {v}")
        return v

    @field_validator("image_size")
    @classmethod
    def _size_positive(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"image_size must be a positive number of pixels (or null), got {v}")
        return v


@dataclass(frozen=True, eq=False)  # eq=False: comparing tensors with == is ambiguous
class DatasetSplits:
    """Preprocessed train/test tensors of one dataset."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    class_names: tuple[str, ...]
    preprocessing: dict
    val_x: torch.Tensor | None = None  # the validation split (DataConfig.validation_size), if any
    val_y: torch.Tensor | None = None
    # Pixels back from preprocessed images (normalization and ZCA undone), for showing them.
    to_pixels: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train_x.shape[1:]
        return (int(c), int(h), int(w))

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> DatasetSplits:
        """Copy with images moved/cast; labels are moved but stay int64."""
        return replace(
            self,
            train_x=self.train_x.to(device=device, dtype=dtype),
            test_x=self.test_x.to(device=device, dtype=dtype),
            train_y=self.train_y.to(device=device),
            test_y=self.test_y.to(device=device),
            val_x=None if self.val_x is None else self.val_x.to(device=device, dtype=dtype),
            val_y=None if self.val_y is None else self.val_y.to(device=device),
        )


@dataclass(frozen=True, eq=False)
class RawSplits:
    """What a loader returns: images [N, C, H, W] as uint8 (0..255) or float32 in [0, 1]."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    class_names: tuple[str, ...]
    info: dict = field(default_factory=dict)  # JSON-able notes merged into `preprocessing`
