"""Tiny-ImageNet in its original ``tiny-imagenet-200/`` layout (test split = val)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from harness.data.cache import cached
from harness.data.config import DataConfig, RawSplits
from harness.data.decode import raw_from_files
from harness.data.registry import DatasetSource, LayoutMismatch, need, register_dataset, subfolder_with


def _classes(base: Path) -> tuple[list[str], int]:
    """The wnids that have train folders (in wnids.txt order) and how many wnids are listed."""
    listed = [w.strip() for w in (base / "wnids.txt").read_text().splitlines() if w.strip()]
    return [w for w in listed if (base / "train" / w / "images").is_dir()], len(listed)


@register_dataset("tinyimagenet")
class TinyImageNet(DatasetSource):
    """Tiny-ImageNet (original layout), 3x64x64; test split = val"""

    default_root = "data/tiny-imagenet-200"
    layout = ("the original tiny-imagenet-200 layout (wnids.txt, train/<wnid>/images/*.JPEG, "
              "val/images/ + val/val_annotations.txt)")

    def check(self, root: Path, cfg: DataConfig) -> Path:
        base = subfolder_with(root, "tiny-imagenet-200", "wnids.txt")
        need(base / "wnids.txt", root, is_dir=False)
        need(base / "train", root, is_dir=True)
        need(base / "val" / "images", root, is_dir=True)
        need(base / "val" / "val_annotations.txt", root, is_dir=False)
        if not _classes(base)[0]:
            raise LayoutMismatch("has no train/<wnid>/images/ folder for any wnid in wnids.txt")
        return base

    def load(self, cfg: DataConfig, root: Path) -> RawSplits:
        return cached(cfg, root, cfg.image_size, partial(self._build, cfg, root))

    def _build(self, cfg: DataConfig, root: Path) -> RawSplits:
        wnids, listed = _classes(root)
        index = {w: i for i, w in enumerate(wnids)}
        train = [(path, index[w]) for w in wnids for path in sorted((root / "train" / w / "images").glob("*.JPEG"))]
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
            info["class_subset"] = (f"{len(wnids)} of the {listed} wnids in wnids.txt have train folders; "
                                    "using those, in wnids.txt order")
        names = [words.get(w) or w for w in wnids]
        return raw_from_files(cfg, train, test, cfg.image_size, names, info)
