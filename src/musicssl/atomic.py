"""Outputs that appear whole or not at all.

Every producer in musicssl (manifest, labels, feature archives, caches, checkpoints) writes to
a hidden sibling named for this process and renames it over the target at the end: a killed
process, a full disk or an exception leaves the previous output untouched and no half-written
file under the real name. The sibling carries the pid, so two processes (array jobs, shards)
writing the same target never write into each other's temporary file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator


def temporary_sibling(target: Path) -> Path:
    """A hidden name beside `target`, unique to this process (same filesystem: rename is atomic)."""
    return target.with_name(f".{target.name}.{os.getpid()}.partial")


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write a file or directory into; on a clean exit it replaces
    `target` in one rename, on an exception it is removed and `target` is left as it was.

        with atomic_path(out) as partial:
            np.save(partial, array)
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = temporary_sibling(target)
    _remove(partial)
    try:
        yield partial
        if partial.is_dir() and target.is_dir():
            # A directory cannot be renamed over a non-empty one: move the old one aside first,
            # so the window without `target` is two renames long, never a copy.
            old = target.with_name(f".{target.name}.{os.getpid()}.old")
            _remove(old)
            target.replace(old)
            partial.replace(target)
            _remove(old)
        else:
            partial.replace(target)
    except BaseException:
        _remove(partial)
        raise


def write_text(target: str | os.PathLike, text: str) -> Path:
    """`Path.write_text` in UTF-8, atomically."""
    with atomic_path(target) as partial:
        partial.write_text(text, encoding="utf-8")
    return Path(target)


def write_bytes(target: str | os.PathLike, data: bytes) -> Path:
    """`Path.write_bytes`, atomically."""
    with atomic_path(target) as partial:
        partial.write_bytes(data)
    return Path(target)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
