"""The review queue: tags the service was unsure of, waiting for an expert's accept, reject or replace.

Tags whose confidence falls in an uncertain band around the cut (``pipeline.threshold``) enter the
queue from online requests and from bulk outputs (``llm4tag review import``). A reviewer's decision is
feedback (``POST /v1/feedback`` naming the entry in the ``X-Review-Entry`` header): accept marks the tag
correct, reject marks it incorrect, replace marks it incorrect and another tag correct.

Storage is one SQLite database (standard library; WAL journal, ``synchronous=FULL``): a committed
transaction survives a crash or power loss, and processes on one machine (the ingress replicas, the
``review import`` verb) share it safely. An entry leaves the queue in three steps, each its own
transaction:

1. ``begin``: pending -> applying, with the decision and its feedback body recorded. Only one of two
   reviewers deciding the same entry at once gets here; the other is told who decided what
   (:class:`AlreadyDecided`), so no decision is applied twice and none silently overwrites another.
2. the caller writes the feedback durably (graph journal + sample log);
3. ``finish``: applying -> decided. A failed write calls ``abort`` (back to pending, the decision
   dropped, the reviewer told). A crash between 2 and 3 leaves the entry applying with its feedback
   recorded: :meth:`ReviewQueue.stale` hands it to the next process that asks, which writes the same
   feedback again (feedback merges per tag, so writing it twice leaves the same state) and finishes it.

SQLite's WAL needs the clients on one machine: keep the queue file on a local disk of the node that
runs the ingress (its default place is beside the store's journal, ``STORE/review/queue.sqlite3``);
on a cluster whose store lives on a network volume, point ``review.queue`` at a node-local path and
keep the ingress on that node.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, model_validator

from llm4tag.config_section import Section
from llm4tag.service.refusal import Refusal

DECISIONS = ("accept", "reject", "replace")
STATES = ("pending", "applying", "decided")
REVIEW_HEADER = "X-Review-Entry"
REVIEWER_HEADER = "X-Reviewer"
QUEUE_FILE = Path("review") / "queue.sqlite3"
# SQLite's integers are 64-bit: a larger number from a request (an entry, an offset) would raise
# OverflowError in the driver, so it is answered before it reaches the database.
MAX_ROW_NUMBER = 2**63 - 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    entry INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    item_id TEXT NOT NULL,
    text TEXT NOT NULL,
    fields TEXT NOT NULL DEFAULT '{}',
    tag TEXT NOT NULL,
    confidence REAL,
    kept INTEGER NOT NULL,
    source TEXT,
    recall_score REAL,
    via TEXT,
    origin TEXT NOT NULL,
    created REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    decision TEXT,
    replacement TEXT,
    reviewer TEXT,
    feedback TEXT,
    started REAL,
    decided REAL
);
CREATE INDEX IF NOT EXISTS entries_by_state ON entries (state, confidence);
CREATE INDEX IF NOT EXISTS entries_by_item ON entries (item_id);
"""


class ReviewError(Refusal):
    """A review request that cannot be carried out (422 by default)."""

    status = 422


class AlreadyDecided(ReviewError):
    def __init__(self, entry: dict):
        who = f" by {entry['reviewer']}" if entry.get("reviewer") else ""
        what = entry.get("decision") or "?"
        if entry.get("replacement"):
            what += f" -> {entry['replacement']}"
        state = "is being decided" if entry["state"] == "applying" else "was decided"
        super().__init__(f"review entry {entry['entry']} {state}{who} ({what})", REVIEW_HEADER, 409)
        self.entry = entry


