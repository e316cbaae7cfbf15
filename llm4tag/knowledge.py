"""Retrievable knowledge for tag generation (paper §3.3.2, short-term retrieved knowledge injection).

Two knowledge bases, both over unit vectors of one encoder and both growing at run time:

- :class:`SampleKnowledgeBase` holds annotated contents with their correct and incorrect tags
  ("retrieved in-context learning injection"): for an item, the most similar samples become few-shot
  examples. Feedback appends new samples or corrects existing ones, retrievable at once.
- :class:`DomainKnowledgeBase` holds snippets of domain knowledge ("retrieved augmented generation
  injection"): tag descriptions, definitions of terms and manually written tagging rules. For an item and
  its candidate tags, the snippets about those tags or general rules most similar to the item are returned.

Callers encode; vectors cross the API as numpy arrays. Both bases share one persistence scheme::

    FOLDER/CURRENT                       "snapshot-000002-1a2b3c4d"  (the live snapshot, replaced atomically)
    FOLDER/snapshot-000002-1a2b3c4d/     records.jsonl, vectors.npy, manifest.json (written last)
    FOLDER/appended.jsonl                the log of additions since that snapshot (first line: a header
                                         naming the snapshot; then one entry with its vector a line)

A save writes a complete snapshot into a temporary folder beside the live one, fsyncs it, renames it to
its final name and only then replaces CURRENT, so a crash at any point leaves the previous snapshot live
and intact. The log is then reset for the new snapshot; a log whose header names another snapshot is
stale (a crash between the two steps: its entries are in the new snapshot) and is ignored. Log appends
are flushed and fsynced before ``add`` returns; a torn last line (a crash mid-write) is ignored with a
warning on load. One process writes a base folder at a time; any number may read it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Self, TypeVar

import faiss
import numpy as np

from llm4tag.data import Item, Tag, read_records
from llm4tag.errors import DataError, LLM4TagError
from llm4tag.texts import item_text, readable_tag

if TYPE_CHECKING:
    from llm4tag.encoder import Encoder

__all__ = [
    "DEFAULT_MAX_CHARS",
    "SAMPLE_SOURCES",
    "DomainKnowledgeBase",
    "EncoderMismatchError",
    "KnowledgeError",
    "Sample",
    "SampleHit",
    "SampleKnowledgeBase",
    "Snippet",
    "SnippetHit",
    "build_knowledge",
    "load_knowledge_file",
    "vocabulary_snippets",
]

logger = logging.getLogger("llm4tag.knowledge")

DEFAULT_MAX_CHARS = 300
SAMPLE_SOURCES = ("annotation", "feedback")

FORMAT = "llm4tag-knowledge"
FORMAT_VERSION = 1
CURRENT = "CURRENT"
LOG_NAME = "appended.jsonl"
RECORDS_NAME = "records.jsonl"
VECTORS_NAME = "vectors.npy"
MANIFEST_NAME = "manifest.json"
KEEP_SNAPSHOTS = 2
_SNAPSHOT_RE = re.compile(r"^snapshot-(\d{6,})-[0-9a-f]{8}$")
_UNIT_TOLERANCE = 1e-3
# Tombstoned rows (entries whose vector was replaced) are dropped from the index once they are this many
# and a quarter of it: rebuilding costs one pass over the vectors, so it is amortised over many updates.
_COMPACT_MIN_DEAD = 256
_MAX_WARN_EXAMPLES = 5


class KnowledgeError(LLM4TagError):
    """A knowledge base cannot be used as asked (bad vectors, no log to write to...)."""


class EncoderMismatchError(KnowledgeError):
    """A saved knowledge base was built with another encoder than the one in use."""


# --- entries


def _check_string(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{name} must not be empty")
    return value


def _tag_tuple(name: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ValueError(f"{name} must be a sequence of tag names, got {type(value).__name__}")
    out: dict[str, None] = {}
    for tag in value:
        out.setdefault(_check_string(f"a tag of {name}", tag), None)
    return tuple(out)


@dataclass(frozen=True)
class Sample:
    """An annotated content: its text (as encoded) with the tags it has and, from feedback, does not have.

    ``correct`` and ``incorrect`` are disjoint; lists are accepted and stored as tuples (duplicates dropped).
    ``source`` is ``"annotation"`` (training data) or ``"feedback"`` (added at run time).
    """

    id: str
    text: str
    correct: tuple[str, ...] = ()
    incorrect: tuple[str, ...] = ()
    source: str = "annotation"

    def __post_init__(self) -> None:
        _check_string("id", self.id)
        _check_string("text", self.text)
        correct = _tag_tuple("correct", self.correct)
        incorrect = _tag_tuple("incorrect", self.incorrect)
        marked_incorrect = set(incorrect)
        both = [t for t in correct if t in marked_incorrect]
        if both:
            raise ValueError(f"sample '{self.id}': tag '{both[0]}' is marked both correct and incorrect")
        if self.source not in SAMPLE_SOURCES:
            raise ValueError(
                f"sample '{self.id}': source must be one of {SAMPLE_SOURCES}, got {self.source!r}"
            )
        object.__setattr__(self, "correct", correct)
        object.__setattr__(self, "incorrect", incorrect)

    @classmethod
    def from_item(
        cls, item: Item, item_fields: Sequence[str] = ("text",), source: str = "annotation"
    ) -> Sample:
        """A sample of an annotated item; its text is what the encoder reads (``texts.item_text``)."""
        return cls(id=item.id, text=item_text(item, item_fields), correct=item.tags or (), source=source)

    def merged(self, update: Sample) -> Sample:
        """This sample updated by another of the same id.

        Text and source are the update's. Tags the update marks correct become correct (leaving
        ``incorrect``), tags it marks incorrect become incorrect (leaving ``correct``); others keep
        their mark.
        """
        drop_correct, drop_incorrect = set(update.incorrect), set(update.correct)
        correct = dict.fromkeys(t for t in self.correct if t not in drop_correct)
        correct.update(dict.fromkeys(update.correct))
        incorrect = dict.fromkeys(t for t in self.incorrect if t not in drop_incorrect)
        incorrect.update(dict.fromkeys(update.incorrect))
        return Sample(self.id, update.text, tuple(correct), tuple(incorrect), update.source)

    def to_record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "text": self.text,
            "correct": list(self.correct),
            "incorrect": list(self.incorrect),
            "source": self.source,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Sample:
        return cls(
            id=record["id"],
            text=record["text"],
            correct=record.get("correct") or (),
            incorrect=record.get("incorrect") or (),
            source=record.get("source", "annotation"),
        )


@dataclass(frozen=True)
class SampleHit:
    sample: Sample
    similarity: float


@dataclass(frozen=True)
class Snippet:
    """A piece of domain knowledge: a tag description, a definition or a tagging rule.

    ``tags`` are the tags it is about; empty means a general rule, eligible for every item. ``source`` says
    where it came from: ``"vocabulary"``, a knowledge file's name, ``"runtime"``...
    """

    id: str
    text: str
    tags: tuple[str, ...] = ()
    source: str = "runtime"

    def __post_init__(self) -> None:
        _check_string("id", self.id)
        _check_string("text", self.text)
        _check_string("source", self.source)
        object.__setattr__(self, "tags", _tag_tuple("tags", self.tags))

    @property
    def general(self) -> bool:
        return not self.tags

    def merged(self, update: Snippet) -> Snippet:
        """A snippet updated by another of the same id is replaced by it."""
        return update

    def to_record(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "tags": list(self.tags), "source": self.source}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Snippet:
        return cls(
            id=record["id"],
            text=record["text"],
            tags=record.get("tags") or (),
            source=record.get("source", "runtime"),
        )


@dataclass(frozen=True)
class SnippetHit:
    snippet: Snippet
    similarity: float


E = TypeVar("E", Sample, Snippet)


# --- vectors


def _single_thread() -> None:
    # One thread beat more on the shared 2-vCPU machines, as for the graph store's indexes.
    faiss.omp_set_num_threads(1)


def _as_vectors(vectors: Any, rows: int, dim: int | None, what: str = "vectors") -> np.ndarray:
    """Entry vectors as a C-contiguous float32 (rows, dim) array of finite unit vectors."""
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim == 1 and rows == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[0] != rows or (dim is not None and arr.shape[1] != dim):
        want = f"({rows}, {dim if dim is not None else 'dim'})"
        raise KnowledgeError(f"{what} must have shape {want}, got {tuple(arr.shape)}")
    if rows:
        if not np.isfinite(arr).all():
            raise KnowledgeError(f"{what} hold NaN or infinite values")
        norms = np.linalg.norm(arr, axis=1)
        worst = int(np.argmax(np.abs(norms - 1.0)))
        if abs(float(norms[worst]) - 1.0) > _UNIT_TOLERANCE:
            raise KnowledgeError(
                f"{what} must be unit length (L2-normalised, as the encoder returns them); "
                f"row {worst} has norm {float(norms[worst]):.4f}"
            )
    return np.ascontiguousarray(arr)


def _as_queries(vectors: Any, dim: int) -> np.ndarray:
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise KnowledgeError(f"query vectors must have shape (n, {dim}), got {tuple(arr.shape)}")
    return np.ascontiguousarray(arr)


# --- the shared base


class _KnowledgeBase(Generic[E]):
    """Entries by id, their vectors in an exact inner-product index, and the persistence of both.

    Rows of the index are append-only: an entry whose vector is replaced leaves a dead row (tombstone)
    that searches skip; dead rows are dropped when they pile up. Every public method is thread-safe.
    """

    KIND: ClassVar[str]
    ENTRY: ClassVar[type]

    def __init__(self, encoder_id: str, dim: int):
        if not isinstance(encoder_id, str) or not encoder_id:
            raise KnowledgeError("encoder_id must be a non-empty string")
        if not isinstance(dim, int | np.integer) or dim <= 0:
            raise KnowledgeError(f"dim must be a positive integer, got {dim!r}")
        _single_thread()
        self.encoder_id = encoder_id
        self.dim = int(dim)
        self._index = faiss.IndexFlatIP(self.dim)
        self._entries: dict[str, E] = {}
        self._row_of: dict[str, int] = {}
        self._row_ids: list[str | None] = []  # row -> id, None for a dead row
        self._dead = 0
        self._lock = threading.RLock()
        self._log: _AppendLog | None = None
        self._wants_log = False  # open_log was called and close_log was not: adds are durable by default
        # (folder, snapshot) this base's state was loaded from or saved as, for open_log.
        self._origin: tuple[Path, str] | None = None

    # -- building

    @classmethod
    def build(cls, entries: Iterable[E], vectors: np.ndarray, encoder_id: str) -> Self:
        """A base over entries and their precomputed unit vectors (one row each, in order)."""
        entries = list(entries)
        arr = np.asarray(vectors, dtype=np.float32)
        if arr.ndim != 2:
            raise KnowledgeError(f"vectors must be a 2-d array (n, dim), got shape {tuple(arr.shape)}")
        base = cls(encoder_id, int(arr.shape[1]))
        base.add(entries, arr, durable=False)
        return base

    # -- reading

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self._entries

    def __iter__(self) -> Iterator[E]:
        with self._lock:
            return iter(list(self._entries.values()))

    def get(self, entry_id: str) -> E | None:
        return self._entries.get(entry_id)

    def vector(self, entry_id: str) -> np.ndarray | None:
        """The stored vector of an entry (a copy), or None."""
        with self._lock:
            row = self._row_of.get(entry_id)
            return None if row is None else self._index.reconstruct(row)

    @property
    def log_path(self) -> Path | None:
        """The append log durable additions go to, or None."""
        return self._log.path if self._log is not None else None

    # -- changing

    def add(self, entries: Iterable[E], vectors: np.ndarray, *, durable: bool | None = None) -> None:
        """Add entries with their unit vectors; each is retrievable as soon as this returns.

        An entry whose id exists updates it (see the entry type's ``merged``); its vector is replaced when
        its text changed and kept otherwise. ``durable`` (default: whether a log is open, see
        :meth:`open_log`) first appends the entries to the log and fsyncs it; if that fails, nothing changes.
        """
        entries = list(entries)
        for entry in entries:
            if not isinstance(entry, self.ENTRY):
                raise KnowledgeError(
                    f"{type(self).__name__} holds {self.ENTRY.__name__} entries, got {type(entry).__name__}"
                )
        arr = _as_vectors(vectors, len(entries), self.dim)
        if not entries:
            return
        with self._lock:
            if durable is None:
                durable = self._wants_log
            if durable and self._log is not None and self._log.replaced():
                # Another process saved a new snapshot: appending to the old, unlinked log would lose
                # the entries. Load the new snapshot (this reopens the log) first.
                self.refresh()
            if durable:
                if self._log is None:
                    raise KnowledgeError(
                        f"durable add to a {self.KIND} knowledge base with no open log: load it with "
                        "writable=True or call open_log(folder) after saving it"
                        + (" (the log was closed by a failed save; call open_log)" if self._wants_log else "")
                    )
                self._log.append([_log_line(e, v) for e, v in zip(entries, arr, strict=True)])
            self._apply(entries, arr)

    def add_encoded(self, entries: Iterable[E], encoder: Encoder, *, durable: bool | None = None) -> None:
        """Encode the entries' texts with ``encoder`` (which must be this base's), then :meth:`add` them."""
        entries = list(entries)
        if encoder.id != self.encoder_id:
            raise EncoderMismatchError(
                f"this {self.KIND} knowledge base holds vectors of encoder '{self.encoder_id}', "
                f"not of '{encoder.id}'"
            )
        self.add(entries, encoder.encode([e.text for e in entries]), durable=durable)

    def _apply(self, entries: Sequence[E], vectors: np.ndarray) -> None:
        new_rows: list[int] = []  # positions in `vectors` that become new index rows, in row order
        next_row = len(self._row_ids)
        for position, entry in enumerate(entries):
            old = self._entries.get(entry.id)
            if old is None:
                merged, row = entry, next_row
            else:
                merged = old.merged(entry)
                row = self._row_of[entry.id]
                self._unlink(old, row)
                if merged.text != old.text:
                    self._row_ids[row] = None
                    self._dead += 1
                    row = next_row
            if row == next_row:
                self._row_ids.append(entry.id)
                new_rows.append(position)
                next_row += 1
            self._entries[entry.id] = merged
            self._row_of[entry.id] = row
            self._link(merged, row)
        if new_rows:
            self._index.add(np.ascontiguousarray(vectors[new_rows]))
        if self._dead >= _COMPACT_MIN_DEAD and self._dead * 4 >= len(self._row_ids):
            self._compact()

    def _compact(self) -> None:
        live = [row for row, entry_id in enumerate(self._row_ids) if entry_id is not None]
        vectors = self._index.reconstruct_batch(np.asarray(live, dtype=np.int64)) if live else None
        index = faiss.IndexFlatIP(self.dim)
        if vectors is not None:
            index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        self._index = index
        self._row_ids = [self._row_ids[row] for row in live]
        self._row_of = {entry_id: row for row, entry_id in enumerate(self._row_ids) if entry_id is not None}
        self._dead = 0
        self._relink_all()

    # Hooks for per-row side tables (the domain base's tag -> rows map).
    def _link(self, entry: E, row: int) -> None:
        pass

    def _unlink(self, entry: E, row: int) -> None:
        pass

    def _relink_all(self) -> None:
        pass

    def _live_rows(self) -> tuple[list[E], np.ndarray]:
        """Entries and their vectors in row order, dead rows left out."""
        rows = [(row, entry_id) for row, entry_id in enumerate(self._row_ids) if entry_id is not None]
        entries = [self._entries[entry_id] for _, entry_id in rows]
        if not rows:
            return entries, np.zeros((0, self.dim), np.float32)
        if len(rows) == self._index.ntotal:
            return entries, self._index.reconstruct_n(0, self._index.ntotal)
        return entries, self._index.reconstruct_batch(np.asarray([r for r, _ in rows], dtype=np.int64))

    # -- persistence

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write a complete snapshot into ``folder`` atomically and start an empty log for it.

        Returns the snapshot folder. A log open on ``folder`` continues on the new (empty) log; a log open
        on another folder stays there.
        """
        root = Path(folder)
        with self._lock:
            entries, vectors = self._live_rows()
            name = _write_snapshot(
                root,
                kind=self.KIND,
                encoder_id=self.encoder_id,
                dim=self.dim,
                records=[e.to_record() for e in entries],
                vectors=vectors,
            )
            reopen = self._log is not None and self._log.path.parent.resolve() == root.resolve()
            if reopen:
                # The old log's entries are in the new snapshot; appends go to the fresh log below. Until
                # it is open, durable adds fail rather than silently not logging.
                self._log.close()
                self._log = None
            _reset_log(root, self.KIND, name, self.encoder_id)
            self._origin = (root.resolve(), name)
            self._mark_read(root / LOG_NAME, (root / LOG_NAME).stat().st_size)
            _prune_snapshots(root, KEEP_SNAPSHOTS)
            if reopen:
                self.open_log(root)
        return root / name

    @classmethod
    def load(
        cls,
        folder: str | os.PathLike[str],
        expected_encoder_id: str | None = None,
        *,
        writable: bool = False,
    ) -> Self:
        """Load the live snapshot of ``folder`` and replay its log.

        ``expected_encoder_id`` refuses a base built with another encoder (:class:`EncoderMismatchError`).
        Damaged or foreign files raise :class:`~llm4tag.errors.DataError` naming the file. ``writable=True``
        also opens the log so that later additions are durable (see :meth:`open_log`).
        """
        root = Path(folder)
        snapshot = _current_snapshot(root)
        manifest = _read_manifest(snapshot, cls.KIND)
        if expected_encoder_id is not None and manifest["encoder_id"] != expected_encoder_id:
            raise EncoderMismatchError(
                f"{cls.KIND} knowledge base {root} was built with encoder '{manifest['encoder_id']}', "
                f"but the encoder in use is '{expected_encoder_id}'; rebuild it with this encoder or "
                "configure the original one"
            )
        base = cls(manifest["encoder_id"], manifest["dim"])
        records, vectors = _read_snapshot(snapshot, manifest)
        entries = [_entry_from_record(cls.ENTRY, rec, snapshot / RECORDS_NAME, line) for line, rec in records]
        if len({e.id for e in entries}) != len(entries):
            raise DataError(str(snapshot / RECORDS_NAME), "damaged: duplicate entry ids")
        try:
            vectors = _as_vectors(vectors, len(entries), base.dim, "stored vectors")
        except KnowledgeError as exc:
            raise DataError(str(snapshot / VECTORS_NAME), f"damaged: {exc}") from exc
        base._apply(entries, vectors)

        where = root / LOG_NAME
        scan = _scan_log(where, cls.KIND, snapshot.name, base.encoder_id)
        logged: list[E] = []
        logged_vectors: list[np.ndarray] = []
        for line, record in scan.records:
            logged.append(_entry_from_record(cls.ENTRY, record, where, line))
            try:
                logged_vectors.append(_as_vectors(record.get("vector"), 1, base.dim, "the logged vector"))
            except (KnowledgeError, ValueError, TypeError) as exc:
                raise DataError(str(where), str(exc), line=line, field="vector") from exc
        if logged:
            base._apply(logged, np.concatenate(logged_vectors))
        base._origin = (root.resolve(), snapshot.name)
        base._mark_read(where, scan.valid_end)
        if writable:
            base.open_log(root)
        return base

    def _mark_read(self, path: Path, offset: int) -> None:
        try:
            self._followed = (os.stat(path).st_ino, offset)
        except FileNotFoundError:
            self._followed = (None, 0)

    def refresh(self) -> int:
        """Apply what other processes appended to this base's log since it was read; returns how many.

        Several replicas share one knowledge folder: each appends its own additions and follows the
        others' before it searches. Re-applying an entry changes nothing, so a base also reads back its
        own appends. A log replaced by a save elsewhere means a new snapshot: the base reloads it.
        """
        if self._origin is None:
            return 0
        root = self._origin[0]
        path = root / LOG_NAME
        with self._lock:
            try:
                stat = os.stat(path)
            except FileNotFoundError:
                return 0
            inode, offset = getattr(self, "_followed", (None, 0))
            if stat.st_ino != inode or stat.st_size < offset:
                fresh = type(self).load(root, self.encoder_id, writable=self._wants_log)
                if self._log is not None:
                    self._log.close()
                lock = self._lock
                self.__dict__.update(fresh.__dict__)
                self._lock = lock
                return len(self)
            if stat.st_size == offset:
                return 0
            with open(path, "rb") as fh:
                fh.seek(offset)
                data = fh.read(stat.st_size - offset)
            end = data.rfind(b"\n") + 1  # a line still being appended waits for the next refresh
            entries, vectors = [], []
            for raw in data[:end].splitlines():
                if not raw.strip():
                    continue
                try:
                    record = json.loads(raw)
                except ValueError as exc:
                    raise DataError(str(path), f"damaged log: invalid JSON line: {exc}") from exc
                if "format" in record and record.get("snapshot") is not None:
                    continue  # the header
                entries.append(_entry_from_record(self.ENTRY, record, path, 0))
                vectors.append(_as_vectors(record.get("vector"), 1, self.dim, "the logged vector"))
            if entries:
                self._apply(entries, np.concatenate(vectors))
            self._followed = (inode, offset + end)
            return len(entries)

    def open_log(self, folder: str | os.PathLike[str] | None = None) -> Path:
        """Open ``folder``'s append log so that :meth:`add` is durable by default; returns its path.

        ``folder`` (default: the one this base was loaded from or last saved to) must hold, as its live
        snapshot, the one this base was loaded from or saved as. A torn last line is cut off first.
        """
        with self._lock:
            if self._origin is None:
                raise KnowledgeError(f"this {self.KIND} knowledge base was never saved: save(folder) first")
            root = Path(folder).resolve() if folder is not None else self._origin[0]
            snapshot = _current_snapshot(root)
            if (root, snapshot.name) != self._origin:
                raise KnowledgeError(
                    f"{root} holds snapshot {snapshot.name}, not the one this base was loaded from or saved "
                    f"as ({self._origin[1]} in {self._origin[0]}); load it from there or save it there first"
                )
            self.close_log()
            path = root / LOG_NAME
            scan = _scan_log(path, self.KIND, snapshot.name, self.encoder_id, quiet=True)
            if scan.stale or not path.exists():
                _reset_log(root, self.KIND, snapshot.name, self.encoder_id)
            else:
                _repair_tail(path, scan.valid_end, scan.needs_newline)
            self._log = _AppendLog(path)
            self._wants_log = True
            return path

    def close_log(self) -> None:
        """Close the log: later adds are not durable unless asked (and then fail)."""
        with self._lock:
            self._wants_log = False
            if self._log is not None:
                self._log.close()
                self._log = None

    # -- pickling (the base may travel to another process; the log does not)

    def __getstate__(self) -> dict[str, Any]:
        with self._lock:
            skip = ("_lock", "_log", "_index", "_wants_log")
            state = {k: v for k, v in self.__dict__.items() if k not in skip}
            state["_index_bytes"] = faiss.serialize_index(self._index)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        index_bytes = state.pop("_index_bytes")
        self.__dict__.update(state)
        self._index = faiss.deserialize_index(index_bytes)
        self._lock = threading.RLock()
        self._log = None
        self._wants_log = False


