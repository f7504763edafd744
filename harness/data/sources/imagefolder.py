"""Any ImageFolder tree, and the lossy JPEG copy of CIFAR-10 (``cifar10-jpeg``, never ``cifar10``)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import ClassVar

from harness.core.errors import DatasetNotFoundError
from harness.data.cache import cached
from harness.data.config import DataConfig, RawSplits
from harness.data.decode import raw_from_files
from harness.data.registry import DatasetSource, LayoutMismatch, error_line, need, register_dataset

_IMAGEFOLDER_LAYOUT = "train/<class>/*.jpg|png|... and test/<class>/* (or val/<class>/*), classes = train/ folder names"


def _test_dir(root: Path) -> Path:
    return root / "test" if (root / "test").is_dir() else root / "val"


@register_dataset("imagefolder")
class ImageFolderSource(DatasetSource):
    """any ImageFolder tree (train/<class>/*, test/<class>/* or val/<class>/*), RGB"""

    layout = _IMAGEFOLDER_LAYOUT
    num_classes: ClassVar[int | None] = None  # a fixed number of class folders, when the dataset has one

    def check(self, root: Path, cfg: DataConfig) -> Path:
        need(root / "train", root, is_dir=True)
        if not _test_dir(root).is_dir():
            raise LayoutMismatch("has no test/ (or val/) folder")
        classes = [p for p in (root / "train").iterdir() if p.is_dir()]
        if not classes:
            raise LayoutMismatch("has no class folders in train/")
        if self.num_classes is not None and len(classes) != self.num_classes:
            raise LayoutMismatch(f"has {len(classes)} class folders in train/, not {self.num_classes}")
        return root

    def load(self, cfg: DataConfig, root: Path) -> RawSplits:
        return cached(cfg, root, cfg.image_size, partial(self._build, cfg, root))

    def _build(self, cfg: DataConfig, root: Path) -> RawSplits:
        from torchvision.datasets import ImageFolder
        from torchvision.datasets.folder import IMG_EXTENSIONS

        test_dir = _test_dir(root)
        try:
            train = ImageFolder(str(root / "train"))
            # The test split takes the train split's class indices; it may lack some classes.
            test = ImageFolder.make_dataset(str(test_dir), train.class_to_idx, extensions=IMG_EXTENSIONS,
                                            allow_empty=True)
            if not test:
                raise FileNotFoundError(f"{test_dir.name}/ has no images in folders named like train/'s")
        except FileNotFoundError as err:
            raise DatasetNotFoundError(f"dataset {cfg.name!r}: root {root}: {error_line(err)}; expected "
                                       f"{_IMAGEFOLDER_LAYOUT}", field="root") from err
        return raw_from_files(cfg, [(Path(p), y) for p, y in train.samples], [(Path(p), y) for p, y in test],
                              cfg.image_size, train.classes, {"source": "ImageFolder", "test_split": test_dir.name})


@register_dataset("cifar10-jpeg")
class CIFAR10JPEG(ImageFolderSource):
    """lossy JPEG copy of CIFAR-10 (ImageFolder), 3x32x32, 10 classes; not the original cifar10"""

    default_root = "data/cifar10-jpeg"
    layout = ("an ImageFolder copy of CIFAR-10: train/<class>/NNNN.jpg, test/<class>/NNNN.jpg, "
              "10 class folders, 32x32 images")
    num_classes = 10
