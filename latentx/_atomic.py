"""Atomic, durable file writes: a reader sees either no file (or the old one) or the whole new
one, and a file that exists has reached the disk.

Every resumable part of latentx relies on this: a run that is killed (or loses power) leaves
only complete results, so "the file exists" can mean "this piece is done". The recipe is the
usual POSIX one (as in e.g. SQLite's and git's lock-file writes): write to a temporary file in
the same folder (same file system, so the rename is atomic), flush and ``os.fsync`` it, rename
it over the target with ``os.replace``, then ``fsync`` the folder so the rename itself is on
disk. On any failure, including KeyboardInterrupt, the temporary file is removed.

The temporary file is created with mode 0o666 filtered by the process umask, like any file
``open(path, "w")`` makes, so results get ordinary permissions (``tempfile.mkstemp`` would
make them 0o600). Its name, ``.<name>.<pid>.<random>.tmp``, is hidden and never matches the
target's, so readers looking for ``result.json`` or ``shard-*.pt`` never see one.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import IO, Any, Iterator, Union

import torch

__all__ = ["atomic_open", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_torch_save",
           "fsync_directory"]

PathLike = Union[str, os.PathLike]


def fsync_directory(folder: PathLike) -> None:
    """``fsync`` a folder so that renames and creations in it are durable. A no-op where
    folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a directory; the rename still happened
        pass
    finally:
        os.close(fd)


def _create_temporary(path: Path) -> tuple[int, Path]:
    # O_EXCL: never write through a file someone else made; 0o666 & ~umask: ordinary permissions.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "wb", *, encoding: str = "utf-8") -> Iterator[IO]:
    """Open a temporary file for writing that becomes ``path`` when the ``with`` block ends
    without an exception (flushed, fsynced, renamed, folder fsynced); on an exception it is
    removed and ``path`` is untouched. ``mode``: ``"wb"`` or ``"w"`` (text, ``encoding``)."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open: mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    fd, tmp = _create_temporary(path)
    try:
        with os.fdopen(fd, mode, **({"encoding": encoding} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_directory(path.parent)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: PathLike, text: str, *, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically and durably."""
    with atomic_open(path, "w", encoding=encoding) as f:
        f.write(text)


def atomic_write_json(path: PathLike, obj: Any, *, indent: int = 1) -> None:
    """Write ``obj`` as JSON (and a final newline) to ``path`` atomically and durably. The
    object is serialised before the file is created, so an unserialisable value raises
    without leaving anything behind."""
    atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    """``torch.save(obj, path)``, atomically and durably (same argument order as torch.save)."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