def _entry_from_record(entry_type: type, record: dict[str, Any], path: Path, line: int):
    try:
        return entry_type.from_record(record)
    except (KeyError, TypeError, ValueError) as exc:
        problem = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        raise DataError(str(path), f"bad {entry_type.__name__.lower()} record: {problem}", line=line) from exc


# --- the sample knowledge base


class SampleKnowledgeBase(_KnowledgeBase[Sample]):
    """Annotated contents with their correct/incorrect tags, searched by similarity to an item."""

    KIND = "samples"
    ENTRY = Sample

    @classmethod
    def from_items(
        cls, items: Iterable[Item], encoder: Encoder, item_fields: Sequence[str] = ("text",)
    ) -> SampleKnowledgeBase:
        """A base over the items that have tags (others are skipped), encoded with ``texts.item_text``."""
        samples = [Sample.from_item(item, item_fields) for item in items if item.tags]
        vectors = encoder.encode([s.text for s in samples])
        base = cls(encoder.id, int(vectors.shape[1]))
        base.add(samples, vectors, durable=False)
        return base

    def search(
        self,
        vectors: np.ndarray,
        n: int = 3,
        exclude_ids: Sequence[Collection[str] | None] | None = None,
        min_similarity: float | None = None,
    ) -> list[list[SampleHit]]:
        """Per query vector, the ``n`` most similar samples, best first.

        ``exclude_ids`` (one collection or None per query) are never returned: pass an item's own id so
        that it does not retrieve itself. Samples below ``min_similarity`` are left out.
        """
        queries = _as_queries(vectors, self.dim)
        m = len(queries)
        if exclude_ids is not None and len(exclude_ids) != m:
            raise KnowledgeError(f"exclude_ids has {len(exclude_ids)} entries for {m} query vectors")
        excluded: list[Collection[str]] = [
            (ids if ids is not None else ()) for ids in (exclude_ids or [None] * m)
        ]
        results: list[list[SampleHit]] = [[] for _ in range(m)]
        if n <= 0 or m == 0:
            return results
        with self._lock:
            total = self._index.ntotal
            if not self._entries:
                return results
            _single_thread()
            # Deep enough to make up for exclusions and dead rows in one go, most of the time.
            extra = max(len(ids) for ids in excluded) + min(self._dead, 2 * n + 8)
            k = min(total, n + extra)
            pending = np.arange(m)
            while len(pending):
                sims, rows = self._index.search(queries[pending], k)
                retry: list[int] = []
                for query, row_sims, row_ids in zip(pending.tolist(), sims, rows, strict=True):
                    hits, exhausted = self._collect(row_sims, row_ids, n, excluded[query], min_similarity)
                    if len(hits) < n and not exhausted and k < total:
                        retry.append(query)
                    else:
                        results[query] = hits
                pending = np.asarray(retry, dtype=np.int64)
                k = min(total, 2 * k)
        return results

    def _collect(
        self,
        sims: np.ndarray,
        rows: np.ndarray,
        n: int,
        excluded: Collection[str],
        min_similarity: float | None,
    ) -> tuple[list[SampleHit], bool]:
        """Hits from one result row; exhausted: no further row could add one."""
        hits: list[SampleHit] = []
        for sim, row in zip(sims.tolist(), rows.tolist(), strict=True):
            if row < 0 or (min_similarity is not None and sim < min_similarity):
                return hits, True
            entry_id = self._row_ids[row]
            if entry_id is None or entry_id in excluded:
                continue
            hits.append(SampleHit(self._entries[entry_id], float(sim)))
            if len(hits) == n:
                return hits, True
        return hits, False


