"""ImageNet-1K sources (``imagenet``: the ImageFolder resized on load; ``imagenet64``: the
downsampled npz batches) on small generated sets in exactly the real layouts, and the paper
suite. The real data cannot be fetched here: the npz rows are built as the dataset authors'
``image2numpy_imagenet_train.py`` builds them, and the resized pixels are checked against
torchvision's own ``ImageFolder`` + ``Resize((64, 64))``, the official code's pipeline.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("harness") is None:  # run from a plain checkout, not installed
    sys.path.insert(0, str(REPO))

from harness.core.errors import DatasetNotFoundError  # noqa: E402
from harness.data import DATASETS, DataConfig, check_dataset, list_datasets, load_dataset  # noqa: E402
from harness.data.sources import imagenet as source  # noqa: E402
from harness.run.suite import load_suite  # noqa: E402

WNIDS = ("n01440764", "n01443537", "n02119789")
SIZES = ((80, 60), (50, 70), (64, 64), (200, 150))  # (width, height) of the generated train images


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DDBENCH_CACHE", str(tmp_path / "cache"))


def _raw(name: str, root: Path, **kw):
    """The source's own RawSplits (uint8), through the same check as load_dataset."""
    cfg = DataConfig(name=name, root=str(root), **kw)
    src = DATASETS.get(name)()
    return src.load(cfg, src.check(root.resolve(), cfg))


def _one_line_error(name: str, root: Path) -> DatasetNotFoundError:
    with pytest.raises(DatasetNotFoundError) as info:
        check_dataset(DataConfig(name=name, root=str(root)))
    err = info.value
    assert err.field == "root" and "\n" not in err.message and str(root.resolve()) in err.message
    return err


# --- imagenet64: the downsampled npz batches --------------------------------------------------


def _row(image: np.ndarray) -> np.ndarray:
    """One data row as the authors' script builds it: the R, then G, then B plane, flattened."""
    return np.array(list(image[:, :, 0].flatten()) + list(image[:, :, 1].flatten()) + list(image[:, :, 2].flatten()),
                    dtype=np.uint8)


def _write_imagenet64(root: Path, labels=(1, 2, 3), per_batch: int = 2, nested: bool = False, compressed=False,
                      seed: int = 0) -> dict:
    """10 train batches and val_data.npz; returns the HWC images and 1-based labels written."""
    rng = np.random.default_rng(seed)
    save = np.savez_compressed if compressed else np.savez
    written = {"train": ([], []), "val": ([], [])}
    for i in range(1, 12):
        split = "train" if i <= 10 else "val"
        images = rng.integers(0, 256, (per_batch, 64, 64, 3), dtype=np.uint8)
        ys = [labels[(i + j) % len(labels)] for j in range(per_batch)]
        folder = root
        if nested:
            folder = root / ("Imagenet64_val_npz" if split == "val" else f"Imagenet64_train_part{1 + (i > 5)}_npz")
        folder.mkdir(parents=True, exist_ok=True)
        name = f"train_data_batch_{i}.npz" if split == "train" else "val_data.npz"
        extra = {"mean": np.zeros(12288)} if split == "train" else {}
        save(folder / name, data=np.stack([_row(im) for im in images]), labels=ys, **extra)
        written[split][0].extend(images)
        written[split][1].extend(ys)
    return written


@pytest.mark.parametrize("nested, compressed", [(False, False), (True, True)])
def test_imagenet64_reads_planar_rows_in_batch_order(tmp_path, nested, compressed):
    written = _write_imagenet64(tmp_path, nested=nested, compressed=compressed)
    raw = _raw("imagenet64", tmp_path)
    for x, y, split in ((raw.train_x, raw.train_y, "train"), (raw.test_x, raw.test_y, "val")):
        images, labels = written[split]
        assert x.dtype == torch.uint8 and x.shape == (len(images), 3, 64, 64)
        assert torch.equal(x, torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2))
        assert y.tolist() == [label - 1 for label in labels]
    assert raw.class_names == ("1", "2", "3")
    splits = load_dataset(DataConfig(name="imagenet64", root=str(tmp_path), normalize=False))
    assert splits.image_shape == (3, 64, 64) and splits.num_classes == 3
    assert torch.equal((splits.train_x * 255).round().to(torch.uint8), raw.train_x)
    assert "box" in splits.preprocessing["downsampling"] and splits.preprocessing["resize"] is None


