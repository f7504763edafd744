"""The decoded-tensor cache: sources that decode image files (ImageFolder, Tiny-ImageNet, CUB)
keep the decoded uint8 tensors under ``$DDBENCH_CACHE`` (default ``~/.cache/ddbench``), so only
the first load pays for decoding. Written with the one atomic writer (``harness.core.io``)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch

from harness.core.io import atomic_torch_save, cache_dir
from harness.data.config import DataConfig, RawSplits
from harness.data.registry import error_line

log = logging.getLogger(__name__)

# Bump when the cached payload's format or the decoding changes, so old files are rebuilt.
_CACHE_VERSION = 1


def _fingerprint(root: Path) -> str:
    """Cheap fingerprint of a directory tree: per folder, its file count and mtime.

    Adding, removing or renaming files changes it; rewriting a file in place does not (clear the
    cache after editing images).
    """
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        digest.update(f"{rel}\0{len(filenames)}\0{os.stat(dirpath).st_mtime_ns}\n".encode())
    return digest.hexdigest()


def cached(cfg: DataConfig, root: Path, size: int | None, build: Callable[[], RawSplits]) -> RawSplits:
    """``build()``'s result, read from the cache when a file for this exact input exists."""
    key = {
        "version": _CACHE_VERSION,
        "dataset": cfg.name,
        "root": str(root),
        "image_size": size,
        "fingerprint": _fingerprint(root),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    path = cache_dir() / f"{cfg.name}-{digest}.pt"
    raw = _read_cache(path, key)
    if raw is None:
        raw = build()
        _write_cache(path, key, raw)
    return raw


def _read_cache(path: Path, key: dict) -> RawSplits | None:
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload["key"] != key:
            raise ValueError("key mismatch")
        raw = RawSplits(
            payload["train_x"], payload["train_y"], payload["test_x"], payload["test_y"],
            class_names=tuple(payload["class_names"]), info=payload["info"],
        )
        _validate_raw(raw)
        return raw
    except Exception as err:  # any unreadable or foreign file: rebuild rather than crash
        log.warning("ignoring cache file %s (%s); rebuilding it", path, error_line(err))
        return None


def _validate_raw(raw: RawSplits) -> None:
    for x, y in ((raw.train_x, raw.train_y), (raw.test_x, raw.test_y)):
        if x.dtype != torch.uint8 or x.ndim != 4 or y.shape != (x.shape[0],):
            raise ValueError("malformed tensors")


def _write_cache(path: Path, key: dict, raw: RawSplits) -> None:
    payload = {
        "key": key,
        "train_x": raw.train_x, "train_y": raw.train_y,
        "test_x": raw.test_x, "test_y": raw.test_y,
        "class_names": list(raw.class_names), "info": raw.info,
    }
    try:
        atomic_torch_save(payload, path)
    except OSError as err:  # a read-only or full cache dir costs speed, not correctness
        log.warning("cannot write cache file %s (%s)", path, error_line(err))