# --- the domain knowledge base


class DomainKnowledgeBase(_KnowledgeBase[Snippet]):
    """Snippets of domain knowledge, searched per item among those about its candidate tags."""

    KIND = "domain"
    ENTRY = Snippet

    def __init__(self, encoder_id: str, dim: int):
        super().__init__(encoder_id, dim)
        self._tag_rows: dict[str, set[int]] = {}
        self._general_rows: set[int] = set()

    def _link(self, entry: Snippet, row: int) -> None:
        if entry.tags:
            for tag in entry.tags:
                self._tag_rows.setdefault(tag, set()).add(row)
        else:
            self._general_rows.add(row)

    def _unlink(self, entry: Snippet, row: int) -> None:
        if entry.tags:
            for tag in entry.tags:
                rows = self._tag_rows.get(tag)
                if rows is not None:
                    rows.discard(row)
                    if not rows:
                        del self._tag_rows[tag]
        else:
            self._general_rows.discard(row)

    def _relink_all(self) -> None:
        self._tag_rows, self._general_rows = {}, set()
        for entry_id, row in self._row_of.items():
            self._link(self._entries[entry_id], row)

    @classmethod
    def from_vocabulary(
        cls, tags: Sequence[Tag], encoder: Encoder, max_chars: int = DEFAULT_MAX_CHARS
    ) -> DomainKnowledgeBase:
        """One snippet per tag with a description: ``"<readable tag>: <description>"`` (≤ max_chars)."""
        snippets = vocabulary_snippets(tags, max_chars)
        vectors = encoder.encode([s.text for s in snippets])
        base = cls(encoder.id, int(vectors.shape[1]))
        base.add(snippets, vectors, durable=False)
        return base

    @staticmethod
    def load_knowledge_file(
        path: str | os.PathLike[str],
        vocabulary: Collection[str] | None = None,
        *,
        strict: bool = False,
        max_chars: int = DEFAULT_MAX_CHARS,
    ) -> list[Snippet]:
        """See :func:`load_knowledge_file`."""
        return load_knowledge_file(path, vocabulary, strict=strict, max_chars=max_chars)

    def tags(self) -> list[str]:
        """The tags some snippet is about."""
        with self._lock:
            return sorted(self._tag_rows)

    def search(
        self,
        item_vectors: np.ndarray,
        candidates: Sequence[Sequence[str]],
        n: int = 3,
        min_similarity: float | None = None,
    ) -> list[list[SnippetHit]]:
        """Per item, the ≤ n snippets most similar to it among those about one of its candidate tags and
        the general rules, best first (ties: by id).

        ``candidates`` holds one sequence of tag names per item (objects with a ``tag`` attribute, such as
        recall candidates, are read by that attribute).
        """
        queries = _as_queries(item_vectors, self.dim)
        m = len(queries)
        if len(candidates) != m:
            raise KnowledgeError(f"candidates has {len(candidates)} entries for {m} item vectors")
        results: list[list[SnippetHit]] = [[] for _ in range(m)]
        if n <= 0 or m == 0:
            return results
        with self._lock:
            general = sorted(self._general_rows)
            general_sims = None
            if general:
                general_vectors = self._index.reconstruct_batch(np.asarray(general, dtype=np.int64))
                general_sims = queries @ general_vectors.T  # (m, len(general))
            for i in range(m):
                rows: set[int] = set()
                for candidate in candidates[i]:
                    tag = candidate if isinstance(candidate, str) else getattr(candidate, "tag", candidate)
                    rows.update(self._tag_rows.get(tag, ()))
                tagged = sorted(rows)
                if tagged:
                    tag_vectors = self._index.reconstruct_batch(np.asarray(tagged, dtype=np.int64))
                    tag_sims = tag_vectors @ queries[i]
                    all_rows = tagged + general
                    sims = tag_sims if general_sims is None else np.concatenate([tag_sims, general_sims[i]])
                elif general_sims is not None:
                    all_rows, sims = general, general_sims[i]
                else:
                    continue
                results[i] = self._best(all_rows, sims, n, min_similarity)
        return results

    def _best(
        self, rows: list[int], sims: np.ndarray, n: int, min_similarity: float | None
    ) -> list[SnippetHit]:
        keep = np.arange(len(rows))
        if min_similarity is not None:
            keep = keep[sims[keep] >= min_similarity]
        if len(keep) > n:
            kth = np.partition(sims[keep], -n)[-n]
            keep = keep[sims[keep] >= kth]  # ties with the n-th stay, to be broken by id below
        hits = [SnippetHit(self._entries[self._row_ids[rows[j]]], float(sims[j])) for j in keep.tolist()]
        hits.sort(key=lambda h: (-h.similarity, h.snippet.id))
        return hits[:n]


