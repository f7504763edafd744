"""Resolving a dataset's name and root, and loading it preprocessed."""

from __future__ import annotations

from pathlib import Path

import torch

from harness.core.errors import ConfigError, DatasetNotFoundError
from harness.data.config import DataConfig, DatasetSplits
from harness.data.preprocess import normalize, resize, to_unit_float, zca_whitening
from harness.data.registry import DATASETS, DatasetSource, LayoutMismatch


def resolve(cfg: DataConfig) -> tuple[DatasetSource, Path | None]:
    """The source of ``cfg.name`` and the folder it reads (checked, without reading images)."""
    source = DATASETS.get(cfg.name, field="name")()
    if not source.reads_files:
        if cfg.root is not None:
            raise ConfigError(f"dataset {cfg.name!r} reads no files; leave root unset", field="root")
        return source, None
    given = cfg.root if cfg.root is not None else source.default_root
    if given is None:
        raise ConfigError(f"dataset {cfg.name!r} has no default root; set root to a folder with {source.layout}",
                          field="root")
    root = Path(given).expanduser().resolve()
    try:
        return source, source.check(root, cfg)
    except LayoutMismatch as why:
        raise DatasetNotFoundError(f"dataset {cfg.name!r}: root {root} {why}; expected {source.layout}",
                                   field="root") from None


def check_dataset(cfg: DataConfig) -> None:
    """Raise if ``cfg`` names an unknown dataset or a root without the expected layout.

    Reads directory listings and small index files only, never images.
    """
    resolve(cfg)


def load_dataset(cfg: DataConfig) -> DatasetSplits:
    """Load a dataset and apply resize -> normalize -> ZCA, all fitted on the train split."""
    source, root = resolve(cfg)
    raw = source.load(cfg, root)
    train_x, test_x = to_unit_float(raw.train_x), to_unit_float(raw.test_x)
    prep: dict = {
        "dataset": cfg.name,
        "source_root": str(root) if root is not None else None,
        "order": ["resize", "normalize", "zca"],
        "pixel_scale": "uint8 / 255" if raw.train_x.dtype == torch.uint8 else "float in [0, 1]",
        "resize": None,
        **raw.info,
    }
    if cfg.image_size is not None and tuple(train_x.shape[-2:]) != (cfg.image_size,) * 2:
        train_x, test_x = (resize(x, cfg.image_size) for x in (train_x, test_x))
        prep["resize"] = {"size": [cfg.image_size] * 2, "method": "torch bilinear, antialias"}
    prep["normalize"] = None
    if cfg.normalize:
        train_x, test_x, prep["normalize"] = normalize(train_x, test_x)
    prep["zca"] = None
    if cfg.zca:
        # Normalize (if on) comes first; with normalize=False the per-image standardization
        # inside ZCA still applies.
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
