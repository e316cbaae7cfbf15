"""The shared base of the two knowledge bases: entries by id, their vectors in an exact index, and
their life on disk (llm4tag/knowledge/persistence.py)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Self

import faiss
import numpy as np

from graph_store.durable import Carry, VersionLog, VersionMoved, append_to_live
from graph_store.errors import EncoderMismatchError
from llm4tag.errors import DataError
from llm4tag.knowledge.entries import E, KnowledgeError
from llm4tag.knowledge.persistence import (
    RECORDS_NAME,
    VECTORS_NAME,
    check_kind,
    current_snapshot,
    log_line,
    open_log,
    read_manifest,
    read_snapshot,
    snapshot_folder,
    write_snapshot,
)

if TYPE_CHECKING:
    from llm4tag.encoder import Encoder

_UNIT_TOLERANCE = 1e-3
# Tombstoned rows (entries whose vector was replaced) are dropped from the index once they are this many
# and a quarter of it: rebuilding costs one pass over the vectors, so it is amortised over many updates.
_COMPACT_MIN_DEAD = 256


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


class KnowledgeBase(Generic[E]):
    """Entries by id, their vectors in an exact inner-product index, and the persistence of both.

    Rows of the index are append-only: an entry whose vector is replaced leaves a dead row (tombstone)
    that searches skip; dead rows are dropped when they pile up. Every public method is thread-safe.

    A base loaded from (or saved to) a folder follows that folder's log: :meth:`refresh` applies what
    other processes appended, and when another process saved a new snapshot it reloads that one.
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
        self._folder: Path | None = None  # the folder this base was loaded from or last saved to
        self._log: VersionLog | None = None  # that folder's log, followed by refresh()
        self._writable = False  # open_log was called and close_log was not: adds are durable by default

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
        return self._log.path if self._writable and self._log is not None else None

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
                durable = self._writable
            if durable:
                if not self._writable or self._log is None:
                    raise KnowledgeError(
                        f"durable add to a {self.KIND} knowledge base with no open log: load it with "
                        "writable=True or call open_log(folder) after saving it"
                    )
                lines = [log_line(e, v) for e, v in zip(entries, arr, strict=True)]
                # In log order: what others appended first, then these, read back from the log, so
                # that a later refresh never re-applies them over newer changes. Another process may
                # have saved a new snapshot: then they go to that one's log.
                append_to_live(lambda: self._log, lines, self._reload, before=self.refresh)
                self.refresh()
                return
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
        """Write a complete snapshot into ``folder`` atomically and make it the live one; returns it.

        Saving to the folder the base follows folds its log in: the snapshot holds what this process
        has applied, and what other processes appended while it was written moves into the new
        snapshot's log. Afterwards the base follows ``folder`` (and appends there, if writable).
        """
        root = Path(folder)
        check_kind(root, self.KIND)
        versions = snapshot_folder(root)
        with versions.saving(), self._lock:
            own = (
                self._log is not None
                and self._folder is not None
                and self._folder.resolve() == root.resolve()
            )
            carry = None
            if own:
                try:
                    self._log.ensure_own()
                except VersionMoved as exc:
                    raise KnowledgeError(
                        f"another process saved {root} since this one loaded it; reload and save again"
                    ) from exc
                self.refresh()
                covered = self._log.followed
                carry = Carry(self._log.version, covered[1])
            entries, vectors = self._live_rows()
            with versions.new_version() as snapshot:
                write_snapshot(
                    snapshot.path,
                    kind=self.KIND,
                    encoder_id=self.encoder_id,
                    dim=self.dim,
                    records=[e.to_record() for e in entries],
                    vectors=vectors,
                    carry=carry,
                )
            name = snapshot.name
            if own:
                self._log.switch(name, covered, lambda: versions.activate(name))
            else:
                log = open_log(root.resolve(), self.KIND, name, self.encoder_id, None)
                log.start(name, lambda: versions.activate(name))
                self._folder, self._log = root.resolve(), log
            self.refresh()  # what other processes appended while the snapshot was written
        return snapshot.path

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
        also makes later additions durable (see :meth:`open_log`).
        """
        root = Path(folder)
        snapshot = current_snapshot(root)
        manifest = read_manifest(snapshot, cls.KIND)
        if expected_encoder_id is not None and manifest["encoder_id"] != expected_encoder_id:
            raise EncoderMismatchError(
                f"{cls.KIND} knowledge base {root} was built with encoder '{manifest['encoder_id']}', "
                f"but the encoder in use is '{expected_encoder_id}'; rebuild it with this encoder or "
                "configure the original one"
            )
        base = cls(manifest["encoder_id"], manifest["dim"])
        records, vectors = read_snapshot(snapshot, manifest)
        entries = [_entry_from_record(cls.ENTRY, rec, snapshot / RECORDS_NAME, line) for line, rec in records]
        if len({e.id for e in entries}) != len(entries):
            raise DataError(str(snapshot / RECORDS_NAME), "damaged: duplicate entry ids")
        try:
            vectors = _as_vectors(vectors, len(entries), base.dim, "stored vectors")
        except KnowledgeError as exc:
            raise DataError(str(snapshot / VECTORS_NAME), f"damaged: {exc}") from exc
        base._apply(entries, vectors)
        base._folder = root.resolve()
        carry = Carry.from_dict(manifest.get("log_carry"))
        base._log = open_log(base._folder, cls.KIND, snapshot.name, base.encoder_id, carry)
        base._writable = writable
        base.refresh()
        return base

    def refresh(self) -> int:
        """Apply what other processes appended to this base's log since it was read; returns how many.

        Several replicas share one knowledge folder: each appends its own additions and follows the
        others' before it searches. Re-applying an entry changes nothing, so a base also reads back its
        own appends. A new snapshot saved elsewhere is loaded in place of this one.
        """
        if self._log is None:
            return 0
        with self._lock:
            try:
                records = self._log.read_new()
            except VersionMoved:
                return self._reload()
            entries, vectors = [], []
            for line, record in records:
                entries.append(_entry_from_record(self.ENTRY, record, self._log.path, line))
                try:
                    vectors.append(_as_vectors(record.get("vector"), 1, self.dim, "the logged vector"))
                except (KnowledgeError, ValueError, TypeError) as exc:
                    raise DataError(str(self._log.path), str(exc), line=line, field="vector") from exc
            if entries:
                self._apply(entries, np.concatenate(vectors))
            return len(entries)

    def _reload(self) -> int:
        fresh = type(self).load(self._folder, self.encoder_id, writable=self._writable)
        with self._lock:
            lock = self._lock
            self.__dict__.update(fresh.__dict__)
            self._lock = lock
            return len(self)

    def open_log(self, folder: str | os.PathLike[str] | None = None) -> Path:
        """Make :meth:`add` durable by default, appending to ``folder``'s log; returns its path.

        ``folder`` (default: the one this base was loaded from or last saved to) must hold, as its live
        snapshot, the one this base was loaded from or saved as.
        """
        with self._lock:
            if self._folder is None or self._log is None:
                raise KnowledgeError(f"this {self.KIND} knowledge base was never saved: save(folder) first")
            root = Path(folder).resolve() if folder is not None else self._folder
            snapshot = current_snapshot(root)
            if (root, snapshot.name) != (self._folder, self._log.version):
                raise KnowledgeError(
                    f"{root} holds snapshot {snapshot.name}, not the one this base was loaded from or saved "
                    f"as ({self._log.version} in {self._folder}); load it from there or save it there first"
                )
            self._writable = True
            return self._log.path

    def close_log(self) -> None:
        """Later adds are not durable unless asked (and then fail)."""
        with self._lock:
            self._writable = False

    # -- pickling (the base may travel to another process; it reads its folder's log there too)

    def __getstate__(self) -> dict[str, Any]:
        with self._lock:
            skip = ("_lock", "_index", "_log", "_writable")
            state = {k: v for k, v in self.__dict__.items() if k not in skip}
            state["_index_bytes"] = faiss.serialize_index(self._index)
            log = self._log
            state["_log_state"] = None if log is None else (log.version, log.carry, log.position())
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        index_bytes = state.pop("_index_bytes")
        log_state = state.pop("_log_state", None)
        self.__dict__.update(state)
        self._index = faiss.deserialize_index(index_bytes)
        self._lock = threading.RLock()
        self._writable = False
        self._log = None
        if log_state is not None and self._folder is not None:
            # The copy goes on following the folder's log from where the original was.
            self._log = open_log(self._folder, self.KIND, log_state[0], self.encoder_id, log_state[1])
            self._log.resume(log_state[2])


def _entry_from_record(entry_type: type, record: dict[str, Any], path: Path, line: int):
    try:
        return entry_type.from_record(record)
    except (KeyError, TypeError, ValueError) as exc:
        problem = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        raise DataError(str(path), f"bad {entry_type.__name__.lower()} record: {problem}", line=line) from exc
