"""Versioned folders: immutable version folders and a CURRENT file naming the live one."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from graph_store.durable.files import CURRENT, exclusive_lock, fsync_dir, write_atomically


@dataclass
class NewVersion:
    name: str
    path: Path  # the temporary folder while it is written, the final one afterwards


class VersionedFolder:
    """``ROOT/CURRENT`` names the live version folder; versions are immutable once renamed into place.

    ``name_of(number)`` spells a version's folder name; ``pattern`` (a regular expression whose first
    group is the number) reads it back; a name it does not match is not a version. ``keep`` versions
    stay on disk (the live one always).
    """

    TEMP_PREFIX = ".tmp-"
    SAVE_LOCK = ".save.lock"

    def __init__(
        self,
        root: str | os.PathLike,
        name_of: Callable[[int], str],
        pattern: str,
        keep: int = 2,
    ):
        self.root = Path(root)
        self.name_of = name_of
        self.pattern = re.compile(pattern)
        self.keep = keep

    @property
    def pointer(self) -> Path:
        return self.root / CURRENT

    def live(self) -> str | None:
        """The live version's name, or None when the folder has none yet."""
        try:
            return self.pointer.read_text(encoding="utf-8").strip() or None
        except FileNotFoundError:
            return None

    def number(self, name: str | None) -> int | None:
        return None if name is None else self.number_of(name)

    def number_of(self, name: str) -> int | None:
        match = self.pattern.fullmatch(name)
        return int(match.group(1)) if match else None

    def versions(self) -> list[tuple[int, Path]]:
        if not self.root.is_dir():
            return []
        found = ((self.number_of(p.name), p) for p in self.root.iterdir() if p.is_dir())
        return sorted((n, p) for n, p in found if n is not None)

    @contextlib.contextmanager
    def saving(self) -> Iterator[None]:
        """Held for a whole save: saves of one folder run one at a time, so a temporary found here is
        one a crashed save left, never one being written."""
        self.root.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(self.root / self.SAVE_LOCK):
            self.remove_stale()
            yield

    def remove_stale(self) -> None:
        for stale in self.root.glob(f"{self.TEMP_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
        for stale in self.root.glob(f".{CURRENT}.*.tmp"):  # a crash inside write_atomically
            stale.unlink(missing_ok=True)

    @contextlib.contextmanager
    def new_version(self) -> Iterator[NewVersion]:
        """A version folder to write into (call inside :meth:`saving`); on success it is fsynced and
        renamed to its final name, not yet live (see :meth:`activate`). A failure removes it."""
        numbers = [n for n, _ in self.versions()]
        name = self.name_of(max(numbers, default=0) + 1)
        tmp = self.root / f"{self.TEMP_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        version = NewVersion(name, tmp)
        try:
            yield version
            fsync_dir(tmp)
            final = self.root / name
            os.replace(tmp, final)
            fsync_dir(self.root)
            version.path = final
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def activate(self, name: str) -> None:
        """Make a written version the live one (atomic), then drop versions no longer needed."""
        write_atomically(self.pointer, (name + "\n").encode())
        self.prune()

    def prune(self) -> None:
        live = self.live()
        for _, old in self.versions()[: -self.keep]:
            if old.name != live:
                with contextlib.suppress(OSError):
                    shutil.rmtree(old)
