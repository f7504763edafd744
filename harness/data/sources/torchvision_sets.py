"""MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 in torchvision's layouts (the files a user's
``download=True`` leaves, or ``download = true`` in the suite)."""

from __future__ import annotations

import gzip
import math
from pathlib import Path
from typing import ClassVar

import torch

from harness.core.errors import DatasetNotFoundError
from harness.data.config import DataConfig, RawSplits
from harness.data.registry import DatasetSource, LayoutMismatch, error_line, need, register_dataset

_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_MNIST_LAYOUT = (
    "torchvision's layout: root/{0}/raw/ with train-images-idx3-ubyte, train-labels-idx1-ubyte, "
    "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (.gz or unpacked), or download=true"
)


class _MNISTLike(DatasetSource):
    folder: ClassVar[str]  # torchvision's class name and folder: MNIST, FashionMNIST
    default_root = "data"

    def check(self, root: Path, cfg: DataConfig) -> Path:
        if cfg.download:  # torchvision fetches, or md5-verifies and unpacks, the files itself
            return root
        raw = root / self.folder / "raw"
        need(raw, root, is_dir=True)
        for name in _MNIST_FILES:
            if not ((raw / name).is_file() or (raw / f"{name}.gz").is_file()):
                raise LayoutMismatch(f"has no {self.folder}/raw/{name}(.gz)")
        return root

    def load(self, cfg: DataConfig, root: Path) -> RawSplits:
        from torchvision import datasets

        cls = getattr(datasets, self.folder)
        raw = root / self.folder / "raw"
        try:
            if cfg.download or all((raw / name).is_file() for name in _MNIST_FILES):
                train, test = (cls(str(root), train=t, download=cfg.download) for t in (True, False))
                xs = train.data, test.data
                ys = train.targets, test.targets
            else:
                # torchvision reads only unpacked files; read the .gz archives in memory rather than
                # unpack them into a root that may be read-only.
                xs, ys = (
                    tuple(read_idx_gz(raw / f"{split}-{kind}-idx{dims}-ubyte.gz") for split in ("train", "t10k"))
                    for kind, dims in (("images", 3), ("labels", 1))
                )
        except (RuntimeError, OSError, ValueError) as err:
            raise DatasetNotFoundError(f"dataset {cfg.name!r}: cannot load {root}: {error_line(err)}",
                                       field="root") from err
        return RawSplits(
            xs[0].unsqueeze(1), ys[0].long(), xs[1].unsqueeze(1), ys[1].long(),
            class_names=tuple(cls.classes),
            info={"source": f"torchvision.datasets.{self.folder}"},
        )


def read_idx_gz(path: Path) -> torch.Tensor:
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


@register_dataset("mnist")
class MNIST(_MNISTLike):
    """MNIST via torchvision, 1x28x28, 10 classes, 60k/10k"""

    folder = "MNIST"
    layout = _MNIST_LAYOUT.format("MNIST")


@register_dataset("fashion_mnist")
class FashionMNIST(_MNISTLike):
    """Fashion-MNIST via torchvision, 1x28x28, 10 classes, 60k/10k"""

    folder = "FashionMNIST"
    layout = _MNIST_LAYOUT.format("FashionMNIST")


class _CIFAR(DatasetSource):
    folder: ClassVar[str]  # torchvision's folder under root
    torchvision_class: ClassVar[str]
    default_root = "data"

    def check(self, root: Path, cfg: DataConfig) -> Path:
        if not cfg.download:
            need(root / self.folder, root, is_dir=True)
        return root

    def load(self, cfg: DataConfig, root: Path) -> RawSplits:
        from torchvision import datasets

        cls = getattr(datasets, self.torchvision_class)
        try:
            train, test = (cls(str(root), train=t, download=cfg.download) for t in (True, False))
        except (RuntimeError, OSError) as err:
            raise DatasetNotFoundError(f"dataset {cfg.name!r}: cannot load {root}: {error_line(err)}",
                                       field="root") from err

        def images(ds) -> torch.Tensor:  # .data is NHWC uint8
            return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()

        return RawSplits(
            images(train), torch.tensor(train.targets), images(test), torch.tensor(test.targets),
            class_names=tuple(train.classes),
            info={"source": f"torchvision.datasets.{self.torchvision_class}"},
        )


@register_dataset("cifar10")
class CIFAR10(_CIFAR):
    """CIFAR-10 (original) via torchvision, 3x32x32, 10 classes, 50k/10k"""

    folder, torchvision_class = "cifar-10-batches-py", "CIFAR10"
    layout = "torchvision's layout: root/cifar-10-batches-py/ (data_batch_1..5, test_batch), or download=true"


@register_dataset("cifar100")
class CIFAR100(_CIFAR):
    """CIFAR-100 (original) via torchvision, 3x32x32, 100 classes, 50k/10k"""

    folder, torchvision_class = "cifar-100-python", "CIFAR100"
    layout = "torchvision's layout: root/cifar-100-python/ (train, test, meta), or download=true"