# --- snippets from the vocabulary and from knowledge files


def _trim(text: str, max_chars: int) -> str:
    """Whitespace collapsed, cut to at most max_chars at a word boundary with an ellipsis."""
    text = " ".join(text.split())
    if len(text) <= max_chars:
        return text
    cut = text[: max_chars - 1]
    space = cut.rfind(" ")
    if space > max_chars // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:") + "…"


def vocabulary_snippets(tags: Sequence[Tag], max_chars: int = DEFAULT_MAX_CHARS) -> list[Snippet]:
    """One snippet per tag that has a description (id ``tag:<name>``, source ``vocabulary``)."""
    out = []
    for tag in tags:
        if tag.description and tag.description.strip():
            text = _trim(f"{readable_tag(tag.tag)}: {tag.description}", max_chars)
            out.append(Snippet(id=f"tag:{tag.tag}", text=text, tags=(tag.tag,), source="vocabulary"))
    return out


_MARKDOWN_SUFFIXES = (".md", ".markdown")
_JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
_HEADING_RE = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_FENCE_RE = re.compile(r"^\s*(```|~~~)")
_COMMENT_RE = re.compile(r"<!--.*?-->", re.DOTALL)
_TAG_SEPARATORS_RE = re.compile(r"\s*(?:,|/|;|\||\s(?:vs\.?|versus)\s)\s*", re.IGNORECASE)
_BACKTICKED_RE = re.compile(r"`([^`]+)`")
_SENTENCE_RE = re.compile(r"(?<=[.!?])\s+")


