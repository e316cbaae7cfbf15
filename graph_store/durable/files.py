"""Files made durable: atomic replacement, fsynced writes, folder fsync, lock files."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

CURRENT = "CURRENT"
# Folders that cannot fsync a directory say so with one of these; there is nothing more to do there.
_NO_DIR_FSYNC = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP}


def fsync_dir(path: str | os.PathLike) -> None:
    """Make the entries of a folder (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _NO_DIR_FSYNC:
            raise
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def temporary_name(path: Path) -> Path:
    """A hidden sibling of ``path`` that no other writer picks (``.NAME.1a2b3c4d.tmp``)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file that replaces ``path`` whole when the block ends, or not at all if it raises.

    The file keeps the mode of the file it replaces (a new one gets the process's default).
    """
    target = Path(path)
    tmp = temporary_name(target)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(FileNotFoundError):
            os.chmod(tmp, stat.S_IMODE(os.stat(target).st_mode))
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)


def write_atomically(path: str | os.PathLike, data: bytes) -> None:
    with atomic_file(path) as fh:
        fh.write(data)


@contextlib.contextmanager
def durable_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A new file written in place and fsynced when the block ends (inside a temporary folder, which
    is renamed as a whole afterwards)."""
    with open(path, "wb") as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


def write_file(path: str | os.PathLike, data: bytes) -> None:
    with durable_file(path) as fh:
        fh.write(data)


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, *, wait: bool = True) -> Iterator[int]:
    """An exclusive ``flock`` on a lock file; the OS releases it when the process dies (even by SIGKILL).

    With ``wait=False`` a lock another process holds raises ``BlockingIOError`` at once.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield fd
    finally:
        os.close(fd)  # closing releases the lock


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """A folder that replaces ``path`` whole when the block ends: written as a hidden sibling, fsynced
    (every file and folder in it), renamed into place, the parent fsynced. A failure leaves ``path``
    as it was and removes the temporary. Run :func:`recover_folder` first under the same lock: a
    crash between the two renames leaves the old copy aside."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        yield tmp
        fsync_tree(tmp)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(target, old)
        os.replace(tmp, target)
        fsync_dir(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def recover_folder(path: str | os.PathLike) -> None:
    """Remove what a crashed :func:`atomic_folder` left: its temporary, and the old copy (put back
    when the crash came between the two renames and ``path`` is gone)."""
    target = Path(path)
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in target.parent.glob(f".{target.name}.old-*"):
        if target.exists():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            os.replace(stale, target)


def fsync_tree(root: str | os.PathLike) -> None:
    """Every file and folder under ``root``, deepest first, then ``root`` itself."""
    for folder, _, names in os.walk(root, topdown=False):
        for name in names:
            fsync_file(os.path.join(folder, name))
        fsync_dir(folder)


def file_digest(path: str | os.PathLike) -> dict:
    """Size and SHA-256 of a file, as manifests record them so that a damaged file is refused on
    load rather than read in part."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return {"bytes": size, "sha256": digest.hexdigest()}