def test_imagenet64_remaps_a_label_subset_and_names_classes_from_map_clsloc(tmp_path):
    _write_imagenet64(tmp_path, labels=(3, 7, 10))
    (tmp_path / "map_clsloc.txt").write_text("\n".join(f"n0{k:07d} {k} class_{k}_name" for k in range(1, 11)) + "\n")
    raw = _raw("imagenet64", tmp_path)
    assert sorted(set(raw.train_y.tolist())) == [0, 1, 2]
    assert raw.class_names == ("class 3 name", "class 7 name", "class 10 name")
    assert "remapped" in raw.info["labels"] and raw.info["class_names"] == "from map_clsloc.txt"


def test_imagenet64_check_reads_headers_only(tmp_path, monkeypatch):
    _write_imagenet64(tmp_path)
    monkeypatch.setattr(source, "_read_npz_into", lambda *a: pytest.fail("check read pixels"))
    check_dataset(DataConfig(name="imagenet64", root=str(tmp_path)))


def test_imagenet64_missing_root_and_files(tmp_path):
    err = _one_line_error("imagenet64", tmp_path / "nowhere")
    assert "does not exist" in err.message and "train_data_batch_1.npz" in err.message and "val_data.npz" in err.message
    _write_imagenet64(tmp_path)
    (tmp_path / "train_data_batch_6.npz").unlink()
    assert "has no train_data_batch_6.npz" in _one_line_error("imagenet64", tmp_path).message
    (tmp_path / "train_data_batch_6").write_bytes(b"a pickle")
    assert "pickled download" in _one_line_error("imagenet64", tmp_path).message


def _rewrite(path: Path, **arrays) -> None:
    with np.load(path) as old:
        content = {k: old[k] for k in old.files}
    content.update(arrays)
    np.savez(path, **{k: v for k, v in content.items() if v is not None})


@pytest.mark.parametrize("edit, expected", [
    (lambda p: _rewrite(p, data=np.zeros((2, 3072), np.uint8)), "not uint8 [N, 12288] (64x64 images)"),
    (lambda p: _rewrite(p, data=np.zeros((2, 12288), np.float32)), "not uint8 [N, 12288]"),
    (lambda p: _rewrite(p, labels=[1, 2, 3]), "labels int64 [3], not 2 integers"),
    (lambda p: _rewrite(p, labels=None), "without the array 'labels'"),
    (lambda p: p.write_bytes(b"not a zip"), "not a readable npz archive"),
    (lambda p: (p.parent / "sub").mkdir() or (p.parent / "sub" / p.name).write_bytes(p.read_bytes()), "twice"),
])
def test_imagenet64_malformed_files_are_named(tmp_path, edit, expected):
    _write_imagenet64(tmp_path)
    edit(tmp_path / "train_data_batch_4.npz")
    err = _one_line_error("imagenet64", tmp_path)
    assert expected in err.message and "train_data_batch_4.npz" in err.message


def test_imagenet64_zero_based_and_truncated_files_fail_at_load(tmp_path):
    _write_imagenet64(tmp_path)
    _rewrite(tmp_path / "train_data_batch_7.npz", labels=[0, 1])
    with pytest.raises(DatasetNotFoundError, match=r"train_data_batch_7.npz with label 0 \(labels are 1-based\)"):
        load_dataset(DataConfig(name="imagenet64", root=str(tmp_path)))
    _write_imagenet64(tmp_path)
    path = tmp_path / "train_data_batch_2.npz"
    blob = bytearray(path.read_bytes())
    start = blob.find(b"\x93NUMPY")
    blob[start + 200 : start + 300] = bytes(100)  # corrupt pixels: the zip CRC check fails on reading
    path.write_bytes(bytes(blob))
    check_dataset(DataConfig(name="imagenet64", root=str(tmp_path)))  # headers still fine
    with pytest.raises(DatasetNotFoundError, match="train_data_batch_2.npz, which cannot be read"):
        load_dataset(DataConfig(name="imagenet64", root=str(tmp_path)))