def load_knowledge_file(
    path: str | os.PathLike[str],
    vocabulary: Collection[str] | None = None,
    *,
    strict: bool = False,
    max_chars: int = DEFAULT_MAX_CHARS,
) -> list[Snippet]:
    """Read domain-knowledge snippets from a JSONL (``.jsonl``, ``.jsonl.gz``) or Markdown (``.md``) file.

    JSONL rows: ``text`` (required), ``tags`` (list of tag names, optional), ``id`` (optional; default
    ``<file name>:<line>``), ``title`` (optional, put before the text as ``"title: text"``). With a
    ``vocabulary``, unknown tags are dropped with a warning (a row left with none of its tags is skipped),
    or with ``strict=True`` rejected.

    Markdown: every ATX heading (``#`` to ``######``, outside code fences) starts a section, with id
    ``<file name>#<heading slug>``. A section is about the tags its heading names: the whole heading is a
    tag or its readable form (case-insensitive), or a list of them separated by ``,`` ``/`` ``;`` ``|`` or
    ``vs``, or it names tags in backticks (`` `card_arrival` ``). A heading that names no tag inherits the
    tags of the heading it is nested under; at top level its section is a general rule. Text before the
    first heading is a general rule; HTML comments are ignored. Without a vocabulary no heading names a
    tag. Snippet text is ``"<heading made readable>: <section text>"``.

    Texts longer than ``max_chars`` are split at paragraphs (then sentences, then words) into several
    snippets (ids suffixed ``/1``, ``/2``...). Problems raise DataError naming the file and the line.
    """
    spath = str(path)
    if max_chars < 40:
        raise KnowledgeError(f"max_chars must be at least 40, got {max_chars}")
    name = Path(spath).name
    lower = name.lower()
    vocab = None if vocabulary is None else set(vocabulary)
    if lower.endswith(_MARKDOWN_SUFFIXES):
        return _read_markdown(spath, vocab, strict, max_chars)
    if lower.endswith(_JSONL_SUFFIXES):
        return _read_jsonl_knowledge(spath, vocab, strict, max_chars)
    raise DataError(spath, "unsupported knowledge file extension; use .jsonl, .jsonl.gz, .md or .markdown")


