"""The durable write journal of a store folder: writes made since its live version, replayed on load.

    STORE/journal.jsonl   {"format": "llm4tag-graph-journal-1", "version": "v000002"}
                          {"id": "q17", "tags": ["card_arrival"], "text": "...", "vector": [...]}
                          {"kind": "tag", "tag": "card_swallowed", "description": "...", "vector": [...]}

An item record is an upsert: a new item is inserted with its vector and tags, a known item gets its
tags as deterministic edges. A tag record adds a tag to the vocabulary (its vertex, and its vector to
the tag index) after every tag before it, so that the tag positions agree in every process that
replays the journal; a record of a tag already there changes nothing. Applying a record twice changes
nothing, so a reader may replay from any earlier point. Appends take an exclusive lock and are fsynced
before they return; several processes (the replicas of one shard) append to and follow the same
journal (:class:`graph_store.durable.VersionLog`).
A save that makes a new version of the folder starts the new version's journal with the records
appended while it was written.

The journal may live in another folder than the store (``journal_dir``): on a cluster whose nodes
each hold a copy of the store (synced from object storage) the journal must be on storage that every
node shares and that gives appends, ``flock`` and ``fsync`` (NFSv4, EFS, Filestore): object stores
give none of the three. The live version is still read from the store's own folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from graph_store.durable import AppendLog, Carry, VersionLog
from graph_store.errors import StoreError

JOURNAL = "journal.jsonl"
LOCK = "journal.lock"  # a separate file: a save replaces the journal, and a lock on it would go too
FORMAT = "llm4tag-graph-journal-1"


TAG_RECORD = "tag"  # the "kind" of a tag record (an item record has none)


def tag_record(name: str, description: str | None, vector: np.ndarray) -> dict:
    return {
        "kind": TAG_RECORD,
        "tag": name,
        "description": description,
        "vector": [float(x) for x in vector],
    }


def tag_record_line(record: dict) -> bytes:
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")


# How every tag record's line starts ("kind" is its first key): a reader of tags alone parses no other.
TAG_LINE_START = json.dumps({"kind": TAG_RECORD})[:-1].encode("utf-8")


def record_line(item_id: str, tags: Sequence[str], text: str | None, vector: np.ndarray) -> bytes:
    record = {"id": item_id, "tags": list(tags), "text": text, "vector": [float(x) for x in vector]}
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")


def _live_version(folder: Path) -> str | None:
    try:
        return (folder / "CURRENT").read_text().strip() or None
    except OSError:
        return None


class Journal(VersionLog):
    """Appends to and follows one store folder's journal for the version loaded from it."""

    def __init__(
        self,
        folder: str | os.PathLike,
        version: str,
        journal_dir: str | os.PathLike | None = None,
        carry: Carry | None = None,
    ):
        self.root = Path(folder)  # the store folder: its CURRENT names the live version
        where = Path(journal_dir) if journal_dir is not None else self.root
        if journal_dir is not None:
            try:
                where.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create the journal folder {where}: {exc.strerror or exc}") from exc
        path = where / JOURNAL

        def error(problem: str, line: int | None) -> StoreError:
            return StoreError(f"{path}{f', line {line}' if line else ''}: {problem}")

        super().__init__(
            AppendLog(path, where / LOCK),
            fields={"format": FORMAT},
            version_key="version",
            version=version,
            live=lambda: _live_version(self.root),
            carry=carry,
            error=error,
            # A journal outside the store folder is shared by nodes that each hold a copy of the
            # store: a header of another version means this copy is not the one the journal
            # continues, never that the journal is a leftover to be replaced (that would erase
            # other nodes' acknowledged writes).
            shared=journal_dir is not None,
            what="journal",
        )
        self.journal_dir = Path(journal_dir) if journal_dir is not None else None

    def foreign(self, other: str | None) -> StoreError:
        return StoreError(
            f"shared journal {self.path} continues store version {other}, but this node's copy of "
            f"{self.root} is version {self.version}: sync the store copy to {other} before serving"
        )
