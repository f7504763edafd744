"""ImageNet-1K (ILSVRC-2012) at 64x64, as the RaT-BPTT and AT-BPTT code distils it, from two layouts.

``imagenet``: the full ImageNet as an ImageFolder (train/<wnid>/*.JPEG, val/<wnid>/*.JPEG: the
layout torchvision's ``ImageNet`` leaves after it sorts val/ into class folders). Each image is
resized on load exactly as the official code does (``framework/config.py`` of both repositories,
dataset ``imagenet``: ``ImageFolder`` + ``transforms.Resize((64, 64))``): decoded whole by PIL,
converted to RGB, squashed to ``image_size`` x ``image_size`` (default 64; aspect ratio not kept,
no crop) with PIL's bilinear filter, which widens with the scale factor (antialiased). The
pixels are bit-identical to torchvision's transform (tested). Unlike ``imagefolder`` there is no
JPEG draft-mode decoding (it would change the pixels). The 1.33M images are decoded once, in
chunks by a thread pool straight into one preallocated uint8 tensor (15.7 GB for train at
64x64: no list of decoded images, no second copy), and kept in the decoded-tensor cache.
Class indices are torchvision's (sorted wnids), so class k is the official code's class k.

``imagenet64``: the downsampled ImageNet of Chrabaszcz, Loshchilov and Hutter (2017,
arXiv 1707.08819; image-net.org's ``Imagenet64_train_part1_npz.zip``, ``..._part2_npz.zip``,
``Imagenet64_val_npz.zip``): ``train_data_batch_1.npz`` .. ``train_data_batch_10.npz`` and
``val_data.npz``, each with ``data`` (N, 12288) uint8, one image per row as its R, G and B
planes (64 x 64 each, row-major: the rows are CHW already), ``labels`` 1..1000 (the order of
the authors' ``map_clsloc.txt``, not sorted wnids) and, in the train files, ``mean``
(ignored). *Not the official code's pixels*: the authors resized with a box filter, the
official code with bilinear. The files are read straight into one preallocated tensor (no
``np.load`` copy of a 1.5 GB batch), and not cached (they are as fast to read as a cache file).
Only the npz downloads are read; the pickled ones (no ``.npz``) are refused with a hint.

Both: the test split is ImageNet's validation set (50 per class), as in the official code.
Labels are remapped to 0..K-1 over the classes the train split has (all 1000 for the real
data). Class names come from ``LOC_synset_mapping.txt`` or ``words.txt`` (wnid, then words) or
``map_clsloc.txt`` (wnid, 1-based index, name) in the root when one is there; otherwise wnids
(``imagenet``) or the files' 1-based labels (``imagenet64``, which needs ``map_clsloc.txt`` to
know its wnids).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import torch
from numpy.lib import format as npy_format

from harness.core.errors import DatasetNotFoundError
from harness.core.progress import progress_bar
from harness.data.cache import cached
from harness.data.config import DataConfig, RawSplits
from harness.data.registry import DatasetSource, LayoutMismatch, error_line, need, register_dataset

IMAGENET_SIZE = 64  # the official code's transforms.Resize((64, 64))
# torchvision.datasets.folder.IMG_EXTENSIONS, matched case-insensitively as ImageFolder does.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_DECODE_CHUNK = 256  # images per thread-pool task
_READ_CHUNK = 1 << 24  # bytes per read from an npz member
_NAME_FILES = ("LOC_synset_mapping.txt", "words.txt", "map_clsloc.txt")

_IMAGENET_LAYOUT = ("the ILSVRC-2012 ImageFolder (torchvision's layout after its val reorganization): "
                    "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG; optional LOC_synset_mapping.txt, words.txt "
                    "or map_clsloc.txt for class names")
_TRAIN_BATCHES = tuple(f"train_data_batch_{i}.npz" for i in range(1, 11))
_VAL_FILE = "val_data.npz"
_IMAGENET64_LAYOUT = ("the downsampled ImageNet 64x64 npz files (Chrabaszcz et al. 2017, image-net.org "
                      "Imagenet64_*_npz.zip): train_data_batch_1.npz .. train_data_batch_10.npz and val_data.npz, "
                      "each with data (N, 12288) uint8 and 1-based labels, in root or its subfolders; optional "
                      "map_clsloc.txt for class names")


# --- class names ----------------------------------------------------------------------------


def _name_file(root: Path) -> Path | None:
    return next((root / n for n in _NAME_FILES if (root / n).is_file()), None)


def read_synset_names(path: Path) -> dict[str, tuple[int | None, str]]:
    """wnid -> (1-based index or None, words) from LOC_synset_mapping.txt / words.txt
    ("wnid words") or map_clsloc.txt ("wnid index name_with_underscores")."""
    table: dict[str, tuple[int | None, str]] = {}
    indexed = path.name == "map_clsloc.txt"
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=2 if indexed else 1)
        if indexed:
            if len(parts) != 3 or not parts[1].isdigit():
                raise LayoutMismatch(f"has a malformed {path.name} (line {number}: expected 'wnid index name')")
            table[parts[0]] = (int(parts[1]), parts[2].replace("_", " "))
        else:
            table[parts[0]] = (None, parts[1].strip() if len(parts) > 1 else parts[0])
    return table


# --- the full ImageNet as an ImageFolder -----------------------------------------------------


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _class_dirs(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir())


def _images_under(folder: Path) -> list[str]:
    """Image files anywhere under ``folder``, in torchvision's ``make_dataset`` order."""
    return [os.path.join(dirpath, f) for dirpath, _, files in sorted(os.walk(folder, followlinks=True))
            for f in sorted(files) if _is_image(f)]


