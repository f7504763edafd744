"""CUB-200-2011 birds in the original ``CUB_200_2011/`` layout, resized to 32x32 by default."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from harness.core.errors import DatasetNotFoundError
from harness.data.cache import cached
from harness.data.config import DataConfig, RawSplits
from harness.data.decode import raw_from_files
from harness.data.registry import DatasetSource, error_line, need, register_dataset, subfolder_with

_CUB_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")
_CUB_DEFAULT_SIZE = 32  # as in the RaT-BPTT paper


def _read_id_table(path: Path) -> dict[int, str]:
    """``<id> <value>`` lines (CUB's index files) as a dict."""
    table = {}
    for line in path.read_text().splitlines():
        ident, _, value = line.strip().partition(" ")
        if ident:
            table[int(ident)] = value.strip()
    return table


@register_dataset("cub200")
class CUB200(DatasetSource):
    """CUB-200-2011 birds (original layout), resized to 3x32x32 by default; classes present only"""

    default_root = "data/CUB_200_2011"
    layout = ("the original CUB_200_2011 layout (images.txt, image_class_labels.txt, "
              "train_test_split.txt, classes.txt, images/<class>/*.jpg)")

    def check(self, root: Path, cfg: DataConfig) -> Path:
        base = subfolder_with(root, "CUB_200_2011", "images.txt")
        for name in _CUB_FILES:
            need(base / name, root, is_dir=False)
        need(base / "images", root, is_dir=True)
        return base

    def load(self, cfg: DataConfig, root: Path) -> RawSplits:
        size = cfg.image_size or _CUB_DEFAULT_SIZE
        return cached(cfg, root, size, partial(self._build, cfg, root, size))

    def _build(self, cfg: DataConfig, root: Path, size: int) -> RawSplits:
        def bad(message: str) -> DatasetNotFoundError:
            return DatasetNotFoundError(f"dataset {cfg.name!r}: root {root}{message}", field="root")

        try:
            images = _read_id_table(root / "images.txt")
            labels = {i: int(c) for i, c in _read_id_table(root / "image_class_labels.txt").items()}
            is_train = {i: v == "1" for i, v in _read_id_table(root / "train_test_split.txt").items()}
            classes = {int(c): n for c, n in _read_id_table(root / "classes.txt").items()}
        except ValueError as err:
            raise bad(f" has a malformed index file: {error_line(err)}") from err
        missing = sorted(i for i in images if i not in labels or i not in is_train)
        if missing:
            raise bad(f": image id {missing[0]} lacks a label or split entry")
        used = {labels[i] for i in images}
        if not used <= classes.keys():
            raise bad(f": class id {min(used - classes.keys())} in image_class_labels.txt is not in classes.txt")
        present = [c for c in classes if c in used]  # classes.txt order
        remap = {c: k for k, c in enumerate(present)}
        samples: dict[bool, list] = {True: [], False: []}
        for i in sorted(images):
            samples[is_train[i]].append((root / "images" / images[i], remap[labels[i]]))
        names = [classes[c].split(".", 1)[-1] for c in present]  # "001.Black_footed_Albatross" -> name
        info = {
            "source": "CUB_200_2011",
            "split": "train_test_split.txt",
            "classes_used": (f"{len(present)} of {len(classes)} classes in classes.txt occur; "
                             f"labels remapped to 0..{len(present) - 1}"),
        }
        return raw_from_files(cfg, samples[True], samples[False], size, names, info)