class ReviewSettings(Section):
    """The review queue (the `review:` argument of the Serve application; `llm4tag review import`)."""

    section: ClassVar[str] = "review"

    band: tuple[float, float] | None = Field(
        None, description="confidences [low, high] that enter the queue; default: the cut +- margin"
    )
    margin: float = Field(0.15, ge=0.0, le=1.0, description="half-width of the default band")
    queue: str | None = Field(None, description="the queue's SQLite file; default STORE/review/queue.sqlite3")
    online: bool = Field(True, description="queue uncertain tags of online requests (/v1/tag, Annif suggest)")
    stale_s: float = Field(
        60.0, gt=0, description="an entry left 'applying' this long (its writer died) is finished by another"
    )

    @model_validator(mode="after")
    def _ordered(self) -> ReviewSettings:
        if self.band is not None and not 0.0 <= self.band[0] <= self.band[1] <= 1.0:
            raise ValueError(f"band must satisfy 0 <= low <= high <= 1, got {list(self.band)}")
        return self

    def band_around(self, cut: float) -> tuple[float, float]:
        if self.band is not None:
            return self.band
        return max(0.0, cut - self.margin), min(1.0, cut + self.margin)

    def queue_path(self, store: str | os.PathLike[str]) -> Path:
        return Path(self.queue) if self.queue else Path(store) / QUEUE_FILE