# --- imagenet: the ImageFolder, resized on load ----------------------------------------------


def _image(rng, size, mode="RGB") -> Image.Image:
    w, h = size
    base = rng.integers(0, 256, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)
    im = Image.fromarray(base).resize((w, h), Image.Resampling.BICUBIC)  # smooth, so JPEG keeps detail
    return im.convert(mode)


def _write_imagenet(root: Path, seed: int = 0) -> Path:
    """3 classes, train images of several sizes and modes (grayscale, CMYK, a PNG named .JPEG),
    val sorted into class folders plus one folder no train class has."""
    rng = np.random.default_rng(seed)
    for c, wnid in enumerate(WNIDS):
        for i, size in enumerate(SIZES):
            path = root / "train" / wnid / f"{wnid}_{i}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            mode = {(0, 1): "L", (1, 2): "CMYK"}.get((c, i), "RGB")
            _image(rng, size, mode).save(path, format="PNG" if (c, i) == (2, 3) else "JPEG", quality=90)
        for i in range(2):
            path = root / "val" / wnid / f"ILSVRC2012_val_{c * 2 + i:08d}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            _image(rng, (120, 90)).save(path, quality=90)
    (root / "val" / "n09999999").mkdir()
    _image(rng, (30, 30)).save(root / "val" / "n09999999" / "x.JPEG")
    (root / "train" / WNIDS[0] / "notes.txt").write_text("not an image")
    return root


