"""scikit-learn's bundled 8x8 digits: the embedded default for demos and tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from harness.data.config import DataConfig, RawSplits
from harness.data.registry import DatasetSource, register_dataset


@register_dataset("digits")
class Digits(DatasetSource):
    """scikit-learn's bundled 8x8 digits, 1x8x8, 10 classes, stratified 80/20 split"""

    reads_files = False
    layout = "nothing on disk (bundled with scikit-learn)"

    def load(self, cfg: DataConfig, root: Path | None) -> RawSplits:
        # Imported here: scikit-learn takes about a second to import and only this source needs it.
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        bunch = load_digits()
        x = torch.from_numpy(bunch.images / 16.0).float().unsqueeze(1)
        y = torch.from_numpy(bunch.target).long()
        train_idx, test_idx = train_test_split(np.arange(len(y)), test_size=0.2, random_state=0,
                                               stratify=bunch.target)
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
