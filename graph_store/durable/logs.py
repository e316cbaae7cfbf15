"""Append logs shared by processes, and the log of the live version of a versioned folder."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graph_store.durable.files import write_atomically

log = logging.getLogger("graph_store.durable")


class AppendLog:
    """A JSON-lines file appended to by several processes (one record a line, no embedded newlines).

    :meth:`locked` is re-entrant within a process; :meth:`append` and :meth:`replace` must run inside it.
    """

    def __init__(self, path: str | os.PathLike, lock_path: str | os.PathLike | None = None):
        self.path = Path(path)
        self.lock_path = (
            Path(lock_path) if lock_path is not None else self.path.with_name(self.path.name + ".lock")
        )
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._lock_fd: int | None = None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with self._thread_lock:
            if self._depth == 0:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except BaseException:
                    os.close(fd)
                    raise
                self._lock_fd = fd
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._lock_fd is not None:
                    os.close(self._lock_fd)  # closing releases the lock
                    self._lock_fd = None

    def first_line(self) -> bytes | None:
        """The first complete line (the header), or None when the file is missing or has none."""
        try:
            with open(self.path, "rb") as fh:
                line = fh.readline()
        except FileNotFoundError:
            return None
        return line if line.endswith(b"\n") else None

    def append(self, data: bytes) -> None:
        """Write ``data`` (whole lines) after the last complete line and fsync; on failure nothing
        stays appended. A torn line a crashed writer left is cut off first."""
        if not data:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            start = end_of_complete_lines(fd, size)
            try:
                if start < size:
                    log.warning("%s: cutting off a torn last line (%d bytes)", self.path, size - start)
                    os.ftruncate(fd, start)
                os.lseek(fd, start, os.SEEK_SET)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except BaseException:
                os.ftruncate(fd, start)
                os.fsync(fd)
                raise
        finally:
            os.close(fd)

    def replace(self, data: bytes) -> None:
        write_atomically(self.path, data)

    def read(self, inode: int | None, offset: int) -> tuple[int | None, int, bytes]:
        """(inode, start, complete lines from start): from ``offset`` while the file is the one that
        was read before (same inode, not shorter), else from the beginning."""
        inode, start, data, _ = self.read_tail(inode, offset)
        return inode, start, data

    def read_tail(self, inode: int | None, offset: int) -> tuple[int | None, int, bytes, int]:
        """As :meth:`read`, plus the number of bytes after the last complete line."""
        try:
            with open(self.path, "rb") as fh:
                info = os.fstat(fh.fileno())
                if info.st_ino != inode or info.st_size < offset:
                    offset = 0
                fh.seek(offset)
                data = fh.read(info.st_size - offset)
        except FileNotFoundError:
            return None, 0, b"", 0
        end = data.rfind(b"\n") + 1
        return info.st_ino, offset, data[:end], len(data) - end


def append_lines(path: str | os.PathLike, lines: Sequence[bytes]) -> None:
    """Append whole lines to a log (a resumable cache, a report) under its lock, fsynced; a torn line
    an interrupted run left is cut off first."""
    log = AppendLog(path)
    with log.locked():
        log.append(b"".join(line if line.endswith(b"\n") else line + b"\n" for line in lines))


def end_of_complete_lines(fd: int, size: int) -> int:
    """Where the last complete line of an open file ends (0: none)."""
    window = min(size, 1 << 16)
    while window:
        os.lseek(fd, size - window, os.SEEK_SET)
        chunk = os.read(fd, window)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            return size - window + cut + 1
        if window == size:
            return 0
        window = min(size, window * 2)
    return 0


class VersionMoved(Exception):
    """The folder's live version is newer than the one this process holds: reload, then retry."""

    def __init__(self, path: Path, held: str, live: str | None):
        super().__init__(f"{path} now continues version {live}, not {held} that this process loaded")
        self.held, self.live = held, live


@dataclass(frozen=True)
class Carry:
    """What a version covers of its predecessor's log: every line before ``offset`` of the log of
    version ``version``. The lines after it were appended while the version was saved."""

    version: str
    offset: int

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "offset": self.offset}

    @classmethod
    def from_dict(cls, data: Any) -> Carry | None:
        if not isinstance(data, dict) or not isinstance(data.get("offset"), int):
            return None
        return cls(str(data.get("version")), data["offset"])


