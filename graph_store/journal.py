"""The durable write journal of a store folder: writes made since its live version, replayed on load.

    STORE/journal.jsonl   {"format": "llm4tag-graph-journal-1", "version": "v000002"}
                          {"id": "q17", "tags": ["card_arrival"], "text": "...", "vector": [...]}

Every record is an upsert: a new item is inserted with its vector and tags, a known item gets its tags
as deterministic edges. Applying a record twice changes nothing, so a reader may replay from any earlier
point. Appends take an exclusive lock and are fsynced before they return; several processes (the
replicas of one shard) append to and follow the same journal. A save that makes a new version of the
folder starts a fresh journal for it (the old records are in the version).

The journal may live in another folder than the store (``journal_dir``): on a cluster whose nodes
each hold a copy of the store (synced from object storage) the journal must be on storage that every
node shares and that gives appends, ``flock`` and ``fsync`` (NFSv4, EFS, Filestore): object stores
give none of the three. The live version is still read from the store's own folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from graph_store.errors import StoreError

log = logging.getLogger("graph_store.journal")

JOURNAL = "journal.jsonl"
LOCK = "journal.lock"  # a separate file: a reset replaces the journal, and a lock on it would go too
FORMAT = "llm4tag-graph-journal-1"


def _header(version: str) -> bytes:
    return (json.dumps({"format": FORMAT, "version": version}) + "\n").encode()


def record_line(item_id: str, tags: Sequence[str], text: str | None, vector: np.ndarray) -> bytes:
    record = {"id": item_id, "tags": list(tags), "text": text, "vector": [float(x) for x in vector]}
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")


class Journal:
    """Appends to and follows one store folder's journal for the version loaded from it."""

    def __init__(self, folder: str | os.PathLike, version: str, journal_dir: str | os.PathLike | None = None):
        self.root = Path(folder)  # the store folder: its CURRENT names the live version
        where = Path(journal_dir) if journal_dir is not None else self.root
        if journal_dir is not None:
            try:
                where.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create the journal folder {where}: {exc.strerror or exc}") from exc
        self.path = where / JOURNAL
        # A journal outside the store folder is shared by nodes that each hold a copy of the store: a
        # header of another version means this copy is not the one the journal continues, never that
        # the journal is a leftover to be replaced (that would erase other nodes' acknowledged writes).
        self.shared = journal_dir is not None
        self.version = version
        self._offset = 0  # bytes of the file already read (complete lines only)
        self._inode: int | None = None

    def reset(self, version: str) -> None:
        """Start an empty journal for a newly saved version (its records are in that version)."""
        from graph_store.store import _write_atomically

        with self._locked():
            _write_atomically(self.path, _header(version))
        self.version = version
        self._offset, self._inode = 0, None

    def append(self, lines: Sequence[bytes]) -> None:
        """Write the lines whole and fsync them; on failure nothing stays appended."""
        if not lines:
            return
        data = b"".join(lines)
        with self._locked(), _open_journal(self.path) as fd:
            size = os.fstat(fd).st_size
            if size and self.shared and not self._header_matches(fd):
                raise self._foreign_version(self._header_version(fd))
            if size == 0 or not self._header_matches(fd):
                live = _live_version(self.root)
                if live != self.version:
                    raise StoreError(
                        f"{self.root} now holds version {live}, not {self.version} that this "
                        "process loaded (another process saved it); reload the store before writing"
                    )
                # Missing, empty, or left from an older version (a crash between a save and the reset).
                os.ftruncate(fd, 0)
                data = _header(self.version) + data
                size = 0
            else:
                size = self._end_of_last_line(fd, size)
            os.lseek(fd, size, os.SEEK_SET)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except BaseException:
                os.ftruncate(fd, size)
                os.fsync(fd)
                raise

    def read_new(self) -> list[dict]:
        """Records appended since the last call (all of them on the first), complete lines only."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return []
        if stat.st_ino != self._inode or stat.st_size < self._offset:
            # Replaced by a reset, or truncated after a failed append: read again from the start.
            self._offset, self._inode = 0, stat.st_ino
        if stat.st_size == self._offset:
            return []
        with open(self.path, "rb") as fh:
            fh.seek(self._offset)
            data = fh.read(stat.st_size - self._offset)
        end = data.rfind(b"\n") + 1  # a torn or in-flight last line waits for the next call
        records = []
        start_offset = self._offset
        for number, raw in enumerate(data[:end].splitlines()):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except ValueError as exc:
                raise StoreError(f"journal {self.path} is damaged at byte {start_offset}: {exc}") from exc
            if start_offset == 0 and number == 0:
                if record.get("format") != FORMAT:
                    raise StoreError(f"{self.path} is not a graph journal")
                if record.get("version") != self.version and self.shared:
                    raise self._foreign_version(record.get("version"))
                if record.get("version") != self.version:
                    log.warning(
                        "%s belongs to version %s, not the live %s: its records are already in the "
                        "live version (a crash between a save and the journal reset?); ignoring it",
                        self.path,
                        record.get("version"),
                        self.version,
                    )
                    self._offset = stat.st_size
                    return []
                continue
            records.append(record)
        self._offset = start_offset + end
        return records

    def _header(self, fd: int) -> dict:
        os.lseek(fd, 0, os.SEEK_SET)
        first = os.read(fd, 4096).split(b"\n", 1)[0]
        try:
            header = json.loads(first)
        except ValueError:
            return {}
        return header if isinstance(header, dict) else {}

    def _header_matches(self, fd: int) -> bool:
        header = self._header(fd)
        return header.get("format") == FORMAT and header.get("version") == self.version

    def _header_version(self, fd: int) -> str | None:
        return self._header(fd).get("version")

    def _foreign_version(self, other: str | None) -> StoreError:
        return StoreError(
            f"shared journal {self.path} continues store version {other}, but this node's copy of "
            f"{self.root} is version {self.version}: sync the store copy to {other} before serving"
        )

    @staticmethod
    def _end_of_last_line(fd: int, size: int) -> int:
        """Where an append starts: after the last newline, so a torn line left by a crash is cut off."""
        window = min(size, 1 << 20)
        while True:
            os.lseek(fd, size - window, os.SEEK_SET)
            chunk = os.read(fd, window)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                return size - window + cut + 1
            if window == size:
                return 0
            window = min(size, window * 2)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.path.with_name(LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock


@contextlib.contextmanager
def _open_journal(path: Path) -> Iterator[int]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        yield fd
    finally:
        os.close(fd)


def _live_version(folder: Path) -> str | None:
    try:
        return (folder / "CURRENT").read_text().strip()
    except OSError:
        return None
