"""The one way ddbench writes a file, and where it caches things (and how a record names a cached file).

:func:`atomic_write` fills a temp file in the target's folder, fsyncs it and renames it over
the target: a crash, a full disk or a kill leaves either the old file or the new one, never
half of one, and the result gets the mode any new file would get (the umask), not mkstemp's
0600. Records, distilled sets, checkpoints and every cache go through it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from harness.core.errors import StorageError

TEMP_SUFFIX = ".tmp"


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` atomically: ``write(f)`` fills a temp file that is fsynced and renamed over
    ``path``; on any failure the temp file goes and ``path`` is intact. An ``OSError`` (a full
    disk, no permission) becomes a one-line :class:`StorageError` naming the file."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, StorageError):
            reason = " ".join((err.strerror or str(err) or type(err).__name__).split())
            raise StorageError(f"cannot write the file ({reason}); nothing partial was left", file=str(path)) from err
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    """``obj`` as JSON at ``path``, atomically; NaN and infinities are refused (``ValueError``)
    before any file or folder is created."""
    data = (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()
    atomic_write(Path(path), lambda f: f.write(data))


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` atomically (see :func:`atomic_write`)."""
    import torch  # here: the light users of this module (records, tables) need no torch

    atomic_write(Path(path), lambda f: torch.save(obj, f))


def stale_temp_files(path: Path) -> list[Path]:
    """Temp files that an interrupted :func:`atomic_write` of ``path`` left behind (a ``kill -9``
    between the temp file's creation and its rename)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    return sorted(path.parent.glob(f".{path.name}.*{TEMP_SUFFIX}"))


def remove_stale_temp_files(*paths: Path) -> list[Path]:
    """Remove what :func:`stale_temp_files` finds for each path (the caller owns the files: it
    holds their lock); returns the files removed."""
    removed = [tmp for p in paths for tmp in stale_temp_files(p)]
    for tmp in removed:
        tmp.unlink(missing_ok=True)
    return removed


def current_umask() -> int:
    """The process's umask, read without changing it where the OS allows (Linux /proc);
    elsewhere set and restored at once (``os.umask`` has no read-only form)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def cache_dir(*parts: str) -> Path:
    """``$DDBENCH_CACHE`` (default ``~/.cache/ddbench``), joined with ``parts``."""
    return Path(os.environ.get("DDBENCH_CACHE", "~/.cache/ddbench")).expanduser().joinpath(*parts)


def cache_name(path: Path) -> str:
    """``path`` as a record names a cache file: relative to the cache dir (``ddranking/x.pt``),
    never this machine's absolute path; a file outside the cache dir by its name alone."""
    path = Path(path)
    try:
        return path.relative_to(cache_dir()).as_posix()
    except ValueError:
        return path.name


def key_digest(key: Any, length: int = 20) -> str:
    """A stable hex digest of a JSON-able cache key (dict order and tuples vs lists do not matter)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:length]


@contextmanager
def cache_lock(path: Path) -> Iterator[None]:
    """Hold ``path``'s lock file while a cache entry is read or computed, so that cells running
    at once (the Ray executor) compute it once and the others wait for it. A cache dir where no
    lock file can be made costs the duplicate work, not an error."""
    from filelock import FileLock  # here: the light users of this module need no filelock

    lock = FileLock(f"{path}.lock")
    try:
        lock.acquire()
    except OSError:
        yield
        return
    try:
        yield
    finally:
        lock.release()
