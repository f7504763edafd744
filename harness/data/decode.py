"""Decoding image files to uint8 tensors in a thread pool (PIL releases the GIL while decoding)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import torch

from harness.core.errors import ConfigError, DatasetNotFoundError
from harness.core.progress import progress_bar
from harness.data.config import DataConfig, RawSplits
from harness.data.registry import error_line

_DECODE_BATCH = 256


def decode_images(paths: Sequence[Path], size: int | None, dataset: str) -> torch.Tensor:
    """Decode image files to uint8 [N, 3, H, W], resized to ``size`` x ``size`` when given.

    Without ``size`` all images must share one size. Decoding runs in a thread pool: PIL releases
    the GIL while decoding.
    """
    batches = [paths[i : i + _DECODE_BATCH] for i in range(0, len(paths), _DECODE_BATCH)]
    out: np.ndarray | None = None
    pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
    try:
        decoded = pool.map(partial(_decode_batch, size=size, dataset=dataset), batches)
        decoded = progress_bar(decoded, total=len(batches), desc=f"{dataset}: decoding {len(paths)} images",
                               unit="batch")
        for first, arrays in zip(range(0, len(paths), _DECODE_BATCH), decoded):
            for i, arr in enumerate(arrays, start=first):
                if out is None:
                    out = np.empty((len(paths), *arr.shape), dtype=np.uint8)
                if arr.shape != out.shape[1:]:
                    raise ConfigError(
                        f"dataset {dataset!r}: images differ in size ({_hw(out.shape[1:])} for "
                        f"{paths[0]}, {_hw(arr.shape)} for {paths[i]}); set image_size to resize them",
                        field="image_size",
                    )
                out[i] = arr
    finally:
        pool.shutdown(cancel_futures=True)  # on an error, skip the batches not started yet
    if out is None:
        return torch.empty(0, 3, size or 0, size or 0, dtype=torch.uint8)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _hw(shape: Sequence[int]) -> str:
    return f"{shape[1]}x{shape[0]}"


def _decode_batch(paths: Sequence[Path], size: int | None, dataset: str) -> list[np.ndarray]:
    from PIL import Image

    arrays = []
    for path in paths:
        try:
            with Image.open(path) as im:
                if size is not None:
                    im.draft("RGB", (size, size))  # JPEG: let the decoder downscale, much faster
                im = im.convert("RGB")
                if size is not None and im.size != (size, size):
                    im = im.resize((size, size), Image.Resampling.BILINEAR)
                arrays.append(np.asarray(im, dtype=np.uint8))
        except OSError as err:
            raise DatasetNotFoundError(
                f"dataset {dataset!r}: cannot read image {path}: {error_line(err)}", field="root"
            ) from err
    return arrays


def _resize_info(size: int | None) -> dict | None:
    return None if size is None else {"size": [size, size], "method": "PIL bilinear at decode"}


def raw_from_files(
    cfg: DataConfig,
    train: Sequence[tuple[Path, int]],
    test: Sequence[tuple[Path, int]],
    size: int | None,
    class_names: Sequence[str],
    info: dict,
) -> RawSplits:
    def split(samples: Sequence[tuple[Path, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        x = decode_images([p for p, _ in samples], size, cfg.name)
        return x, torch.tensor([label for _, label in samples], dtype=torch.int64)

    train_x, train_y = split(train)
    test_x, test_y = split(test)
    info = {**info, "resize": _resize_info(size)}
    return RawSplits(train_x, train_y, test_x, test_y, tuple(class_names), info)
