"""Datasets: configs, the registry of sources, preprocessing, the decoded-tensor cache.

A dataset is named by a registry key (``digits``, ``mnist``, ``cifar10-jpeg``, ...). Every source
returns raw pixels (uint8, or floats in [0, 1]); :func:`load_dataset` then applies the same
preprocessing to all of them (:mod:`.preprocess`: resize -> per-channel normalize -> ZCA, each
fitted on the train split only) and records what it did in ``DatasetSplits.preprocessing``.
Sources live one per module in :mod:`.sources`; :mod:`.registry` says how to add one.

May import: :mod:`harness.core`. Nothing above it.
"""

from harness.data.config import DataConfig, DatasetSplits, RawSplits
from harness.data.load import check_dataset, load_dataset
from harness.data.preprocess import zca_whitening
from harness.data.registry import DATASETS, DatasetSource, LayoutMismatch, list_datasets, register_dataset

__all__ = ["DataConfig", "DatasetSplits", "RawSplits", "check_dataset", "load_dataset", "zca_whitening",
           "DATASETS", "DatasetSource", "LayoutMismatch", "list_datasets", "register_dataset"]