def _decode_image(path: str, size: int) -> np.ndarray:
    """HWC uint8: torchvision's ``pil_loader`` then ``Resize((size, size))`` on the PIL image."""
    from PIL import Image

    with open(path, "rb") as f:
        im = Image.open(f).convert("RGB")
    return np.asarray(im.resize((size, size), Image.Resampling.BILINEAR))


def decode_into(out: torch.Tensor, paths: Sequence[str], size: int, dataset: str) -> None:
    """Decode ``paths`` into the preallocated uint8 ``out`` [N, 3, size, size], in chunks on a
    thread pool (PIL releases the GIL while decoding and resizing); each image is written to its
    row as it is decoded, so nothing but ``out`` grows with N."""
    from PIL import Image

    rows = out.numpy()

    def work(start: int) -> int:
        stop = min(start + _DECODE_CHUNK, len(paths))
        for i in range(start, stop):
            try:
                rows[i] = _decode_image(paths[i], size).transpose(2, 0, 1)
            except (OSError, ValueError, Image.DecompressionBombError) as err:
                raise DatasetNotFoundError(f"dataset {dataset!r}: cannot read image {paths[i]}: {error_line(err)}",
                                           field="root") from err
        return stop - start

    pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
    try:
        done = pool.map(work, range(0, len(paths), _DECODE_CHUNK))
        for _ in progress_bar(done, total=-(-len(paths) // _DECODE_CHUNK), unit="chunk",
                              desc=f"{dataset}: decoding {len(paths)} images to {size}x{size}"):
            pass
    finally:
        pool.shutdown(cancel_futures=True)  # on an error, skip the chunks not started yet


@register_dataset("imagenet")
class ImageNet(DatasetSource):
    """ImageNet-1K (ILSVRC-2012 ImageFolder, train/ + val/), resized on load to 3x64x64 as the official code"""

    default_root = "data/imagenet"
    layout = _IMAGENET_LAYOUT

    def check(self, root: Path, cfg: DataConfig) -> Path:
        need(root / "train", root, is_dir=True)
        need(root / "val", root, is_dir=True)
        classes = _class_dirs(root / "train")
        if not classes:
            raise LayoutMismatch("has no class folders in train/")
        val = _class_dirs(root / "val")
        if not val:
            if any(e.is_file() and _is_image(e.name) for e in os.scandir(root / "val")):
                raise LayoutMismatch("has its val/ images directly in val/, not sorted into val/<wnid>/ folders "
                                     "(sort them as torchvision.datasets.ImageNet or the devkit's valprep.sh does)")
            raise LayoutMismatch("has no class folders in val/")
        if not set(val) & set(classes):
            raise LayoutMismatch("has no val/ folder named like a train/ class folder")
        if (names := _name_file(root)) is not None:
            read_synset_names(names)
        return root

    def load(self, cfg: DataConfig, root: Path) -> RawSplits:
        size = cfg.image_size or IMAGENET_SIZE
        return cached(cfg, root, size, partial(self._build, cfg, root, size))

    def _build(self, cfg: DataConfig, root: Path, size: int) -> RawSplits:
        def fail(why: str) -> DatasetNotFoundError:
            return DatasetNotFoundError(f"dataset {cfg.name!r}: root {root} {why}; expected {_IMAGENET_LAYOUT}",
                                        field="root")

        wnids = _class_dirs(root / "train")
        train: list[str] = []
        train_y: list[int] = []
        for k, wnid in enumerate(wnids):
            files = _images_under(root / "train" / wnid)
            if not files:
                raise fail(f"has no images in train/{wnid}/")
            train += files
            train_y += [k] * len(files)
        index = {w: k for k, w in enumerate(wnids)}
        val_dirs = _class_dirs(root / "val")
        test: list[str] = []
        test_y: list[int] = []
        for wnid in val_dirs:
            if wnid in index:
                files = _images_under(root / "val" / wnid)
                test += files
                test_y += [index[wnid]] * len(files)
        if not test:
            raise fail("has no images in val/ folders named like train/'s")
        info = {"source": "ImageNet ImageFolder (train/<wnid>/, val/<wnid>/)", "test_split": "val",
                "resize": {"size": [size, size], "method": "PIL bilinear of the whole decoded image, aspect ratio not "
                           "kept (torchvision Resize((size, size)) as the official config.py)"}}
        extra = sorted(set(val_dirs) - set(index))
        if extra:
            info["val_folders_skipped"] = f"{len(extra)} val/ folders without a train/ class, e.g. {extra[0]}"
        if len(wnids) != 1000:
            info["class_subset"] = f"{len(wnids)} class folders in train/ (ImageNet-1K has 1000)"
        names, info["class_names"] = _wnid_names(root, wnids)
        train_x = torch.empty(len(train), 3, size, size, dtype=torch.uint8)
        decode_into(train_x, train, size, cfg.name)
        test_x = torch.empty(len(test), 3, size, size, dtype=torch.uint8)
        decode_into(test_x, test, size, cfg.name)
        return RawSplits(train_x, torch.tensor(train_y), test_x, torch.tensor(test_y), tuple(names), info)


def _wnid_names(root: Path, wnids: Sequence[str]) -> tuple[list[str], str]:
    path = _name_file(root)
    if path is None:
        return list(wnids), "wnids (no LOC_synset_mapping.txt, words.txt or map_clsloc.txt in root)"
    table = read_synset_names(path)
    return [table[w][1] if w in table else w for w in wnids], f"from {path.name}"


# --- the downsampled ImageNet (npz batches) --------------------------------------------------


def _find_npz(root: Path) -> dict[str, Path]:
    """Each expected file in root or in one of its subfolders (exactly one place)."""
    if not root.exists():
        raise LayoutMismatch("does not exist")
    if not root.is_dir():
        raise LayoutMismatch("is not a directory")
    places = [root] + [root / d for d in _class_dirs(root)]
    found = {}
    for name in (*_TRAIN_BATCHES, _VAL_FILE):
        hits = [p / name for p in places if (p / name).is_file()]
        if not hits:
            pickled = [p for p in places if (p / name[: -len(".npz")]).is_file()]
            if pickled:
                raise LayoutMismatch(f"has {name[:-4]} (the pickled download), not {name}: use the *_npz.zip downloads")
            raise LayoutMismatch(f"has no {name} (in it or a subfolder)")
        if len(hits) > 1:
            raise LayoutMismatch(f"has {name} twice: {hits[0].parent.name}/ and {hits[1].parent.name}/")
        found[name] = hits[0]
    return found


def _open_member(archive: zipfile.ZipFile, key: str, path: Path):
    """The open ``key.npy`` member of an npz, positioned after its header, and (shape, dtype)."""
    try:
        member = archive.open(f"{key}.npy")
    except KeyError:
        raise LayoutMismatch(f"has {path.name} without the array {key!r}") from None
    try:
        version = npy_format.read_magic(member)
        read_header = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}[version]
        shape, fortran, dtype = read_header(member)
    except (ValueError, KeyError) as err:
        member.close()
        raise LayoutMismatch(f"has {path.name} with a malformed {key}.npy ({error_line(err)})") from None
    if fortran and len(shape) > 1:
        member.close()
        raise LayoutMismatch(f"has {path.name} with a Fortran-ordered {key} array")
    return member, shape, dtype


