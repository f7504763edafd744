"""Datasets: a registry of loaders, preprocessing and a decoded-tensor cache.

A dataset is named by a registry key (``digits``, ``mnist``, ``cifar10-jpeg``, ...). Every loader
returns raw pixels (uint8, or floats in [0, 1]); :func:`load_dataset` then applies the same
preprocessing to all of them, in this order: resize -> per-channel normalize -> ZCA whitening,
each fitted on the train split only, and records what it did in ``DatasetSplits.preprocessing``.

Loaders that decode image files (ImageFolder, Tiny-ImageNet, CUB) keep the decoded uint8 tensors
in a cache (``$DDBENCH_CACHE``, default ``~/.cache/ddbench``), so only the first load pays for
JPEG decoding. :func:`check_dataset` validates a root's layout without reading any image.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, field_validator

from harness.errors import ConfigError, DatasetNotFoundError, UnknownNameError

log = logging.getLogger(__name__)

# Bump when the cached payload's format or the decoding changes, so old files are rebuilt.
_CACHE_VERSION = 1
_DECODE_BATCH = 256


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


Loader = Callable[[DataConfig, Path | None], RawSplits]
# Validates a root's layout without reading images; returns the folder the loader should read
# (which may be a subfolder of the given root). Raises _LayoutMismatch.
LayoutCheck = Callable[[Path, DataConfig], Path]


class _LayoutMismatch(Exception):
    """Why a root does not fit a layout; turned into a DatasetNotFoundError naming root and layout."""


@dataclass(frozen=True)
class _Entry:
    name: str
    description: str
    default_root: str | None
    layout: str
    loader: Loader
    check: LayoutCheck | None


_REGISTRY: dict[str, _Entry] = {}


def register_dataset(
    name: str,
    *,
    description: str,
    default_root: str | None,
    layout: str,
    check: LayoutCheck | None = None,
) -> Callable[[Loader], Loader]:
    """Register ``fn(cfg, root) -> RawSplits`` under ``name``.

    ``check`` validates the root cheaply (see ``LayoutCheck``); ``None`` means the dataset reads no
    files (like ``digits``) and the loader gets ``root=None``.
    """

    def decorate(fn: Loader) -> Loader:
        if name in _REGISTRY:
            raise ValueError(f"dataset {name!r} is already registered")
        _REGISTRY[name] = _Entry(name, description, default_root, layout, fn, check)
        return fn

    return decorate


def list_datasets() -> dict[str, str]:
    """Registered dataset names and their one-line descriptions, sorted by name."""
    return {name: _REGISTRY[name].description for name in sorted(_REGISTRY)}


def check_dataset(cfg: DataConfig) -> None:
    """Raise if ``cfg`` names an unknown dataset or a root without the expected layout.

    Reads directory listings and small index files only, never images.
    """
    _resolve(cfg)


def load_dataset(cfg: DataConfig) -> DatasetSplits:
    """Load a dataset and apply resize -> normalize -> ZCA, all fitted on the train split."""
    entry, root = _resolve(cfg)
    raw = entry.loader(cfg, root)
    train_x, test_x = _to_unit_float(raw.train_x), _to_unit_float(raw.test_x)
    prep: dict = {
        "dataset": cfg.name,
        "source_root": str(root) if root is not None else None,
        "order": ["resize", "normalize", "zca"],
        "pixel_scale": "uint8 / 255" if raw.train_x.dtype == torch.uint8 else "float in [0, 1]",
        "resize": None,
        **raw.info,
    }
    if cfg.image_size is not None and tuple(train_x.shape[-2:]) != (cfg.image_size,) * 2:
        train_x, test_x = (_resize(x, cfg.image_size) for x in (train_x, test_x))
        prep["resize"] = {"size": [cfg.image_size] * 2, "method": "torch bilinear, antialias"}
    prep["normalize"] = None
    if cfg.normalize:
        train_x, test_x, prep["normalize"] = _normalize(train_x, test_x)
    prep["zca"] = None
    if cfg.zca:
        # Normalize (if on) comes first, as in the KIP / RaT-BPTT preprocessing; with
        # normalize=False the per-image standardization inside ZCA still applies.
        train_x, test_x, prep["zca"] = zca_whitening(train_x, test_x, cfg.zca_regularization)
    return DatasetSplits(
        name=cfg.name,
        train_x=train_x,
        train_y=raw.train_y.long(),
        test_x=test_x,
        test_y=raw.test_y.long(),
        num_classes=len(raw.class_names),
        class_names=tuple(raw.class_names),
        preprocessing=prep,
    )


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
    for rows in _row_chunks(train_x):
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


def _to_unit_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[0] == 0:
        return x.new_empty(*x.shape[:2], size, size)
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def _normalize(train_x: torch.Tensor, test_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
    # float32 is enough: torch's reductions sum pairwise; float64 copies cost seconds on big sets.
    std, mean = torch.std_mean(train_x, dim=(0, 2, 3), correction=0)
    std = std.clamp_min(1e-8)  # a constant channel stays constant (zero) instead of turning NaN
    m, s = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)
    info = {"mean": mean.tolist(), "std": std.tolist(), "fitted_on": "train"}
    return (train_x - m) / s, (test_x - m) / s, info


# --- resolving names and roots ------------------------------------------------------------


def _resolve(cfg: DataConfig) -> tuple[_Entry, Path | None]:
    entry = _REGISTRY.get(cfg.name)
    if entry is None:
        known = ", ".join(sorted(_REGISTRY))
        raise UnknownNameError(f"unknown dataset {cfg.name!r}; known datasets: {known}", field="name")
    if entry.check is None:
        if cfg.root is not None:
            raise ConfigError(f"dataset {cfg.name!r} reads no files; leave root unset", field="root")
        return entry, None
    given = cfg.root if cfg.root is not None else entry.default_root
    if given is None:
        raise ConfigError(
            f"dataset {cfg.name!r} has no default root; set root to a folder with {entry.layout}",
            field="root",
        )
    root = Path(given).expanduser().resolve()
    try:
        return entry, entry.check(root, cfg)
    except _LayoutMismatch as why:
        raise DatasetNotFoundError(
            f"dataset {cfg.name!r}: root {root} {why}; expected {entry.layout}", field="root"
        ) from None


def _need(path: Path, root: Path, *, is_dir: bool) -> None:
    """Raise _LayoutMismatch unless ``path`` (under ``root``) is a directory / file."""
    if not root.exists():
        raise _LayoutMismatch("does not exist")
    if not root.is_dir():
        raise _LayoutMismatch("is not a directory")
    ok = path.is_dir() if is_dir else path.is_file()
    if not ok:
        rel = path.relative_to(root).as_posix() + ("/" if is_dir else "")
        raise _LayoutMismatch(f"has no {rel}")


def _subfolder_with(root: Path, folder: str, marker: str) -> Path:
    """``root/folder`` when ``root`` contains it (and lacks ``marker`` itself), else ``root``."""
    nested = root / folder
    return nested if not (root / marker).exists() and (nested / marker).exists() else root


def _error_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


# --- scikit-learn digits --------------------------------------------------------------------


@register_dataset(
    "digits",
    description="scikit-learn's bundled 8x8 digits, 1x8x8, 10 classes, stratified 80/20 split",
    default_root=None,
    layout="nothing on disk (bundled with scikit-learn)",
)
def _load_digits(cfg: DataConfig, root: Path | None) -> RawSplits:
    # Imported here: scikit-learn takes about a second to import and only this loader needs it.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = torch.from_numpy(bunch.images / 16.0).float().unsqueeze(1)
    y = torch.from_numpy(bunch.target).long()
    train_idx, test_idx = train_test_split(
        np.arange(len(y)), test_size=0.2, random_state=0, stratify=bunch.target
    )
    train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    return RawSplits(
        x[train_idx], y[train_idx], x[test_idx], y[test_idx],
        class_names=tuple(str(c) for c in bunch.target_names),
        info={
            "source": "sklearn.datasets.load_digits",
            "pixel_scale": "value / 16",
            "split": "stratified 80/20, train_test_split(random_state=0)",
        },
    )


# --- torchvision MNIST / Fashion-MNIST / CIFAR ----------------------------------------------

_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _check_mnist(root: Path, cfg: DataConfig, folder: str) -> Path:
    if cfg.download:  # torchvision fetches, or md5-verifies and unpacks, the files itself
        return root
    raw = root / folder / "raw"
    _need(raw, root, is_dir=True)
    for name in _MNIST_FILES:
        if not ((raw / name).is_file() or (raw / f"{name}.gz").is_file()):
            raise _LayoutMismatch(f"has no {folder}/raw/{name}(.gz)")
    return root


def _load_mnist_like(cfg: DataConfig, root: Path, folder: str) -> RawSplits:
    from torchvision import datasets

    cls = getattr(datasets, folder)
    raw = root / folder / "raw"
    try:
        if cfg.download or all((raw / name).is_file() for name in _MNIST_FILES):
            train, test = (cls(str(root), train=t, download=cfg.download) for t in (True, False))
            xs = train.data, test.data
            ys = train.targets, test.targets
        else:
            # torchvision reads only unpacked files; read the .gz archives in memory rather than
            # unpack them into a root that may be read-only.
            xs, ys = (
                tuple(_read_idx_gz(raw / f"{split}-{kind}-idx{dims}-ubyte.gz") for split in ("train", "t10k"))
                for kind, dims in (("images", 3), ("labels", 1))
            )
    except (RuntimeError, OSError, ValueError) as err:
        raise DatasetNotFoundError(
            f"dataset {cfg.name!r}: cannot load {root}: {_error_line(err)}", field="root"
        ) from err
    return RawSplits(
        xs[0].unsqueeze(1), ys[0].long(), xs[1].unsqueeze(1), ys[1].long(),
        class_names=tuple(cls.classes),
        info={"source": f"torchvision.datasets.{folder}"},
    )


def _read_idx_gz(path: Path) -> torch.Tensor:
    """A gzipped idx file of uint8 (the MNIST format) as a tensor."""
    data = gzip.decompress(path.read_bytes())
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise ValueError(f"{path} is not a gzipped uint8 idx file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = data[4 + 4 * ndim :]
    if len(body) != math.prod(dims):
        raise ValueError(f"{path} is truncated")
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(dims)


_MNIST_LAYOUT = (
    "torchvision's layout: root/{0}/raw/ with train-images-idx3-ubyte, train-labels-idx1-ubyte, "
    "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (.gz or unpacked), or download=true"
)

register_dataset(
    "mnist",
    description="MNIST via torchvision, 1x28x28, 10 classes, 60k/10k",
    default_root="data",
    layout=_MNIST_LAYOUT.format("MNIST"),
    check=partial(_check_mnist, folder="MNIST"),
)(partial(_load_mnist_like, folder="MNIST"))

register_dataset(
    "fashion_mnist",
    description="Fashion-MNIST via torchvision, 1x28x28, 10 classes, 60k/10k",
    default_root="data",
    layout=_MNIST_LAYOUT.format("FashionMNIST"),
    check=partial(_check_mnist, folder="FashionMNIST"),
)(partial(_load_mnist_like, folder="FashionMNIST"))


def _check_cifar(root: Path, cfg: DataConfig, folder: str) -> Path:
    if not cfg.download:
        _need(root / folder, root, is_dir=True)
    return root


def _load_cifar(cfg: DataConfig, root: Path, cls_name: str) -> RawSplits:
    from torchvision import datasets

    cls = getattr(datasets, cls_name)
    try:
        train, test = (cls(str(root), train=t, download=cfg.download) for t in (True, False))
    except (RuntimeError, OSError) as err:
        raise DatasetNotFoundError(
            f"dataset {cfg.name!r}: cannot load {root}: {_error_line(err)}", field="root"
        ) from err

    def images(ds) -> torch.Tensor:  # .data is NHWC uint8
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()

    return RawSplits(
        images(train), torch.tensor(train.targets), images(test), torch.tensor(test.targets),
        class_names=tuple(train.classes),
        info={"source": f"torchvision.datasets.{cls_name}"},
    )


register_dataset(
    "cifar10",
    description="CIFAR-10 (original) via torchvision, 3x32x32, 10 classes, 50k/10k",
    default_root="data",
    layout="torchvision's layout: root/cifar-10-batches-py/ (data_batch_1..5, test_batch), or download=true",
    check=partial(_check_cifar, folder="cifar-10-batches-py"),
)(partial(_load_cifar, cls_name="CIFAR10"))

register_dataset(
    "cifar100",
    description="CIFAR-100 (original) via torchvision, 3x32x32, 100 classes, 50k/10k",
    default_root="data",
    layout="torchvision's layout: root/cifar-100-python/ (train, test, meta), or download=true",
    check=partial(_check_cifar, folder="cifar-100-python"),
)(partial(_load_cifar, cls_name="CIFAR100"))


# --- image files: decoding and cache ------------------------------------------------------


def _decode_images(paths: Sequence[Path], size: int | None, dataset: str) -> torch.Tensor:
    """Decode image files to uint8 [N, 3, H, W], resized to ``size`` x ``size`` when given.

    Without ``size`` all images must share one size. Decoding runs in a thread pool: PIL releases
    the GIL while decoding.
    """
    batches = [paths[i : i + _DECODE_BATCH] for i in range(0, len(paths), _DECODE_BATCH)]
    out: np.ndarray | None = None
    pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
    try:
        decoded = pool.map(partial(_decode_batch, size=size, dataset=dataset), batches)
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
                f"dataset {dataset!r}: cannot read image {path}: {_error_line(err)}", field="root"
            ) from err
    return arrays


def _resize_info(size: int | None) -> dict | None:
    return None if size is None else {"size": [size, size], "method": "PIL bilinear at decode"}


def _cache_dir() -> Path:
    return Path(os.environ.get("DDBENCH_CACHE", "~/.cache/ddbench")).expanduser()


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


def _cached(cfg: DataConfig, root: Path, size: int | None, build: Callable[[], RawSplits]) -> RawSplits:
    """``build()``'s result, read from the cache when a file for this exact input exists."""
    key = {
        "version": _CACHE_VERSION,
        "dataset": cfg.name,
        "root": str(root),
        "image_size": size,
        "fingerprint": _fingerprint(root),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    path = _cache_dir() / f"{cfg.name}-{digest}.pt"
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
        log.warning("ignoring cache file %s (%s); rebuilding it", path, _error_line(err))
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
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, path)  # atomic: readers see the old file or the whole new one
    except OSError as err:  # a read-only or full cache dir costs speed, not correctness
        log.warning("cannot write cache file %s (%s)", path, _error_line(err))
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _raw_from_files(
    cfg: DataConfig,
    train: Sequence[tuple[Path, int]],
    test: Sequence[tuple[Path, int]],
    size: int | None,
    class_names: Sequence[str],
    info: dict,
) -> RawSplits:
    def split(samples: Sequence[tuple[Path, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        x = _decode_images([p for p, _ in samples], size, cfg.name)
        return x, torch.tensor([label for _, label in samples], dtype=torch.int64)

    train_x, train_y = split(train)
    test_x, test_y = split(test)
    info = {**info, "resize": _resize_info(size)}
    return RawSplits(train_x, train_y, test_x, test_y, tuple(class_names), info)


# --- ImageFolder (and the CIFAR-10 JPEG copy) ------------------------------------------------


def _imagefolder_test_dir(root: Path) -> Path:
    return root / "test" if (root / "test").is_dir() else root / "val"


def _check_imagefolder(root: Path, cfg: DataConfig, num_classes: int | None = None) -> Path:
    _need(root / "train", root, is_dir=True)
    if not _imagefolder_test_dir(root).is_dir():
        raise _LayoutMismatch("has no test/ (or val/) folder")
    classes = [p for p in (root / "train").iterdir() if p.is_dir()]
    if not classes:
        raise _LayoutMismatch("has no class folders in train/")
    if num_classes is not None and len(classes) != num_classes:
        raise _LayoutMismatch(f"has {len(classes)} class folders in train/, not {num_classes}")
    return root


_IMAGEFOLDER_LAYOUT = (
    "train/<class>/*.jpg|png|... and test/<class>/* (or val/<class>/*), classes = train/ folder names"
)
_CIFAR10_JPEG_LAYOUT = (
    "an ImageFolder copy of CIFAR-10: train/<class>/NNNN.jpg, test/<class>/NNNN.jpg, "
    "10 class folders, 32x32 images"
)


@register_dataset(
    "imagefolder",
    description="any ImageFolder tree (train/<class>/*, test/<class>/* or val/<class>/*), RGB",
    default_root=None,
    layout=_IMAGEFOLDER_LAYOUT,
    check=_check_imagefolder,
)
@register_dataset(
    "cifar10-jpeg",
    description="lossy JPEG copy of CIFAR-10 (ImageFolder), 3x32x32, 10 classes; not the original cifar10",
    default_root="data/cifar10-jpeg",
    layout=_CIFAR10_JPEG_LAYOUT,
    check=partial(_check_imagefolder, num_classes=10),
)
def _load_imagefolder(cfg: DataConfig, root: Path) -> RawSplits:
    return _cached(cfg, root, cfg.image_size, partial(_build_imagefolder, cfg, root))


def _build_imagefolder(cfg: DataConfig, root: Path) -> RawSplits:
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS

    test_dir = _imagefolder_test_dir(root)
    try:
        train = ImageFolder(str(root / "train"))
        # The test split takes the train split's class indices; it may lack some classes.
        test = ImageFolder.make_dataset(
            str(test_dir), train.class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True
        )
        if not test:
            raise FileNotFoundError(f"{test_dir.name}/ has no images in folders named like train/'s")
    except FileNotFoundError as err:
        raise DatasetNotFoundError(
            f"dataset {cfg.name!r}: root {root}: {_error_line(err)}; expected {_IMAGEFOLDER_LAYOUT}",
            field="root",
        ) from err
    return _raw_from_files(
        cfg,
        [(Path(p), y) for p, y in train.samples],
        [(Path(p), y) for p, y in test],
        cfg.image_size,
        train.classes,
        {"source": "ImageFolder", "test_split": test_dir.name},
    )


# --- Tiny-ImageNet ----------------------------------------------------------------------------


def _check_tinyimagenet(root: Path, cfg: DataConfig) -> Path:
    base = _subfolder_with(root, "tiny-imagenet-200", "wnids.txt")
    _need(base / "wnids.txt", root, is_dir=False)
    _need(base / "train", root, is_dir=True)
    _need(base / "val" / "images", root, is_dir=True)
    _need(base / "val" / "val_annotations.txt", root, is_dir=False)
    if not _tinyimagenet_classes(base)[0]:
        raise _LayoutMismatch("has no train/<wnid>/images/ folder for any wnid in wnids.txt")
    return base


def _tinyimagenet_classes(base: Path) -> tuple[list[str], int]:
    """The wnids that have train folders (in wnids.txt order) and how many wnids are listed."""
    listed = [w.strip() for w in (base / "wnids.txt").read_text().splitlines() if w.strip()]
    return [w for w in listed if (base / "train" / w / "images").is_dir()], len(listed)


@register_dataset(
    "tinyimagenet",
    description="Tiny-ImageNet (original layout), 3x64x64; test split = val",
    default_root="data/tiny-imagenet-200",
    layout=(
        "the original tiny-imagenet-200 layout (wnids.txt, train/<wnid>/images/*.JPEG, "
        "val/images/ + val/val_annotations.txt)"
    ),
    check=_check_tinyimagenet,
)
def _load_tinyimagenet(cfg: DataConfig, root: Path) -> RawSplits:
    return _cached(cfg, root, cfg.image_size, partial(_build_tinyimagenet, cfg, root))


def _build_tinyimagenet(cfg: DataConfig, root: Path) -> RawSplits:
    wnids, listed = _tinyimagenet_classes(root)
    index = {w: i for i, w in enumerate(wnids)}
    train = [
        (path, index[w])
        for w in wnids
        for path in sorted((root / "train" / w / "images").glob("*.JPEG"))
    ]
    test = []
    for line in (root / "val" / "val_annotations.txt").read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and parts[1] in index:
            test.append((root / "val" / "images" / parts[0], index[parts[1]]))
    words = {}
    if (root / "words.txt").is_file():
        for line in (root / "words.txt").read_text().splitlines():
            wnid, _, label = line.partition("\t")
            words[wnid] = label.strip()
    info = {"source": "tiny-imagenet-200", "test_split": "val (labels from val/val_annotations.txt)"}
    if len(wnids) < listed:
        info["class_subset"] = (
            f"{len(wnids)} of the {listed} wnids in wnids.txt have train folders; "
            "using those, in wnids.txt order"
        )
    names = [words.get(w) or w for w in wnids]
    return _raw_from_files(cfg, train, test, cfg.image_size, names, info)


# --- CUB-200-2011 -----------------------------------------------------------------------------

_CUB_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")
_CUB_DEFAULT_SIZE = 32  # as in the RaT-BPTT paper


def _check_cub(root: Path, cfg: DataConfig) -> Path:
    base = _subfolder_with(root, "CUB_200_2011", "images.txt")
    for name in _CUB_FILES:
        _need(base / name, root, is_dir=False)
    _need(base / "images", root, is_dir=True)
    return base


def _read_id_table(path: Path) -> dict[int, str]:
    """``<id> <value>`` lines (CUB's index files) as a dict."""
    table = {}
    for line in path.read_text().splitlines():
        ident, _, value = line.strip().partition(" ")
        if ident:
            table[int(ident)] = value.strip()
    return table


@register_dataset(
    "cub200",
    description="CUB-200-2011 birds (original layout), resized to 3x32x32 by default; classes present only",
    default_root="data/CUB_200_2011",
    layout=(
        "the original CUB_200_2011 layout (images.txt, image_class_labels.txt, "
        "train_test_split.txt, classes.txt, images/<class>/*.jpg)"
    ),
    check=_check_cub,
)
def _load_cub(cfg: DataConfig, root: Path) -> RawSplits:
    size = cfg.image_size or _CUB_DEFAULT_SIZE
    return _cached(cfg, root, size, partial(_build_cub, cfg, root, size))


def _build_cub(cfg: DataConfig, root: Path, size: int) -> RawSplits:
    try:
        images = _read_id_table(root / "images.txt")
        labels = {i: int(c) for i, c in _read_id_table(root / "image_class_labels.txt").items()}
        is_train = {i: v == "1" for i, v in _read_id_table(root / "train_test_split.txt").items()}
        classes = {int(c): n for c, n in _read_id_table(root / "classes.txt").items()}
    except ValueError as err:
        raise DatasetNotFoundError(
            f"dataset {cfg.name!r}: root {root} has a malformed index file: {_error_line(err)}", field="root"
        ) from err
    missing = sorted(i for i in images if i not in labels or i not in is_train)
    if missing:
        raise DatasetNotFoundError(
            f"dataset {cfg.name!r}: root {root}: image id {missing[0]} lacks a label or split entry",
            field="root",
        )
    used = {labels[i] for i in images}
    if not used <= classes.keys():
        raise DatasetNotFoundError(
            f"dataset {cfg.name!r}: root {root}: class id {min(used - classes.keys())} "
            "in image_class_labels.txt is not in classes.txt", field="root"
        )
    present = [c for c in classes if c in used]  # classes.txt order
    remap = {c: k for k, c in enumerate(present)}
    samples = {True: [], False: []}
    for i in sorted(images):
        samples[is_train[i]].append((root / "images" / images[i], remap[labels[i]]))
    names = [classes[c].split(".", 1)[-1] for c in present]  # "001.Black_footed_Albatross" -> name
    info = {
        "source": "CUB_200_2011",
        "split": "train_test_split.txt",
        "classes_used": (
            f"{len(present)} of {len(classes)} classes in classes.txt occur; "
            f"labels remapped to 0..{len(present) - 1}"
        ),
    }
    return _raw_from_files(cfg, samples[True], samples[False], size, names, info)