@pytest.mark.parametrize("size", [None, 16])
def test_imagenet_matches_torchvision_imagefolder_and_resize(tmp_path, size):
    from torchvision import transforms
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS, default_loader

    root = _write_imagenet(tmp_path)
    raw = _raw("imagenet", root, image_size=size)
    side = size or 64
    resize = transforms.Compose([transforms.Resize((side, side)), transforms.PILToTensor()])
    train = ImageFolder(str(root / "train"), transform=resize)
    assert raw.train_x.shape == (len(train), 3, side, side) and raw.train_y.tolist() == train.targets
    for i in range(len(train)):
        assert torch.equal(raw.train_x[i], train[i][0]), train.samples[i][0]
    val = ImageFolder.make_dataset(str(root / "val"), train.class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    assert raw.test_y.tolist() == [y for _, y in val]
    for i, (path, _) in enumerate(val):
        assert torch.equal(raw.test_x[i], resize(default_loader(path)))
    assert raw.class_names == WNIDS and "n09999999" in raw.info["val_folders_skipped"]
    assert raw.info["resize"]["size"] == [side, side]


def test_imagenet_names_classes_from_a_synset_mapping(tmp_path):
    root = _write_imagenet(tmp_path)
    mapping = "n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n"
    (root / "LOC_synset_mapping.txt").write_text(mapping)
    splits = load_dataset(DataConfig(name="imagenet", root=str(root), normalize=False))
    assert splits.class_names == ("tench, Tinca tinca", "goldfish, Carassius auratus", "n02119789")
    assert splits.image_shape == (3, 64, 64) and splits.preprocessing["class_names"] == "from LOC_synset_mapping.txt"


def test_imagenet_is_decoded_once_then_served_from_the_cache(tmp_path, monkeypatch):
    root = _write_imagenet(tmp_path / "imagenet")
    calls = []
    decode = source._decode_image
    monkeypatch.setattr(source, "_decode_image", lambda *a: calls.append(a[0]) or decode(*a))
    cfg = DataConfig(name="imagenet", root=str(root), normalize=False)
    first = load_dataset(cfg)
    n = first.train_x.shape[0] + first.test_x.shape[0]
    assert len(calls) == n == len(set(calls)) == 12 + 6
    assert len(list((tmp_path / "cache").glob("imagenet-*.pt"))) == 1
    second = load_dataset(cfg)
    assert len(calls) == n  # no image decoded again
    assert torch.equal(first.train_x, second.train_x) and torch.equal(first.test_y, second.test_y)
    assert second.class_names == first.class_names
    load_dataset(DataConfig(name="imagenet", root=str(root), image_size=64))  # the default size: the same entry
    assert len(calls) == n
    load_dataset(DataConfig(name="imagenet", root=str(root), image_size=32))
    assert len(calls) == 2 * n


def test_imagenet_check_reads_no_images(tmp_path, monkeypatch):
    root = _write_imagenet(tmp_path)
    monkeypatch.setattr(source, "_decode_image", lambda *a: pytest.fail("check decoded an image"))
    check_dataset(DataConfig(name="imagenet", root=str(root)))


def test_imagenet_layout_errors(tmp_path):
    err = _one_line_error("imagenet", tmp_path / "nowhere")
    assert "does not exist" in err.message and "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG" in err.message
    root = _write_imagenet(tmp_path / "a")
    for wnid in (*WNIDS, "n09999999"):  # the val/ of the ILSVRC tar: images directly in val/
        for image in (root / "val" / wnid).iterdir():
            image.rename(root / "val" / image.name)
        (root / "val" / wnid).rmdir()
    assert "not sorted into val/<wnid>/ folders" in _one_line_error("imagenet", root).message
    (tmp_path / "b" / "train").mkdir(parents=True)
    (tmp_path / "b" / "val").mkdir()
    assert "has no class folders in train/" in _one_line_error("imagenet", tmp_path / "b").message
    (tmp_path / "b" / "train" / "n1").mkdir()
    (tmp_path / "b" / "val" / "n2").mkdir()
    assert "no val/ folder named like a train/ class" in _one_line_error("imagenet", tmp_path / "b").message


def test_imagenet_unreadable_image_and_empty_class_are_named(tmp_path):
    root = _write_imagenet(tmp_path)
    bad = root / "train" / WNIDS[1] / f"{WNIDS[1]}_2.JPEG"
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(DatasetNotFoundError, match=f"cannot read image {bad}"):
        load_dataset(DataConfig(name="imagenet", root=str(root)))
    for image in (root / "train" / WNIDS[1]).iterdir():
        image.unlink()
    with pytest.raises(DatasetNotFoundError, match=f"has no images in train/{WNIDS[1]}/"):
        load_dataset(DataConfig(name="imagenet", root=str(root)))


def test_image_extensions_are_torchvisions():
    from torchvision.datasets.folder import IMG_EXTENSIONS

    assert set(source.IMAGE_EXTENSIONS) == set(IMG_EXTENSIONS)


# --- registry and the paper suite ------------------------------------------------------------


def test_both_sources_are_listed():
    names = list_datasets()
    assert "imagenet" in names and "imagenet64" in names


def test_the_paper_suite_validates(tmp_path):
    path = REPO / "suites" / "imagenet1k.toml"
    suite = load_suite(path, check_data=False)
    cells = {(c.method_label, c.ipc): c for c in suite.cells()}
    assert {c.dataset.name for c in cells.values()} == {"imagenet"}
    assert set(cells) >= {("rat_bptt", 1), ("rat_bptt", 10), ("at_bptt", 1), ("at_bptt", 10)}
    rat1, rat10, at10 = cells["rat_bptt", 1], cells["rat_bptt", 10], cells["at_bptt", 10]
    assert rat1.dataset.image_size == 64 and not rat1.dataset.zca
    assert (rat1.method_config.unroll, rat1.method_config.window, rat1.method_config.min_unroll) == (280, 80, 280)
    assert rat10.method_config.min_unroll is None  # RaT-BPTT's random window where no command fixes it
    assert (at10.method_config.unroll, at10.method_config.window, at10.method_config.window_delta) == (280, 80, 30)
    assert (at10.method_config.real_batch, at10.method_config.classes_per_step) == (1500, 50)
    assert (at10.eval.protocol, at10.eval.batch_per_class, at10.eval.classes_per_step) == ("ratbptt", 1, 50)
    assert rat1.model.width == 128 and rat1.model.depth is None  # 4, sized from 64x64: the official convnet4
    root = _write_imagenet(tmp_path / "imagenet")
    load_suite(path, overrides=[f"data.imagenet.root={root}"])  # check_data passes on the layout
    with pytest.raises(DatasetNotFoundError):
        load_suite(path, overrides=[f"data.imagenet.root={tmp_path / 'nowhere'}"])