def _npz_rows(path: Path) -> int:
    """The number of images in one npz file, from its array headers (no pixels read)."""
    try:
        with zipfile.ZipFile(path) as archive:
            data, shape, dtype = _open_member(archive, "data", path)
            data.close()
            labels, lshape, ldtype = _open_member(archive, "labels", path)
            labels.close()
    except (zipfile.BadZipFile, OSError) as err:
        raise LayoutMismatch(f"has {path.name}, which is not a readable npz archive ({error_line(err)})") from None
    row = 3 * IMAGENET_SIZE * IMAGENET_SIZE
    if dtype != np.uint8 or len(shape) != 2 or shape[1] != row:
        raise LayoutMismatch(f"has {path.name} with data {dtype} {list(shape)}, not uint8 [N, {row}] (64x64 images)")
    if ldtype.kind not in "iu" or lshape != (shape[0],):
        raise LayoutMismatch(f"has {path.name} with labels {ldtype} {list(lshape)}, not {shape[0]} integers")
    return shape[0]


def _read_npz_into(path: Path, images: torch.Tensor, labels: torch.Tensor) -> None:
    """``data`` straight into ``images`` [n, 3, 64, 64] (its rows are CHW planes), ``labels`` as stored."""
    try:
        with zipfile.ZipFile(path) as archive:
            member, _, _ = _open_member(archive, "data", path)
            with member:
                buffer = memoryview(images.numpy()).cast("B")
                got = 0
                while got < len(buffer):
                    n = member.readinto(buffer[got : got + _READ_CHUNK])
                    if not n:
                        raise LayoutMismatch(f"has a truncated {path.name}")
                    got += n
            with archive.open("labels.npy") as member:
                labels.copy_(torch.from_numpy(npy_format.read_array(member, allow_pickle=False).astype(np.int64)))
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:  # a corrupt member (CRC, zlib, size)
        raise LayoutMismatch(f"has {path.name}, which cannot be read ({error_line(err)})") from None
    if labels.numel() and int(labels.min()) < 1:
        raise LayoutMismatch(f"has {path.name} with label {int(labels.min())} (labels are 1-based)")