@dataclass(frozen=True)
class Candidate:
    """One uncertain tag of one item, as it enters the queue."""

    item_id: str
    text: str
    tag: str
    confidence: float | None
    kept: bool
    origin: str
    source: str | None = None
    recall_score: float | None = None
    via: tuple[str, ...] = ()
    fields: Mapping[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        # The same tag of the same item (same text) enters once, however often it is tagged again.
        digest = hashlib.sha256(self.text.encode()).hexdigest()[:16]
        return f"{self.item_id}\x1f{self.tag}\x1f{digest}"


def uncertain_tags(
    row: Mapping[str, Any],
    text: str,
    band: tuple[float, float],
    origin: str,
    fields: Mapping[str, str] | None = None,
) -> list[Candidate]:
    """The tags of one output row (kept ``tags`` and calibration's ``dropped``) whose confidence lies in
    ``band``; tags without a confidence (calibration off) never enter."""
    low, high = band
    found = []
    for kept, key in ((True, "tags"), (False, "dropped")):
        for tag in row.get(key) or ():
            confidence = tag.get("confidence")
            if confidence is None or confidence != confidence or not low <= confidence <= high:
                continue
            found.append(
                Candidate(
                    item_id=str(row["id"]),
                    text=text,
                    tag=tag["tag"],
                    confidence=float(confidence),
                    kept=kept,
                    origin=origin,
                    source=tag.get("source"),
                    recall_score=tag.get("recall_score"),
                    via=tuple(tag.get("via") or ()),
                    fields=dict(fields or {}),
                )
            )
    return found


def feedback_for(entry: Mapping[str, Any], decision: str, replacement: str | None = None) -> dict:
    """The feedback body (``POST /v1/feedback``) that carries a decision on an entry."""
    if decision not in DECISIONS:
        raise ReviewError(f"decision must be one of {', '.join(DECISIONS)}, got {decision!r}", "decision")
    body: dict[str, Any] = {
        "id": entry["item_id"],
        "text": entry["text"],
        **json.loads(entry["fields"] or "{}"),
    }
    if decision == "accept":
        return {**body, "tags": [entry["tag"]]}
    if decision == "reject":
        return {**body, "incorrect": [entry["tag"]]}
    if not replacement or replacement == entry["tag"]:
        raise ReviewError("replace needs another tag", "replacement")
    return {**body, "tags": [replacement], "incorrect": [entry["tag"]]}


def decision_of(
    entry: Mapping[str, Any], item_id: str, text: str, tags: Sequence[str], incorrect: Sequence[str]
) -> tuple[str, str | None]:
    """Which decision a feedback item carries on an entry; a body that decides something else (another
    item, other text, other tags) is refused rather than guessed at."""
    if item_id != entry["item_id"] or text != entry["text"]:
        raise ReviewError(
            f"the feedback is about item {item_id!r}, review entry {entry['entry']} about "
            f"{entry['item_id']!r}"
            " (with its text as queued)",
            "id",
        )
    tag, tags, incorrect = entry["tag"], list(tags), list(incorrect)
    if tags == [tag] and not incorrect:
        return "accept", None
    if not tags and incorrect == [tag]:
        return "reject", None
    if len(tags) == 1 and incorrect == [tag]:
        return "replace", tags[0]
    raise ReviewError(
        f"review entry {entry['entry']} is decided by tags=[{tag!r}] (accept), incorrect=[{tag!r}] (reject) "
        f"or tags=[other], incorrect=[{tag!r}] (replace); got tags={tags}, incorrect={incorrect}",
        "tags",
    )


class ReviewQueue:
    """The queue in one SQLite file; every method opens its own connection (thread- and process-safe)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(_SCHEMA)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk (WAL fsynced) before it returns, which "durable" promises.
            db.execute("PRAGMA synchronous=FULL")
            yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as db:
            # IMMEDIATE takes the write lock first: two deciders serialise instead of both reading
            # 'pending' and failing to upgrade (or both succeeding, which is the bug it prevents).
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # -- entering

    def add(self, candidates: Iterable[Candidate]) -> int:
        """Queue candidates (one transaction); those already queued are left as they are. Returns how many
        were new."""
        now = time.time()
        rows = [
            (
                c.key,
                c.item_id,
                c.text,
                json.dumps(dict(c.fields), sort_keys=True),
                c.tag,
                c.confidence,
                int(c.kept),
                c.source,
                c.recall_score,
                json.dumps(list(c.via)),
                c.origin,
                now,
            )
            for c in candidates
        ]
        if not rows:
            return 0
        with self._transaction() as db:
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO entries (key, item_id, text, fields, tag, confidence, kept, source,"
                " recall_score, via, origin, created) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                rows,
            )
            return db.total_changes - before

    # -- reading

    def get(self, entry: int) -> dict:
        if not 0 <= entry <= MAX_ROW_NUMBER:
            raise ReviewError(f"no review entry {entry}", REVIEW_HEADER, 404)
        with self._connect() as db:
            row = db.execute("SELECT * FROM entries WHERE entry = ?", (entry,)).fetchone()
        if row is None:
            raise ReviewError(f"no review entry {entry}", REVIEW_HEADER, 404)
        return _entry(row)

    def entries(
        self,
        state: str = "pending",
        limit: int = 50,
        offset: int = 0,
        cut: float = 0.5,
        item_id: str | None = None,
    ) -> list[dict]:
        """Entries in a state; pending ones most uncertain first (closest to the cut), others newest first."""
        if state not in STATES:
            raise ReviewError(f"state must be one of {', '.join(STATES)}, got {state!r}", "state")
        if not 0 <= offset <= MAX_ROW_NUMBER:
            raise ReviewError(f"must be within 0..{MAX_ROW_NUMBER}", "offset")
        order = (
            "ABS(confidence - ?), entry" if state == "pending" else "COALESCE(decided, started, created) DESC"
        )
        where, args = "state = ?", [state]
        if item_id is not None:
            where, args = where + " AND item_id = ?", [*args, item_id]
        params = [*args, *([cut] if state == "pending" else []), limit, offset]
        with self._connect() as db:
            rows = db.execute(
                f"SELECT * FROM entries WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?", params
            )
            return [_entry(r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._connect() as db:
            found = dict(db.execute("SELECT state, COUNT(*) FROM entries GROUP BY state").fetchall())
        return {state: int(found.get(state, 0)) for state in STATES}

    # -- deciding

    def begin(
        self,
        entry: int,
        decision: str,
        replacement: str | None,
        reviewer: str | None,
        feedback: Mapping[str, Any],
    ) -> dict:
        """pending -> applying with the decision recorded; :class:`AlreadyDecided` when another got there."""
        with self._transaction() as db:
            row = db.execute("SELECT * FROM entries WHERE entry = ?", (entry,)).fetchone()
            if row is None:
                raise ReviewError(f"no review entry {entry}", REVIEW_HEADER, 404)
            if row["state"] != "pending":
                raise AlreadyDecided(_entry(row))
            db.execute(
                "UPDATE entries SET state = 'applying', decision = ?, replacement = ?, reviewer = ?,"
                " feedback = ?, started = ? WHERE entry = ?",
                (decision, replacement, reviewer, json.dumps(dict(feedback)), time.time(), entry),
            )
            row = db.execute("SELECT * FROM entries WHERE entry = ?", (entry,)).fetchone()
        return _entry(row)

    def finish(self, entry: int) -> dict:
        """applying -> decided: the feedback is durable; the entry has left the queue."""
        with self._transaction() as db:
            db.execute(
                "UPDATE entries SET state = 'decided', decided = ? WHERE entry = ? AND state = 'applying'",
                (time.time(), entry),
            )
            row = db.execute("SELECT * FROM entries WHERE entry = ?", (entry,)).fetchone()
        return _entry(row)

    def abort(self, entry: int) -> None:
        """applying -> pending: the feedback could not be written, the decision is dropped."""
        with self._transaction() as db:
            db.execute(
                "UPDATE entries SET state = 'pending', decision = NULL, replacement = NULL, reviewer = NULL,"
                " feedback = NULL, started = NULL WHERE entry = ? AND state = 'applying'",
                (entry,),
            )

    def stale(self, older_than_s: float) -> list[dict]:
        """Entries left applying longer than ``older_than_s`` (their writer died), each taken over by this
        caller: its ``started`` is moved on, so that two callers do not both take one."""
        now = time.time()
        taken = []
        with self._connect() as db:  # the common case, nothing stale, takes no write lock
            if not db.execute(
                "SELECT 1 FROM entries WHERE state = 'applying' AND started < ? LIMIT 1",
                (now - older_than_s,),
            ).fetchone():
                return []
        with self._transaction() as db:
            rows = db.execute(
                "SELECT * FROM entries WHERE state = 'applying' AND started < ?", (now - older_than_s,)
            ).fetchall()
            for row in rows:
                db.execute("UPDATE entries SET started = ? WHERE entry = ?", (now, row["entry"]))
                taken.append(_entry(row))
        return taken


def _entry(row: sqlite3.Row) -> dict:
    entry = dict(row)
    entry["kept"] = bool(entry["kept"])
    entry["via"] = json.loads(entry["via"] or "[]")
    entry.pop("key", None)
    return entry


def read_bulk_rows(path: str | os.PathLike[str]) -> Iterator[dict]:
    """Rows of a ``llm4tag tag`` output: a bulk output folder (its Parquet files) or one file."""
    import pyarrow.parquet as pq

    from llm4tag.data import read_records

    target = Path(path)
    if target.is_dir():
        files = sorted(p for p in target.glob("*.parquet") if not p.name.startswith("."))
        if not files:
            raise ReviewError(f"{target} holds no Parquet files of a bulk output", "output")
        for file in files:
            yield from pq.read_table(file).to_pylist()
    else:
        for _, record in read_records(str(target)):
            yield record


def import_rows(
    queue: ReviewQueue,
    rows: Iterable[Mapping[str, Any]],
    texts: Mapping[str, tuple[str, Mapping[str, str]]],
    band: tuple[float, float],
    origin: str,
    chunk: int = 1000,
) -> dict:
    """Queue the uncertain tags of output rows; ``texts`` maps an id to its text and other text fields
    (from the input the rows were tagged from). Returns counts."""
    counts = {"rows": 0, "uncertain": 0, "added": 0, "missing_text": 0, "rows_without_dropped": 0}
    pending: list[Candidate] = []
    for row in rows:
        counts["rows"] += 1
        if row.get("dropped") is None:
            counts["rows_without_dropped"] += 1
        source = texts.get(str(row["id"]))
        if source is None:
            counts["missing_text"] += 1
            continue
        found = uncertain_tags(row, source[0], band, origin, source[1])
        counts["uncertain"] += len(found)
        pending.extend(found)
        if len(pending) >= chunk:
            counts["added"] += queue.add(pending)
            pending = []
    counts["added"] += queue.add(pending)
    return counts
