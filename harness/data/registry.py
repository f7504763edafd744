"""The dataset registry: a dataset is a :class:`DatasetSource` subclass registered by name.

::

    @register_dataset("digits")
    class Digits(DatasetSource):
        \"\"\"scikit-learn's bundled 8x8 digits ...\"\"\"   # the first line is what `ddbench list` shows
        layout = "nothing on disk"
        def load(self, cfg, root): return RawSplits(...)

A source that reads files sets ``default_root``/``layout`` and implements :meth:`check`, a
cheap look at the root (directory listings and index files, never images) that
:func:`harness.data.check_dataset` runs before a suite starts. Built-in sources live in
``harness.data.sources``; another package adds one through the ``ddbench.datasets``
entry-point group, exactly as it would add a method.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from harness.core.registry import Registry, first_doc_line
from harness.data.config import DataConfig, RawSplits


class LayoutMismatch(Exception):
    """Why a root does not fit a layout; turned into a DatasetNotFoundError naming root and layout."""


class DatasetSource:
    """A registered dataset: where its files are and how to read them."""

    name: ClassVar[str]  # set by @register_dataset
    reads_files: ClassVar[bool] = True  # False: the data ship with a package (root must stay unset)
    default_root: ClassVar[str | None] = None
    layout: ClassVar[str] = ""  # what a valid root looks like, for error messages

    def check(self, root: Path, cfg: DataConfig) -> Path:
        """Raise :class:`LayoutMismatch` unless ``root`` has the layout; return the folder to read
        (possibly a subfolder of ``root``). Reads listings and index files only."""
        raise NotImplementedError

    def load(self, cfg: DataConfig, root: Path | None) -> RawSplits:
        """The raw splits (uint8 or floats in [0, 1]); ``root`` is what :meth:`check` returned."""
        raise NotImplementedError

    @classmethod
    def description(cls) -> str:
        return first_doc_line(cls)


def _check_source(name: str, cls: type) -> None:
    if not (isinstance(cls, type) and issubclass(cls, DatasetSource)):
        raise TypeError(f"dataset {name!r}: register a DatasetSource subclass, got {cls!r}")


DATASETS: Registry[type[DatasetSource]] = Registry(
    "dataset", group="ddbench.datasets", builtins="harness.data.sources", check=_check_source)


def register_dataset(name: str):
    """Class decorator: register a :class:`DatasetSource` subclass under ``name``."""
    return DATASETS.class_decorator(name)


def list_datasets() -> dict[str, str]:
    """Registered dataset names and their one-line descriptions, sorted by name."""
    return {name: cls.description() for name, cls in DATASETS.items()}


def need(path: Path, root: Path, *, is_dir: bool) -> None:
    """Raise :class:`LayoutMismatch` unless ``path`` (under ``root``) is a directory / file."""
    if not root.exists():
        raise LayoutMismatch("does not exist")
    if not root.is_dir():
        raise LayoutMismatch("is not a directory")
    ok = path.is_dir() if is_dir else path.is_file()
    if not ok:
        rel = path.relative_to(root).as_posix() + ("/" if is_dir else "")
        raise LayoutMismatch(f"has no {rel}")


def subfolder_with(root: Path, folder: str, marker: str) -> Path:
    """``root/folder`` when ``root`` contains it (and lacks ``marker`` itself), else ``root``."""
    nested = root / folder
    return nested if not (root / marker).exists() and (nested / marker).exists() else root


def error_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__