def _read_jsonl_knowledge(path: str, vocab: set[str] | None, strict: bool, max_chars: int) -> list[Snippet]:
    name = Path(path).name
    out: list[Snippet] = []
    first_line: dict[str, int] = {}
    dropped: dict[str, None] = {}
    dropped_count = skipped_rows = 0
    for line, record in read_records(path):
        text = record.get("text")
        if not isinstance(text, str) or not text.strip():
            problem = "missing (required)" if text is None else "must be a non-empty string"
            raise DataError(path, problem, line=line, field="text")
        title = record.get("title")
        if title is not None and not isinstance(title, str):
            raise DataError(path, "must be a string", line=line, field="title")
        snippet_id = record.get("id")
        if snippet_id is None:
            snippet_id = f"{name}:{line}"
        elif isinstance(snippet_id, int) and not isinstance(snippet_id, bool):
            snippet_id = str(snippet_id)
        elif not isinstance(snippet_id, str) or not snippet_id.strip():
            raise DataError(path, "must be a non-empty string", line=line, field="id")
        if snippet_id in first_line:
            raise DataError(
                path,
                f"duplicate id '{snippet_id}' (first on line {first_line[snippet_id]})",
                line=line,
                field="id",
            )
        first_line[snippet_id] = line
        raw_tags = record.get("tags")
        if raw_tags is None:
            raw_tags = []
        if not isinstance(raw_tags, list) or not all(isinstance(t, str) and t.strip() for t in raw_tags):
            raise DataError(path, "must be a list of non-empty strings", line=line, field="tags")
        tags = list(dict.fromkeys(raw_tags))
        if vocab is not None:
            unknown = [t for t in tags if t not in vocab]
            if unknown:
                if strict:
                    raise DataError(
                        path, f"tag '{unknown[0]}' is not in the vocabulary", line=line, field="tags"
                    )
                dropped_count += len(unknown)
                for tag in unknown[:_MAX_WARN_EXAMPLES]:
                    if len(dropped) < _MAX_WARN_EXAMPLES:
                        dropped.setdefault(tag, None)
                tags = [t for t in tags if t in vocab]
                if not tags:
                    skipped_rows += 1
                    continue
        prefix = f"{' '.join(title.split())}: " if title and title.strip() else ""
        out.extend(_snippets(snippet_id, prefix, _paragraphs(text), tuple(tags), name, max_chars))
    if dropped_count:
        logger.warning(
            "%s: dropped %d tag(s) not in the vocabulary, e.g. %s; skipped %d row(s) left with no tag",
            path,
            dropped_count,
            ", ".join(repr(t) for t in dropped),
            skipped_rows,
        )
    if not out:
        logger.warning("%s: no knowledge snippets in the file", path)
    return out


def _read_text(path: str) -> str:
    p = Path(path)
    if p.is_dir():
        raise DataError(path, "is a directory, expected a file")
    try:
        data = p.read_bytes()
    except FileNotFoundError as exc:
        raise DataError(path, "file not found") from exc
    except OSError as exc:
        raise DataError(path, f"cannot read: {exc.strerror or exc}") from exc
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(path, f"not valid UTF-8 text: {exc.reason}", line=line) from exc


def _heading_tags(heading: str, lookup: dict[str, str], path: str, line: int, strict: bool) -> list[str]:
    """The tags a heading names (see load_knowledge_file); [] when it names none."""
    plain = heading.strip().strip("*").strip()
    whole = plain.strip("`'\"").strip().rstrip(":").strip().lower()
    if whole in lookup:
        return [lookup[whole]]
    parts = [p.strip().strip("`'\"").strip().lower() for p in _TAG_SEPARATORS_RE.split(plain)]
    parts = [p for p in parts if p]
    if len(parts) > 1 and all(p in lookup for p in parts):
        return list(dict.fromkeys(lookup[p] for p in parts))
    named = []
    for token in _BACKTICKED_RE.findall(plain):
        key = token.strip().lower()
        if key in lookup:
            named.append(lookup[key])
        elif strict:
            raise DataError(path, f"heading names `{token}`, which is not in the vocabulary", line=line)
        else:
            logger.warning(
                "%s, line %d: heading names `%s`, which is not in the vocabulary", path, line, token
            )
    return list(dict.fromkeys(named))


def _read_markdown(path: str, vocab: set[str] | None, strict: bool, max_chars: int) -> list[Snippet]:
    name = Path(path).name
    # Comments become blank lines of the same count, so that line numbers stay right.
    text = _COMMENT_RE.sub(lambda m: "\n" * m.group(0).count("\n"), _read_text(path))
    lookup: dict[str, str] = {}
    for tag in sorted(vocab or ()):
        lookup.setdefault(tag.lower(), tag)
    for tag in sorted(vocab or ()):
        lookup.setdefault(readable_tag(tag).lower(), tag)

    # Sections: (heading or None, line, tags, body lines)
    sections: list[tuple[str | None, int, tuple[str, ...], list[str]]] = [(None, 1, (), [])]
    stack: list[tuple[int, tuple[str, ...]]] = []  # (level, effective tags) of the enclosing headings
    in_fence = False
    for line_no, line in enumerate(text.splitlines(), 1):
        if _FENCE_RE.match(line):
            in_fence = not in_fence
        match = None if in_fence else _HEADING_RE.match(line)
        if match is None:
            sections[-1][3].append(line)
            continue
        level, heading = len(match.group(1)), match.group(2).strip()
        while stack and stack[-1][0] >= level:
            stack.pop()
        own = _heading_tags(heading, lookup, path, line_no, strict) if lookup else []
        tags = tuple(own) if own else (stack[-1][1] if stack else ())
        stack.append((level, tags))
        sections.append((heading, line_no, tags, []))

    out: list[Snippet] = []
    used_ids: dict[str, int] = {}
    for heading, _, tags, body in sections:
        paragraphs = _paragraphs("\n".join(body))
        if not paragraphs:
            continue
        slug = re.sub(r"[^0-9a-z]+", "-", heading.lower()).strip("-") if heading else ""
        slug = slug or "preamble"
        used_ids[slug] = used_ids.get(slug, 0) + 1
        if used_ids[slug] > 1:
            slug = f"{slug}-{used_ids[slug]}"
        prefix = f"{readable_tag(heading.replace('`', '').rstrip(':'))}: " if heading else ""
        out.extend(_snippets(f"{name}#{slug}", prefix, paragraphs, tags, name, max_chars))
    if not out:
        logger.warning("%s: no knowledge snippets in the file", path)
    return out