class VersionLog:
    """The append log of one version of a folder, followed by every process that holds that version.

    ``header`` is the first line: ``{**fields, version_key: version}``. ``live()`` reads which version
    the folder holds now; ``carry`` is what the held version covers of its predecessor's log (from its
    manifest). ``shared``: the log lives outside the folder, on storage several copies of the folder
    share: a header of another version there means this copy is out of date, never a leftover.
    ``error(problem, line)`` builds the exception for a damaged log (each caller has its own kind).
    """

    def __init__(
        self,
        log: AppendLog,
        *,
        fields: dict[str, Any],
        version_key: str,
        version: str,
        live: Callable[[], str | None],
        carry: Carry | None,
        error: Callable[[str, int | None], Exception],
        shared: bool = False,
        what: str = "log",
    ):
        self.log = log
        self.fields = dict(fields)
        self.version_key = version_key
        self.version = version
        self.live = live
        self.carry = carry
        self.error = error
        self.shared = shared
        self.what = what
        self._inode: int | None = None
        self._offset = 0  # bytes of the followed file already read (complete lines)
        self._lines = 0  # lines of it already read, for error messages
        self._warned_stale: int | None = None

    @property
    def path(self) -> Path:
        return self.log.path

    @property
    def followed(self) -> tuple[int | None, int]:
        """(inode, offset) of what this process has read: the point a save of its state covers."""
        return self._inode, self._offset

    def position(self) -> tuple[int | None, int, int]:
        """Where the reading stands (for a copy of the follower in another process)."""
        return self._inode, self._offset, self._lines

    def resume(self, position: tuple[int | None, int, int]) -> None:
        self._inode, self._offset, self._lines = position

    def header_line(self, version: str | None = None) -> bytes:
        header = {**self.fields, self.version_key: version or self.version}
        return (json.dumps(header) + "\n").encode()

    def _parse_header(self, raw: bytes) -> dict:
        try:
            header = json.loads(raw)
        except ValueError as exc:
            raise self.error(f"damaged {self.what}: its first line is not JSON ({exc})", 1) from exc
        if not isinstance(header, dict) or any(
            header.get(k) != v for k, v in self.fields.items() if k != "encoder_id"
        ):
            raise self.error(f"not a {self.what} of this kind (header {header})", 1)
        if "encoder_id" in self.fields and header.get("encoder_id") != self.fields["encoder_id"]:
            raise self.error(
                f"{self.what} of encoder '{header.get('encoder_id')}', "
                f"but the version's is '{self.fields['encoder_id']}'",
                1,
            )
        return header

    def _state(self, header: dict | None) -> str:
        """ours | missing | predecessor (a save's log switch was cut short) | stale | moved."""
        if header is None:
            return "missing"
        theirs = header.get(self.version_key)
        if theirs == self.version:
            return "ours"
        if self.shared:
            raise self.foreign(theirs)
        if self.live() != self.version:
            return "moved"
        if self.carry is not None and theirs == self.carry.version:
            return "predecessor"
        return "stale"

    def foreign(self, other: str | None) -> Exception:
        return self.error(
            f"shared {self.what} continues version {other}, but this copy of the folder is version "
            f"{self.version}: sync the copy to {other} before serving",
            None,
        )

    def _header(self) -> dict | None:
        raw = self.log.first_line()
        return None if raw is None else self._parse_header(raw)

    # -- writing

    def append(self, lines: Sequence[bytes]) -> None:
        """Append records durably; raises :class:`VersionMoved` when the folder moved on."""
        if not lines:
            return
        data = b"".join(lines)
        with self.log.locked():
            state = self._state(self._header())
            if state == "moved":
                raise VersionMoved(self.path, self.version, self.live())
            if state == "ours":
                self.log.append(data)
            elif state == "missing":
                # Empty, or only a torn header: start the log (append cuts what is there).
                self.log.append(self.header_line() + data)
            else:
                # A predecessor's log whose switch to this version was cut short (its lines after the
                # carry point move over), or a leftover of an older version (all in this one already).
                self.log.replace(self.header_line() + self._carried() + data)

    def _carried(self) -> bytes:
        """The complete lines of the current file after the carry point (if it is the predecessor's)."""
        raw = self.log.first_line()
        header = None if raw is None else self._parse_header(raw)
        if header is None or self.carry is None or header.get(self.version_key) != self.carry.version:
            return b""
        _, _, data = self.log.read(None, 0)
        return data[max(self.carry.offset, len(raw)) :]

    def ensure_own(self) -> None:
        """Make the file this version's own log (finishing a cut-short switch); call before a save."""
        with self.log.locked():
            state = self._state(self._header())
            if state == "moved":
                raise VersionMoved(self.path, self.version, self.live())
            if state == "missing":
                self.log.replace(self.header_line())
            elif state != "ours":
                self.log.replace(self.header_line() + self._carried())

    def switch(
        self, new_version: str, covered: tuple[int | None, int], activate: Callable[[], None]
    ) -> Carry:
        """Make ``new_version`` live (``activate``) and start its log with the lines appended after
        ``covered`` (the (inode, offset) the new version's content includes); returns its carry.

        Runs under the log lock, so no append lands between the switch and the new log. Raises
        :class:`VersionMoved` if the folder moved on since this process loaded it.
        """
        with self.log.locked():
            inode, offset = covered
            header = self._header()
            state = self._state(header)
            if state == "moved":
                raise VersionMoved(self.path, self.version, self.live())
            now, start, tail = self.log.read(inode, offset)
            if state != "ours" or now != inode or start != offset:
                raise self.error(f"{self.what} was replaced while the version was written; save again", None)
            carry = Carry(self.version, offset)
            activate()
            self.log.replace(self.header_line(new_version) + tail)
            self.version, self.carry = new_version, carry
            self._inode, self._offset, self._lines = None, 0, 0
            return carry

    def start(self, new_version: str, activate: Callable[[], None]) -> None:
        """A version not derived from this folder's live one (a rebuild, a first save): its log starts
        empty. Runs under the log lock like :meth:`switch`."""
        with self.log.locked():
            activate()
            self.log.replace(self.header_line(new_version))
            self.version, self.carry = new_version, None
            self._inode, self._offset, self._lines = None, 0, 0

    # -- following

    def read_new(self, only: bytes | None = None) -> list[tuple[int, dict]]:
        """(line number, record) of the records appended since the last call (all on the first);
        complete lines only. Raises :class:`VersionMoved` when the folder moved on. ``only``: just the
        lines that start with these bytes are parsed and returned (a reader of one kind of record)."""
        inode, start, data, incomplete = self.log.read_tail(self._inode, self._offset)
        if start == 0 and incomplete:
            # Left by a writer that died mid-append (the next append cuts it off), or being written.
            log.warning(
                "%s: ignoring a torn last line (%d bytes; a crash while appending, or an append in flight)",
                self.path,
                incomplete,
            )
        if inode is None:
            self._inode, self._offset, self._lines = None, 0, 0
            return []
        if start == 0:
            self._lines = 0
        skip_to = 0
        if start == 0 and data:
            end = data.index(b"\n") + 1
            state = self._state(self._parse_header(data[:end]))
            if state == "moved":
                raise VersionMoved(self.path, self.version, self.live())
            if state == "stale":
                if self._warned_stale != inode:
                    log.warning(
                        "%s belongs to another version than the live %s: its records are already in "
                        "the live version (a crash between a save and the %s reset?); ignoring it",
                        self.path,
                        self.version,
                        self.what,
                    )
                    self._warned_stale = inode
                self._inode, self._offset = inode, start + len(data)
                return []
            skip_to = self.carry.offset if state == "predecessor" and self.carry else end
        records = []
        position = start
        for raw in data.splitlines(keepends=True):
            self._lines += 1
            line_start, position = position, position + len(raw)
            if line_start < skip_to or not raw.strip() or (only is not None and not raw.startswith(only)):
                continue
            try:
                record = json.loads(raw)
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
            except (ValueError, UnicodeDecodeError) as exc:
                raise self.error(f"damaged {self.what}: invalid JSON line: {exc}", self._lines) from exc
            records.append((self._lines, record))
        self._inode, self._offset = inode, start + len(data)
        return records


# A process that keeps finding the folder moved on while it writes gives up after this many reloads.
MAX_RELOADS = 3


def append_to_live(
    log: Callable[[], VersionLog],
    lines: Sequence[bytes],
    reload: Callable[[], object],
    before: Callable[[], object] | None = None,
) -> None:
    """Append to the log of the version its owner holds (``log()``); when the folder moved on (another
    process saved), ``reload`` the owner and append to the log of the live version instead.
    ``before`` runs ahead of each attempt (a follower reads what others appended first)."""
    for reloads in range(MAX_RELOADS + 1):
        try:
            if before is not None:
                before()
            log().append(lines)
            return
        except VersionMoved:
            if reloads == MAX_RELOADS:
                raise
            reload()
