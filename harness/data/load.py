"""Resolving a dataset's name and root, and loading it preprocessed."""

from __future__ import annotations

from pathlib import Path

import torch

from harness.core.errors import ConfigError, DatasetNotFoundError
from harness.data.config import DataConfig, DatasetSplits
from harness.core.rng import Stream, step_seed
from harness.data.preprocess import ZCA, Normalize, pixels, resize, to_unit_float
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
    """Load a dataset, hold out its validation split (if any), and apply resize -> normalize ->
    ZCA, all fitted on the (remaining) train split and applied to every split."""
    source, root = resolve(cfg)
    raw = source.load(cfg, root)
    # Memory: the splits are cut on the loader's (uint8) pixels, each converted to float once and
    # normalized in place, and the loader's tensors dropped once converted, so the peak stays
    # near the float result (about 5x the uint8 pixels instead of 12x: ImageNet-1K at 64x64).
    raw_train, raw_test, raw_dtype = raw.train_x, raw.test_x, raw.train_x.dtype
    train_y, test_y, class_names, info = raw.train_y.long(), raw.test_y.long(), tuple(raw.class_names), raw.info
    del raw
    prep: dict = {
        "dataset": cfg.name,
        "source_root": str(root) if root is not None else None,
        "order": ["validation split", "resize", "normalize", "zca"],
        "pixel_scale": "uint8 / 255" if raw_dtype == torch.uint8 else "float in [0, 1]",
        "resize": None,
        **info,
    }
    val_y = None
    splits: list[torch.Tensor] = []  # train, test[, validation]: the only references, so a replaced split is freed
    prep["validation"] = None
    if cfg.validation_size:
        keep, held = validation_split(train_y, len(class_names), cfg.validation_size, cfg.validation_seed)
        raw_val, val_y, raw_train, train_y = raw_train[held], train_y[held], raw_train[keep], train_y[keep]
        prep["validation"] = {"size": int(held.numel()), "seed": cfg.validation_seed,
                              "held_out_of": "train (stratified; never distilled on)"}
    splits.append(to_unit_float(raw_train))
    del raw_train
    splits.append(to_unit_float(raw_test))
    del raw_test
    if val_y is not None:
        splits.append(to_unit_float(raw_val))
        del raw_val
    if cfg.image_size is not None and tuple(splits[0].shape[-2:]) != (cfg.image_size,) * 2:
        splits = [resize(x, cfg.image_size) for x in splits]
        prep["resize"] = {"size": [cfg.image_size] * 2, "method": "torch bilinear, antialias"}
    normalizer = zca = None
    prep["normalize"] = prep["zca"] = None
    if cfg.normalize:
        normalizer = Normalize.fit(splits[0])
        splits, prep["normalize"] = [normalizer.apply_(x) for x in splits], normalizer.info()
    if cfg.zca:
        zca = ZCA.fit(splits[0], cfg.zca_regularization)
        splits, prep["zca"] = [zca(x) for x in splits], zca.info()
    return DatasetSplits(
        name=cfg.name,
        train_x=splits[0],
        train_y=train_y,
        test_x=splits[1],
        test_y=test_y,
        num_classes=len(class_names),
        class_names=class_names,
        preprocessing=prep,
        val_x=splits[2] if val_y is not None else None,
        val_y=val_y,
        to_pixels=lambda images: pixels(images, normalizer, zca),
    )


def validation_split(labels: torch.Tensor, num_classes: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(kept, held out)`` indices: ``size`` training images held out, as evenly over the classes
    as they allow (a fixed draw from ``Stream.VALIDATION``)."""
    if size >= labels.numel():
        raise ConfigError(f"validation_size {size} leaves no training image of {labels.numel()}",
                          field="validation_size")
    gen = torch.Generator().manual_seed(step_seed(seed, 0, Stream.VALIDATION))
    per_class = [size // num_classes + (c < size % num_classes) for c in range(num_classes)]
    held = []
    for c, k in enumerate(per_class):
        members = (labels == c).nonzero().flatten()
        if len(members) <= k:
            raise ConfigError(f"validation_size {size} takes all {len(members)} training images of class {c}",
                              field="validation_size")
        held.append(members[torch.randperm(len(members), generator=gen)[:k]])
    held = torch.cat(held).sort().values
    mask = torch.ones(labels.numel(), dtype=torch.bool)
    mask[held] = False
    return mask.nonzero().flatten(), held