def _paragraphs(text: str) -> list[str]:
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line.rstrip() for line in block.strip("\n").splitlines()]
        paragraph = "\n".join(line for line in lines if line.strip()).strip()
        if paragraph:
            out.append(paragraph)
    return out


def _split_long(text: str, budget: int) -> list[str]:
    """Pieces of at most budget characters: whole sentences where they fit, else words, else characters."""
    pieces: list[str] = []
    for sentence in _SENTENCE_RE.split(text):
        if len(sentence) <= budget:
            pieces.append(sentence)
            continue
        for word in sentence.split():
            while len(word) > budget:
                pieces.append(word[:budget])
                word = word[budget:]
            if word:
                pieces.append(word)
    return _pack(pieces, budget, " ")


def _pack(pieces: list[str], budget: int, joiner: str) -> list[str]:
    chunks: list[str] = []
    current = ""
    for piece in pieces:
        if not current:
            current = piece
        elif len(current) + len(joiner) + len(piece) <= budget:
            current += joiner + piece
        else:
            chunks.append(current)
            current = piece
    if current:
        chunks.append(current)
    return chunks


def _snippets(
    base_id: str, prefix: str, paragraphs: list[str], tags: tuple[str, ...], source: str, max_chars: int
) -> list[Snippet]:
    if len(prefix) > max_chars // 3:
        prefix = _trim(prefix.rstrip(": "), max_chars // 3) + ": "
    budget = max_chars - len(prefix)
    units: list[str] = []
    for paragraph in paragraphs:
        units.extend([paragraph] if len(paragraph) <= budget else _split_long(paragraph, budget))
    chunks = _pack(units, budget, "\n")
    return [
        Snippet(
            id=base_id if len(chunks) == 1 else f"{base_id}/{k}",
            text=prefix + chunk,
            tags=tags,
            source=source,
        )
        for k, chunk in enumerate(chunks, 1)
    ]


# --- build time


def build_knowledge(
    train_items: Iterable[Item],
    tags: Sequence[Tag],
    encoder: Encoder,
    knowledge_files: Sequence[str | os.PathLike[str]] = (),
    item_fields: Sequence[str] = ("text",),
    *,
    strict: bool = False,
    max_chars: int = DEFAULT_MAX_CHARS,
) -> tuple[SampleKnowledgeBase, DomainKnowledgeBase]:
    """Both knowledge bases for a training set: samples of the items that have tags; snippets of the tag
    descriptions and of the knowledge files (their tags checked against ``tags``)."""
    samples = SampleKnowledgeBase.from_items(train_items, encoder, item_fields)
    vocabulary = {t.tag for t in tags}
    snippets = vocabulary_snippets(tags, max_chars)
    for path in knowledge_files:
        snippets.extend(load_knowledge_file(path, vocabulary, strict=strict, max_chars=max_chars))
    vectors = encoder.encode([s.text for s in snippets])
    domain = DomainKnowledgeBase(encoder.id, int(vectors.shape[1]))
    domain.add(snippets, vectors, durable=False)
    return samples, domain


# --- on disk


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        _write_bytes(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _write_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, array, allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())


def _file_digest(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return {"bytes": size, "sha256": digest.hexdigest()}


def _snapshot_number(path: Path) -> int | None:
    match = _SNAPSHOT_RE.match(path.name)
    return int(match.group(1)) if match and path.is_dir() else None


def _write_snapshot(
    root: Path, *, kind: str, encoder_id: str, dim: int, records: list[dict], vectors: np.ndarray
) -> str:
    """Write a snapshot folder and make it the live one; returns its name."""
    if root.exists() and not root.is_dir():
        raise KnowledgeError(f"cannot save a knowledge base to {root}: it is a file")
    root.mkdir(parents=True, exist_ok=True)
    if (root / CURRENT).exists():
        # Refuse to overwrite another kind of base (or something else) in the same folder.
        live = _current_snapshot(root)
        live_kind = _read_manifest(live, None)["kind"]
        if live_kind != kind:
            raise KnowledgeError(f"{root} holds a {live_kind} knowledge base; save the {kind} base elsewhere")
    for stale in root.glob(".tmp-snapshot-*"):  # left by a crash during an earlier save
        shutil.rmtree(stale, ignore_errors=True)
    number = max((n for p in root.iterdir() if (n := _snapshot_number(p)) is not None), default=0) + 1
    name = f"snapshot-{number:06d}-{uuid.uuid4().hex[:8]}"
    tmp = root / f".tmp-{name}"
    tmp.mkdir()
    try:
        lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in records]
        _write_bytes(tmp / RECORDS_NAME, "".join(lines).encode("utf-8"))
        _write_npy(tmp / VECTORS_NAME, np.ascontiguousarray(vectors, dtype=np.float32))
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": kind,
            "encoder_id": encoder_id,
            "dim": dim,
            "count": len(records),
            "files": {n: _file_digest(tmp / n) for n in (RECORDS_NAME, VECTORS_NAME)},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        # The manifest goes last: a folder without one is never taken for a snapshot.
        _write_bytes(tmp / MANIFEST_NAME, json.dumps(manifest, indent=2).encode("utf-8"))
        _fsync_dir(tmp)
        os.replace(tmp, root / name)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_atomically(root / CURRENT, (name + "\n").encode())
    return name


def _prune_snapshots(root: Path, keep: int) -> None:
    live = (root / CURRENT).read_text().strip()
    numbered = sorted((n, p) for p in root.iterdir() if (n := _snapshot_number(p)) is not None)
    for _, old in numbered[:-keep]:
        if old.name != live:
            shutil.rmtree(old, ignore_errors=True)


def _current_snapshot(root: Path) -> Path:
    if not root.exists():
        raise DataError(str(root), "knowledge base folder not found")
    if not root.is_dir():
        raise DataError(str(root), "is a file, expected a knowledge base folder")
    pointer = root / CURRENT
    if not pointer.is_file():
        raise DataError(
            str(root), f"not a knowledge base folder (no {CURRENT} file); build and save one first"
        )
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(str(pointer), f"damaged: cannot read it: {exc}") from exc
    folder = root / name
    if not _SNAPSHOT_RE.match(name) or not folder.is_dir():
        raise DataError(str(pointer), f"damaged: names snapshot '{name}', which does not exist")
    return folder


def _read_manifest(snapshot: Path, kind: str | None) -> dict[str, Any]:
    path = snapshot / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(str(path), "damaged snapshot: manifest missing") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(str(path), f"damaged snapshot: unreadable manifest: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(str(path), f"not a manifest of an {FORMAT} snapshot")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(
            str(path),
            f"format version {manifest.get('format_version')}; this llm4tag reads version {FORMAT_VERSION}",
        )
    for key, types in (("kind", str), ("encoder_id", str), ("dim", int), ("count", int), ("files", dict)):
        if not isinstance(manifest.get(key), types):
            raise DataError(str(path), f"damaged snapshot: '{key}' is missing or invalid")
    if kind is not None and manifest["kind"] != kind:
        raise DataError(str(path), f"holds a {manifest['kind']} knowledge base, not a {kind} knowledge base")
    return manifest


def _read_snapshot(snapshot: Path, manifest: dict[str, Any]) -> tuple[list[tuple[int, dict]], np.ndarray]:
    for name in (RECORDS_NAME, VECTORS_NAME):
        path = snapshot / name
        expected = manifest["files"].get(name)
        if not path.is_file():
            raise DataError(str(path), "damaged snapshot: file missing")
        try:
            actual = _file_digest(path)
        except OSError as exc:
            raise DataError(str(path), f"cannot read: {exc.strerror or exc}") from exc
        if actual != expected:
            raise DataError(str(path), "damaged: its size or checksum differs from the manifest's")
    records: list[tuple[int, dict]] = []
    path = snapshot / RECORDS_NAME
    with open(path, "rb") as fh:
        for line, raw in enumerate(fh, 1):
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise DataError(str(path), f"damaged: invalid JSON: {exc}", line=line) from exc
            if not isinstance(record, dict):
                raise DataError(str(path), "damaged: expected a JSON object", line=line)
            records.append((line, record))
    path = snapshot / VECTORS_NAME
    try:
        vectors = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(str(path), f"damaged: cannot read the vectors: {exc}") from exc
    shape = (manifest["count"], manifest["dim"])
    if len(records) != manifest["count"] or vectors.dtype != np.float32 or vectors.shape != shape:
        raise DataError(
            str(snapshot),
            f"damaged: {len(records)} records and vectors of shape {vectors.shape} ({vectors.dtype}), "
            f"but the manifest says {shape} float32",
        )
    return records, vectors


# --- the append log


def _log_header(kind: str, snapshot: str, encoder_id: str) -> bytes:
    header = {"format": f"{FORMAT}-log", "kind": kind, "snapshot": snapshot, "encoder_id": encoder_id}
    return (json.dumps(header) + "\n").encode("utf-8")


def _log_line(entry: Sample | Snippet, vector: np.ndarray) -> bytes:
    record = entry.to_record()
    # float32 -> float is exact, and JSON writes the shortest repr that reads back to it.
    record["vector"] = [float(x) for x in vector]
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")


def _reset_log(root: Path, kind: str, snapshot: str, encoder_id: str) -> None:
    _write_atomically(root / LOG_NAME, _log_header(kind, snapshot, encoder_id))


@dataclass
class _LogScan:
    records: list[tuple[int, dict]]
    valid_end: int  # bytes of the file that hold complete lines
    needs_newline: bool  # the last complete record lacks its newline
    stale: bool  # the log belongs to another snapshot (ignored)


def _scan_log(path: Path, kind: str, snapshot: str, encoder_id: str, *, quiet: bool = False) -> _LogScan:
    """Read a log: its header must name ``snapshot``; a torn last line is ignored with a warning."""
    scan = _LogScan([], 0, False, False)
    if not path.exists():
        return scan
    try:
        fh = open(path, "rb")  # noqa: SIM115
    except OSError as exc:
        raise DataError(str(path), f"cannot open: {exc.strerror or exc}") from exc
    header_seen = False
    offset = 0
    previous: tuple[int, int, bytes] | None = None  # (line, start offset, raw) held back one line

    def take(line: int, start: int, raw: bytes, last: bool) -> bool:
        nonlocal header_seen
        if not raw.strip(b" \t\r\n\x00"):
            if last:
                return True  # trailing blank or zero-filled bytes: nothing to keep
            scan.valid_end = start + len(raw)
            return True
        try:
            record = json.loads(raw)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as exc:
            if last and header_seen:
                if not quiet:
                    logger.warning(
                        "%s, line %d: ignoring a torn last line (%d bytes; a crash while appending?)",
                        path,
                        line,
                        len(raw),
                    )
                return True
            raise DataError(str(path), f"damaged log: invalid JSON line: {exc}", line=line) from exc
        if not header_seen:
            header_seen = True
            if record.get("format") != f"{FORMAT}-log" or record.get("kind") != kind:
                raise DataError(str(path), f"not a log of a {kind} knowledge base", line=line)
            if record.get("encoder_id") != encoder_id:
                raise DataError(
                    str(path),
                    f"log of encoder '{record.get('encoder_id')}', but the snapshot's is '{encoder_id}'",
                    line=line,
                )
            if record.get("snapshot") != snapshot:
                scan.stale = True
                if not quiet:
                    logger.warning(
                        "%s: ignoring a log written for snapshot %s; the live snapshot %s already holds "
                        "its entries (a crash between a save and the log reset?)",
                        path,
                        record.get("snapshot"),
                        snapshot,
                    )
                return False
        else:
            scan.records.append((line, record))
        scan.valid_end = start + len(raw)
        scan.needs_newline = not raw.endswith(b"\n")
        return True

    with fh:
        try:
            for line, raw in enumerate(fh, 1):
                if previous is not None and not take(*previous, last=False):
                    return _LogScan([], 0, False, True)
                previous = (line, offset, raw)
                offset += len(raw)
        except OSError as exc:
            raise DataError(str(path), f"cannot read: {exc.strerror or exc}") from exc
        if previous is not None and not take(*previous, last=True):
            return _LogScan([], 0, False, True)
    if not header_seen:
        if offset:
            raise DataError(str(path), "damaged log: no header line")
        scan.stale = True  # empty file: start a fresh log
    return scan


def _repair_tail(path: Path, valid_end: int, needs_newline: bool) -> None:
    """Cut a torn last line off and end the last complete line, so that appends start on a new line."""
    with open(path, "r+b") as fh:
        size = fh.seek(0, os.SEEK_END)
        if size == valid_end and not needs_newline:
            return
        fh.truncate(valid_end)
        fh.seek(valid_end)
        if needs_newline:
            fh.write(b"\n")
        fh.flush()
        os.fsync(fh.fileno())


class _AppendLog:
    """An open append-only log: each append is written whole, flushed and fsynced, or cut off again."""

    def __init__(self, path: Path):
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        self._broken = False
        # Replicas of a deployment append to one log: a lock file (not the log, which a save replaces)
        # keeps their appends whole and in one order.
        self._lock_path = path.with_name(path.name + ".lock")

    def append(self, lines: list[bytes]) -> None:
        if self._broken:
            raise KnowledgeError(f"the log {self.path} could not be repaired after a failed write; reload")
        data = b"".join(lines)
        lock = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            start = os.lseek(self._fd, 0, os.SEEK_END)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(self._fd, view)
                    view = view[written:]
                os.fsync(self._fd)
            except BaseException:
                try:
                    os.ftruncate(self._fd, start)
                    os.fsync(self._fd)
                except OSError:
                    self._broken = True
                raise
        finally:
            os.close(lock)  # releases the lock

    def replaced(self) -> bool:
        """Whether the path now names another file than the one open here (a save reset the log)."""
        try:
            return os.stat(self.path).st_ino != os.fstat(self._fd).st_ino
        except FileNotFoundError:
            return True

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