@register_dataset("imagenet64")
class ImageNet64(DatasetSource):
    """downsampled ImageNet 64x64 (Chrabaszcz et al. 2017, npz batches), 3x64x64, 1000 classes; test split = val"""

    default_root = "data/imagenet64"
    layout = _IMAGENET64_LAYOUT

    def check(self, root: Path, cfg: DataConfig) -> Path:
        for path in _find_npz(root).values():
            _npz_rows(path)
        if (root / "map_clsloc.txt").is_file():
            read_synset_names(root / "map_clsloc.txt")
        return root

    def load(self, cfg: DataConfig, root: Path) -> RawSplits:
        try:
            return self._load(cfg, root)
        except LayoutMismatch as why:
            raise DatasetNotFoundError(f"dataset {cfg.name!r}: root {root} {why}; expected {_IMAGENET64_LAYOUT}",
                                       field="root") from None

    def _load(self, cfg: DataConfig, root: Path) -> RawSplits:
        files = _find_npz(root)
        train_x, train_y = _read_split([files[n] for n in _TRAIN_BATCHES], cfg.name)
        test_x, test_y = _read_split([files[_VAL_FILE]], cfg.name)
        present = torch.unique(train_y)  # sorted original labels
        info = {"source": "downsampled ImageNet 64x64 (Chrabaszcz et al. 2017), npz batches",
                "test_split": "val_data.npz",
                "downsampling": "box filter, by the dataset's authors (the official distillation code: bilinear)",
                "labels": "the files' 1-based labels minus 1 (map_clsloc.txt order)"}
        if not torch.equal(present, torch.arange(1, len(present) + 1)):
            info["labels"] = (f"the {len(present)} labels the train files have, in ascending order, "
                              f"remapped to 0..{len(present) - 1}")
        keep = torch.isin(test_y, present)
        if not bool(keep.all()):
            info["test_dropped"] = f"{int((~keep).sum())} val images of labels no train file has"
            test_x, test_y = test_x[keep], test_y[keep]
        names = [str(int(k)) for k in present]
        info["class_names"] = "the files' 1-based labels (no map_clsloc.txt in root)"
        if (root / "map_clsloc.txt").is_file():
            by_index = {i: words for i, words in read_synset_names(root / "map_clsloc.txt").values()}
            names = [by_index.get(int(k), str(int(k))) for k in present]
            info["class_names"] = "from map_clsloc.txt"
        remap = lambda y: torch.searchsorted(present, y)  # noqa: E731
        return RawSplits(train_x, remap(train_y), test_x, remap(test_y), tuple(names), info)


def _read_split(paths: Sequence[Path], dataset: str) -> tuple[torch.Tensor, torch.Tensor]:
    counts = [_npz_rows(p) for p in paths]
    images = torch.empty(sum(counts), 3, IMAGENET_SIZE, IMAGENET_SIZE, dtype=torch.uint8)
    labels = torch.empty(sum(counts), dtype=torch.int64)
    start = 0
    for path, n in progress_bar(list(zip(paths, counts)), desc=f"{dataset}: reading npz files", unit="file"):
        _read_npz_into(path, images[start : start + n], labels[start : start + n])
        start += n
    return images, labels
