"""Tests for harness.data: loaders on real files, preprocessing, ZCA, errors and the cache.

Tests marked ``data`` read the real datasets in ``../shared/data`` (or ``$DDBENCH_SHARED_DATA``)
and are skipped when that folder is absent. Archives are unpacked (partly) into temporary
folders once per session; every test gets its own empty ``$DDBENCH_CACHE``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

REPO = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("harness") is None:  # run from a plain checkout, not installed
    sys.path.insert(0, str(REPO))

from harness.data import decode as data_decode  # noqa: E402
from harness.data import DataConfig, check_dataset, list_datasets, load_dataset, zca_whitening  # noqa: E402
from harness.core.errors import ConfigError, DatasetNotFoundError, UnknownNameError  # noqa: E402

CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR_PER_CLASS = 20  # files per class and split taken from the 60k-file archive
TINY_TRAIN_PER_CLASS = 30


def _shared_data() -> Path:
    path = Path(os.environ.get("DDBENCH_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.skip(f"real dataset files not found at {path} (set DDBENCH_SHARED_DATA)")
    return path


def _archive(name: str) -> Path:
    path = _shared_data() / name
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


def _extract(archive: Path, dest: Path, keep) -> None:
    """Unpack the regular files of ``archive`` for which ``keep(parts)`` is true (no links, no ..)."""
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or ".." in parts or Path(member.name).is_absolute() or not keep(parts):
                continue
            target = dest.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(tar.extractfile(member).read())


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DDBENCH_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def cifar_jpeg_root(tmp_path_factory) -> Path:
    archive = _archive("cifar10-jpeg.tar.gz")
    root = tmp_path_factory.mktemp("cifar10-jpeg")
    # Members are named <split>/<class>/NNNN.jpg; keep the first few of each class.
    _extract(archive, root, lambda p: len(p) == 3 and int(Path(p[2]).stem) < CIFAR_PER_CLASS)
    return root


@pytest.fixture(scope="session")
def tiny_parent(tmp_path_factory) -> Path:
    """A folder containing tiny-imagenet-200/ with every val image and a few train images."""
    archive = _archive("tiny-imagenet-200-10class.tar.gz")
    parent = tmp_path_factory.mktemp("tiny")

    def keep(p: tuple[str, ...]) -> bool:
        if len(p) == 5 and p[1] == "train":  # tiny-imagenet-200/train/<wnid>/images/<wnid>_K.JPEG
            return int(Path(p[4]).stem.rsplit("_", 1)[1]) < TINY_TRAIN_PER_CLASS
        return True

    _extract(archive, parent, keep)
    return parent


@pytest.fixture(scope="session")
def cub_parent(tmp_path_factory) -> Path:
    archive = _archive("cub-200-2011-2class.tar.gz")
    parent = tmp_path_factory.mktemp("cub")
    _extract(archive, parent, lambda p: True)
    return parent


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory) -> Path:
    """A writable copy of the shared MNIST/raw/*.gz (torchvision unpacks next to them)."""
    raw = _shared_data() / "MNIST" / "raw"
    if not raw.is_dir():
        pytest.skip(f"{raw} is missing")
    root = tmp_path_factory.mktemp("mnist")
    shutil.copytree(raw, root / "MNIST" / "raw")
    for path in (root / "MNIST" / "raw").iterdir():
        path.chmod(0o644)
    return root


def _write_png(path: Path, size: tuple[int, int], value: int) -> np.ndarray:
    pixels = np.full((size[1], size[0], 3), value, dtype=np.uint8)
    pixels[0, 0] = (value + 100) % 256, 7, 200  # not constant, so resizing is visible
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def _make_imagefolder(root: Path, test_name: str = "test", sizes=((8, 8), (8, 8))) -> Path:
    for split, n in (("train", 3), (test_name, 2)):
        for c, cls in enumerate(("ant", "bee")):
            for i in range(n):
                _write_png(root / split / cls / f"{i}.png", sizes[c], 10 * c + i)
    return root


def _cfg(**kw) -> DataConfig:
    return DataConfig(**kw)


def _as_uint8(x: torch.Tensor) -> torch.Tensor:
    """Un-normalized [0, 1] images back to HWC uint8."""
    return (x * 255).round().to(torch.uint8).permute(1, 2, 0)


def _row_of(images: torch.Tensor, pixels: np.ndarray) -> list[int]:
    target = torch.from_numpy(np.array(pixels)).permute(2, 0, 1).float() / 255
    return [i for i in range(len(images)) if torch.allclose(images[i], target, atol=0.5 / 255)]


# --- registry and config -----------------------------------------------------------------


def test_list_datasets_names_every_loader():
    names = list_datasets()
    expected = {"digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "imagefolder",
                "cifar10-jpeg", "tinyimagenet", "cub200"}
    assert expected <= names.keys()
    assert all(isinstance(d, str) and d and "\n" not in d for d in names.values())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "digits", "zca_regularization": 0},
        {"name": "digits", "zca_regularization": float("nan")},
        {"name": "digits", "image_size": 0},
        {"name": ""},
        {"name": "digits", "root": " "},
        {"name": "digits", "colour": True},
    ],
)
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValidationError):
        DataConfig(**kwargs)


def test_config_is_frozen():
    cfg = _cfg(name="digits")
    with pytest.raises(ValidationError):
        cfg.zca = True


def test_unknown_name_lists_known_names():
    with pytest.raises(UnknownNameError) as info:
        check_dataset(_cfg(name="cifar11"))
    assert info.value.field == "name"
    assert "cifar11" in str(info.value) and "cifar10-jpeg" in str(info.value) and "digits" in str(info.value)
    with pytest.raises(UnknownNameError):
        load_dataset(_cfg(name="cifar11"))


def test_missing_root_names_root_and_layout(tmp_path):
    missing = tmp_path / "nowhere" / "tiny-imagenet-200"
    with pytest.raises(DatasetNotFoundError) as info:
        check_dataset(_cfg(name="tinyimagenet", root=str(missing)))
    text = str(info.value)
    assert info.value.field == "root"
    assert str(missing) in text and "does not exist" in text
    assert "wnids.txt" in text and "val_annotations.txt" in text
    assert "\n" not in info.value.message


def test_wrong_layout_is_reported(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    for name, missing in (("cifar10-jpeg", "train/"), ("cub200", "images.txt"), ("tinyimagenet", "wnids.txt"),
                          ("mnist", "MNIST/raw/"), ("cifar10", "cifar-10-batches-py/")):
        with pytest.raises(DatasetNotFoundError) as info:
            load_dataset(_cfg(name=name, root=str(tmp_path)))
        assert str(tmp_path) in str(info.value) and f"has no {missing}" in str(info.value), name


def test_imagefolder_needs_a_root_and_digits_takes_none(tmp_path):
    with pytest.raises(ConfigError) as info:
        check_dataset(_cfg(name="imagefolder"))
    assert info.value.field == "root"
    with pytest.raises(ConfigError):
        check_dataset(_cfg(name="digits", root=str(tmp_path)))


def test_cifar10_jpeg_requires_ten_classes(tmp_path):
    root = _make_imagefolder(tmp_path)
    with pytest.raises(DatasetNotFoundError, match="2 class folders in train/, not 10"):
        check_dataset(_cfg(name="cifar10-jpeg", root=str(root)))
    check_dataset(_cfg(name="imagefolder", root=str(root)))


def test_check_dataset_reads_no_images(tmp_path, monkeypatch):
    root = _make_imagefolder(tmp_path)

    def boom(*args, **kwargs):
        raise AssertionError("check_dataset decoded images")

    monkeypatch.setattr(data_decode, "decode_images", boom)
    check_dataset(_cfg(name="imagefolder", root=str(root)))
    with pytest.raises(AssertionError):
        load_dataset(_cfg(name="imagefolder", root=str(root)))


# --- digits --------------------------------------------------------------------------------


def test_digits_shapes_ranges_and_split():
    splits = load_dataset(_cfg(name="digits", normalize=False))
    assert splits.name == "digits"
    assert splits.train_x.shape == (1437, 1, 8, 8) and splits.test_x.shape == (360, 1, 8, 8)
    assert splits.train_x.dtype == torch.float32 and splits.train_y.dtype == torch.int64
    assert splits.train_x.min() == 0 and splits.train_x.max() == 1
    assert splits.num_classes == 10 and splits.class_names == tuple("0123456789")
    assert splits.image_shape == (1, 8, 8)
    # Stratified: every class has 35 to 37 test images (about 20% of ~180).
    assert set(Counter(splits.test_y.tolist()).values()) <= {35, 36, 37}
    json.dumps(splits.preprocessing)


def test_digits_is_deterministic_and_fast():
    first = load_dataset(_cfg(name="digits"))
    start = time.perf_counter()
    second = load_dataset(_cfg(name="digits"))
    assert time.perf_counter() - start < 1.0
    assert torch.equal(first.train_x, second.train_x) and torch.equal(first.test_y, second.test_y)


def test_digits_resize_uses_torch():
    splits = load_dataset(_cfg(name="digits", image_size=16, normalize=False))
    assert splits.image_shape == (1, 16, 16)
    assert splits.preprocessing["resize"]["size"] == [16, 16]
    assert 0 <= splits.train_x.min() and splits.train_x.max() <= 1


def test_normalize_gives_zero_mean_unit_std_on_train():
    splits = load_dataset(_cfg(name="digits"))
    assert splits.train_x.mean().abs() < 1e-5
    assert abs(splits.train_x.std(correction=0) - 1) < 1e-4
    plain = load_dataset(_cfg(name="digits", normalize=False))
    mean = splits.preprocessing["normalize"]["mean"][0]
    assert mean == pytest.approx(plain.train_x.mean().item(), rel=1e-5)


def test_to_casts_images_only():
    splits = load_dataset(_cfg(name="digits")).to("cpu", torch.float64)
    assert splits.train_x.dtype == torch.float64 and splits.test_x.dtype == torch.float64
    assert splits.train_y.dtype == torch.int64 and splits.test_y.dtype == torch.int64


# --- ZCA -------------------------------------------------------------------------------------


def _standardized(x: torch.Tensor) -> np.ndarray:
    """Per-image centering and unit L2 norm, written independently of the module."""
    flat = x.reshape(len(x), -1).double().numpy()
    flat = flat - flat.mean(axis=1, keepdims=True)
    return flat / np.linalg.norm(flat, axis=1, keepdims=True)


def test_zca_with_tiny_regularization_whitens_train():
    gen = torch.Generator().manual_seed(0)
    train = torch.rand(600, 2, 3, 3, generator=gen)
    test = torch.rand(50, 2, 3, 3, generator=gen)
    white_train, white_test, info = zca_whitening(train, test, 1e-9)
    assert white_train.shape == train.shape and white_test.shape == test.shape
    flat = white_train.reshape(600, -1).double()
    cov = flat.T @ flat / 600
    # Centering each image removes the constant direction, so "identity" is on the rest.
    d = flat.shape[1]
    projector = torch.eye(d, dtype=torch.float64) - 1.0 / d
    assert torch.allclose(cov, projector, atol=1e-3)
    assert info["regularization"] == 1e-9 and info["dim"] == 18


def test_zca_regularization_shrinks_eigenvalues():
    gen = torch.Generator().manual_seed(1)
    train = torch.rand(400, 1, 4, 4, generator=gen) * torch.linspace(0.1, 2, 16).view(1, 1, 4, 4)
    reg = 0.1
    white, _, _ = zca_whitening(train, train[:5], reg)
    flat = white.reshape(400, -1).double()
    got = torch.linalg.eigvalsh(flat.T @ flat / 400).numpy()
    x = _standardized(train)
    e = np.linalg.eigvalsh(x.T @ x / 400)
    e = np.clip(e, 0, None)
    expected = e / (e + reg * e.mean())  # whitened spectrum: e / (e + reg * mean(e))
    assert np.allclose(np.sort(got), np.sort(expected), atol=1e-4)
    assert got.max() < 1 / (1 + reg * e.mean() / e.max()) + 1e-4  # every direction shrunk below 1


def test_zca_transforms_test_rows_independently_with_train_fit():
    gen = torch.Generator().manual_seed(2)
    train, test = torch.rand(100, 3, 2, 2, generator=gen), torch.rand(20, 3, 2, 2, generator=gen)
    train_a, test_a, _ = zca_whitening(train, test, 0.1)
    train_b, test_b, _ = zca_whitening(train, test[:5], 0.1)
    assert torch.allclose(test_a[:5], test_b) and torch.allclose(train_a, train_b)
    same_train, same_test, _ = zca_whitening(train, train, 0.1)
    assert torch.allclose(same_train, same_test)
    with pytest.raises(ConfigError):
        zca_whitening(train, test, 0.0)


def test_load_dataset_applies_zca_after_normalize():
    splits = load_dataset(_cfg(name="digits", zca=True, zca_regularization=0.05))
    prep = splits.preprocessing
    assert prep["zca"]["regularization"] == 0.05 and prep["normalize"] is not None
    assert torch.isfinite(splits.train_x).all() and splits.train_x.shape == (1437, 1, 8, 8)
    normalized = load_dataset(_cfg(name="digits"))
    expected, _, _ = zca_whitening(normalized.train_x, normalized.test_x, 0.05)
    assert torch.allclose(splits.train_x, expected, atol=1e-5)


# --- image folders and the cache ----------------------------------------------------------


def test_imagefolder_accepts_val_and_keeps_its_name(tmp_path):
    root = _make_imagefolder(tmp_path, test_name="val")
    splits = load_dataset(_cfg(name="imagefolder", root=str(root), normalize=False))
    assert splits.name == "imagefolder" and splits.class_names == ("ant", "bee")
    assert splits.train_x.shape == (6, 3, 8, 8) and splits.test_x.shape == (4, 3, 8, 8)
    assert splits.test_y.tolist() == [0, 0, 1, 1]
    assert splits.preprocessing["test_split"] == "val"
    pixels = np.asarray(Image.open(root / "train" / "bee" / "1.png").convert("RGB"))
    assert [splits.train_y[i].item() for i in _row_of(splits.train_x, pixels)] == [1]
    _write_png(root / "test" / "bee" / "0.png", (8, 8), 3)  # test/ wins over val/ when both exist
    with_test = load_dataset(_cfg(name="imagefolder", root=str(root)))
    assert with_test.test_y.tolist() == [1] and with_test.preprocessing["test_split"] == "test"


def test_imagefolder_mixed_sizes_need_image_size(tmp_path):
    root = _make_imagefolder(tmp_path, sizes=((8, 8), (12, 6)))
    with pytest.raises(ConfigError) as info:
        load_dataset(_cfg(name="imagefolder", root=str(root)))
    assert info.value.field == "image_size" and "image_size" in str(info.value)
    splits = load_dataset(_cfg(name="imagefolder", root=str(root), image_size=5))
    assert splits.image_shape == (3, 5, 5)
    assert splits.preprocessing["resize"]["size"] == [5, 5]


def test_cache_is_used_rebuilt_when_corrupt_and_when_files_change(tmp_path, monkeypatch):
    root = _make_imagefolder(tmp_path / "folder")
    calls = []
    decode = data_decode.decode_images
    monkeypatch.setattr(data_decode, "decode_images", lambda *a, **k: calls.append(1) or decode(*a, **k))
    cfg = _cfg(name="imagefolder", root=str(root))

    first = load_dataset(cfg)
    assert len(calls) == 2  # train and test
    cache_files = list((tmp_path / "cache").glob("imagefolder-*.pt"))
    assert len(cache_files) == 1 and not list((tmp_path / "cache").glob("*.tmp"))

    second = load_dataset(cfg)
    assert len(calls) == 2  # served from the cache
    assert torch.equal(first.train_x, second.train_x) and torch.equal(first.test_y, second.test_y)

    cache_files[0].write_bytes(b"not a torch file")
    third = load_dataset(cfg)
    assert len(calls) == 4 and torch.equal(first.train_x, third.train_x)
    load_dataset(cfg)
    assert len(calls) == 4  # the rebuilt file is good again

    _write_png(root / "train" / "ant" / "9.png", (8, 8), 99)
    grown = load_dataset(cfg)
    assert len(calls) == 6 and grown.train_x.shape[0] == first.train_x.shape[0] + 1

    small_cfg = _cfg(name="imagefolder", root=str(root), image_size=4)
    before = set((tmp_path / "cache").glob("*.pt"))
    load_dataset(small_cfg)
    assert len(calls) == 8  # another size is another cache entry
    (small,) = set((tmp_path / "cache").glob("*.pt")) - before
    shutil.copyfile(cache_files[0], small)  # a file whose stored key does not match its name
    assert load_dataset(small_cfg).image_shape == (3, 4, 4) and len(calls) == 10


def test_cache_dir_unwritable_still_loads(tmp_path, monkeypatch):
    root = _make_imagefolder(tmp_path / "folder")
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("x")
    monkeypatch.setenv("DDBENCH_CACHE", str(blocker / "cache"))
    splits = load_dataset(_cfg(name="imagefolder", root=str(root)))
    assert splits.train_x.shape[0] == 6


# --- real files ------------------------------------------------------------------------------


@pytest.mark.data
def test_mnist_from_real_files_offline(mnist_root, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    gz_only = load_dataset(_cfg(name="mnist", root=str(mnist_root), normalize=False))
    assert gz_only.train_x.shape == (60000, 1, 28, 28) and gz_only.test_x.shape == (10000, 1, 28, 28)
    assert gz_only.train_y.min() == 0 and gz_only.train_y.max() == 9 and gz_only.num_classes == 10
    assert 0 <= gz_only.train_x.min() and gz_only.train_x.max() == 1
    # download=True verifies the md5s and unpacks without the network; then download=False reads those.
    for download in (True, False):
        again = load_dataset(_cfg(name="mnist", root=str(mnist_root), normalize=False, download=download))
        assert torch.equal(again.train_x, gz_only.train_x) and torch.equal(again.test_y, gz_only.test_y)
    assert (mnist_root / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()


@pytest.mark.data
def test_cifar10_jpeg_subset(cifar_jpeg_root):
    splits = load_dataset(_cfg(name="cifar10-jpeg", root=str(cifar_jpeg_root), normalize=False))
    assert splits.name == "cifar10-jpeg" and splits.num_classes == 10
    assert splits.class_names == CIFAR_CLASSES
    assert splits.image_shape == (3, 32, 32)
    assert splits.train_x.shape[0] == splits.test_x.shape[0] == 10 * CIFAR_PER_CLASS
    assert Counter(splits.train_y.tolist()) == {k: CIFAR_PER_CLASS for k in range(10)}
    pixels = np.asarray(Image.open(cifar_jpeg_root / "test" / "cat" / "0003.jpg").convert("RGB"))
    rows = _row_of(splits.test_x, pixels)
    assert rows and all(splits.test_y[r].item() == CIFAR_CLASSES.index("cat") for r in rows)


@pytest.mark.data
def test_cifar10_jpeg_normalize_per_channel(cifar_jpeg_root):
    splits = load_dataset(_cfg(name="cifar10-jpeg", root=str(cifar_jpeg_root)))
    assert splits.train_x.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (splits.train_x.std(dim=(0, 2, 3), correction=0) - 1).abs().max() < 1e-4
    assert len(splits.preprocessing["normalize"]["std"]) == 3
    json.dumps(splits.preprocessing)


@pytest.mark.data
def test_tinyimagenet_subset_and_val_labels(tiny_parent):
    base = tiny_parent / "tiny-imagenet-200"
    wnids = (base / "wnids.txt").read_text().split()
    splits = load_dataset(_cfg(name="tinyimagenet", root=str(tiny_parent), normalize=False))
    assert splits.preprocessing["source_root"] == str(base.resolve())  # found inside the parent
    assert splits.num_classes == len(wnids) == 10 and splits.image_shape == (3, 64, 64)
    assert splits.train_x.shape[0] == 10 * TINY_TRAIN_PER_CLASS and splits.test_x.shape[0] == 500
    lines = (base / "val" / "val_annotations.txt").read_text().splitlines()
    annotations = dict(line.split("\t")[:2] for line in lines)
    pixels = np.asarray(Image.open(base / "val" / "images" / "val_1.JPEG").convert("RGB"))
    rows = _row_of(splits.test_x, pixels)
    assert rows and all(splits.test_y[r].item() == wnids.index(annotations["val_1.JPEG"]) for r in rows)
    assert Counter(splits.test_y.tolist()) == Counter(wnids.index(w) for w in annotations.values())
    words = dict(line.split("\t") for line in (base / "words.txt").read_text().splitlines())
    assert splits.class_names[0] == words[wnids[0]]
    assert "class_subset" not in splits.preprocessing


def test_tinyimagenet_uses_only_wnids_with_train_folders(tmp_path):
    base = tmp_path / "tiny-imagenet-200"
    (base / "wnids.txt").parent.mkdir(parents=True)
    (base / "wnids.txt").write_text("n0\nn1\nn2\n")
    (base / "words.txt").write_text("n0\tzero\nn1\tone\nn2\ttwo\n")
    for wnid in ("n0", "n2"):
        _write_png(base / "train" / wnid / "images" / f"{wnid}_0.JPEG", (64, 64), 5)
    lines = []
    for i, wnid in enumerate(("n2", "n1", "n0")):
        _write_png(base / "val" / "images" / f"val_{i}.JPEG", (64, 64), 40 * i)
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t10\t10")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    splits = load_dataset(_cfg(name="tinyimagenet", root=str(base), normalize=False))
    assert splits.num_classes == 2 and splits.class_names == ("zero", "two")
    assert splits.test_y.tolist() == [1, 0]  # val_0 is n2 -> 1, val_1 (n1) dropped, val_2 is n0 -> 0
    assert "2 of the 3 wnids" in splits.preprocessing["class_subset"]


def test_cub200_keeps_only_classes_that_occur(tmp_path):
    base = tmp_path / "CUB_200_2011"
    folders = {1: "001.Alpha_bird", 2: "002.Beta_bird", 3: "003.Gamma_bird"}
    images = [(1, 1, "1"), (2, 3, "0"), (3, 3, "1"), (4, 1, "0")]  # (id, class id, is_train)
    for ident, cls, _ in images:
        _write_png(base / "images" / folders[cls] / f"{ident}.jpg", (40, 30), 9 * ident)
    (base / "classes.txt").write_text("".join(f"{c} {n}\n" for c, n in folders.items()))
    (base / "images.txt").write_text("".join(f"{i} {folders[c]}/{i}.jpg\n" for i, c, _ in images))
    (base / "image_class_labels.txt").write_text("".join(f"{i} {c}\n" for i, c, _ in images))
    (base / "train_test_split.txt").write_text("".join(f"{i} {t}\n" for i, _, t in images))
    splits = load_dataset(_cfg(name="cub200", root=str(tmp_path)))
    assert splits.num_classes == 2 and splits.class_names == ("Alpha_bird", "Gamma_bird")
    assert splits.train_y.tolist() == [0, 1] and splits.test_y.tolist() == [1, 0]
    assert splits.image_shape == (3, 32, 32)
    assert "2 of 3 classes" in splits.preprocessing["classes_used"]


@pytest.mark.data
def test_cub200_subset(cub_parent):
    for root in (cub_parent, cub_parent / "CUB_200_2011"):
        splits = load_dataset(_cfg(name="cub200", root=str(root), normalize=False))
        assert splits.num_classes == 2 and splits.image_shape == (3, 32, 32)
        assert splits.class_names == ("Black_footed_Albatross", "Laysan_Albatross")
        assert splits.train_x.shape[0] + splits.test_x.shape[0] == 120
        assert set(splits.train_y.tolist()) == set(splits.test_y.tolist()) == {0, 1}
        assert splits.preprocessing["resize"]["size"] == [32, 32]
    smaller = load_dataset(_cfg(name="cub200", root=str(cub_parent), image_size=16))
    assert smaller.image_shape == (3, 16, 16)


def test_loading_never_writes_into_the_loaders_tensors_and_normalizes_as_before():
    """The splits are normalized in place to save memory (ImageNet-1K): a loader's own tensors,
    which may be cached, are left as they were, and the numbers are those of ``(x - mean) / std``."""
    from harness.data.config import RawSplits
    from harness.data.preprocess import Normalize, to_unit_float
    from harness.data.registry import DATASETS, DatasetSource

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(60, 1, 4, 4, generator=gen)
    y = torch.arange(60) % 3
    kept = x.clone()

    class Cached(DatasetSource):
        reads_files = False

        def load(self, cfg, root):
            return RawSplits(x, y, x[:9], y[:9], ("a", "b", "c"))

    with DATASETS.scoped():
        DATASETS.register("cached_floats", Cached)
        data = load_dataset(DataConfig(name="cached_floats", normalize=True, validation_size=6))
    assert torch.equal(x, kept)
    norm = Normalize(torch.tensor(data.preprocessing["normalize"]["mean"]),
                     torch.tensor(data.preprocessing["normalize"]["std"]))
    assert torch.equal(data.test_x, norm(to_unit_float(x[:9])))
