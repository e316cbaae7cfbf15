"""A store's tag vocabulary and encoder, read without loading the graph or its indexes: the live
version's tags, then those added since (the journal's tag records, graph_store/journal.py).

The generation and calibration stages need only this; a GPU replica should not hold the graph.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from graph_store.durable import Carry, VersionMoved
from graph_store.errors import StoreError
from graph_store.graph import BROADER, TAG
from graph_store.journal import TAG_LINE_START, Journal
from graph_store.persistence import current_version, read_manifest
from graph_store.shards import SHARDS_FILE


@dataclass(frozen=True)
class StoreVocabulary:
    tags: list[str]
    descriptions: list[str | None]
    encoder_id: str
    num_shards: int
    # What the core keeps about the vocabulary (SKOS URIs, labels, ...: manifest "meta") and the
    # hierarchy's (narrower, broader) tag pairs.
    meta: dict = field(default_factory=dict)
    broader: list[tuple[str, str]] = field(default_factory=list)


def read_vocabulary(
    directory: str | os.PathLike, journal_dir: str | os.PathLike | None = None
) -> StoreVocabulary:
    """``journal_dir``: where the journal is, when not in the store folder (of a sharded store: the
    folder holding the shards' journal folders)."""
    for _ in range(3):
        try:
            return _read_vocabulary(Path(directory), journal_dir)
        except VersionMoved:
            continue  # a save made a new version live while this read: read that one
    return _read_vocabulary(Path(directory), journal_dir)


def _first_shard(
    root: Path, journal_dir: str | os.PathLike | None
) -> tuple[Path, str | os.PathLike | None, int]:
    """The folder and journal folder holding the vocabulary (a sharded store's first shard: every
    shard holds every tag), and the number of shards."""
    if not (root / SHARDS_FILE).exists():
        return root, journal_dir, 1
    try:
        listing = json.loads((root / SHARDS_FILE).read_text())["shards"]
        first = listing[0] if isinstance(listing[0], str) else listing[0]["folder"]
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise StoreError(f"{root} is not a sharded store: {exc}") from exc
    return root / first, (Path(journal_dir) / first if journal_dir is not None else None), len(listing)


def _live_journal(root: Path, journal_dir: str | os.PathLike | None) -> tuple[Path, dict, Journal]:
    folder = current_version(root)
    manifest = read_manifest(folder)
    return (
        folder,
        manifest,
        Journal(root, folder.name, journal_dir, Carry.from_dict(manifest.get("journal_carry"))),
    )


def _read_vocabulary(root: Path, journal_dir: str | os.PathLike | None) -> StoreVocabulary:
    root, journal_dir, num_shards = _first_shard(root, journal_dir)
    folder, manifest, journal = _live_journal(root, journal_dir)
    try:
        vertices = pq.read_table(folder / "vertices.parquet", columns=["vid", "kind", "key", "text"])
    except (OSError, pa.ArrowInvalid) as exc:
        raise StoreError(f"store {root} is damaged: {exc}") from exc
    # Tags were added in position order, so their vertex ids sort them into the graph's tag order.
    tags = vertices.filter(pc.equal(vertices.column("kind"), TAG)).sort_by("vid")
    try:
        edges = pq.read_table(
            folder / "edges.parquet", columns=["src", "dst"], filters=[("kind", "=", BROADER)]
        )
    except (OSError, pa.ArrowInvalid) as exc:
        raise StoreError(f"store {root} is damaged: {exc}") from exc
    key_of = dict(zip(tags.column("vid").to_pylist(), tags.column("key").to_pylist(), strict=True))
    broader = [
        (key_of[a], key_of[b])
        for a, b in zip(edges.column("src").to_pylist(), edges.column("dst").to_pylist(), strict=True)
    ]
    names, descriptions = tags.column("key").to_pylist(), tags.column("text").to_pylist()
    for _, record in journal.read_new(only=TAG_LINE_START):
        if record["tag"] not in names:
            names.append(record["tag"])
            descriptions.append(record.get("description"))
    return StoreVocabulary(
        tags=names,
        descriptions=descriptions,
        encoder_id=manifest["encoder_id"],
        num_shards=num_shards,
        meta=dict(manifest.get("meta") or {}),
        broader=broader,
    )


class TagWatch:
    """Whether tags were added to a store since the last look, cheaply enough to ask on every request:
    a read of what was appended to its journal since, parsing only tag records. A save that made
    another version live counts as a change too. Open it before reading the vocabulary it watches:
    a tag added in between then shows as a change (read again), never as one missed."""

    def __init__(self, directory: str | os.PathLike, journal_dir: str | os.PathLike | None = None):
        self.root, self.journal_dir, _ = _first_shard(Path(directory), journal_dir)
        self._journal = self._caught_up()

    def _caught_up(self) -> Journal:
        for _ in range(3):
            journal = _live_journal(self.root, self.journal_dir)[2]
            try:
                journal.read_new(only=TAG_LINE_START)
            except VersionMoved:
                continue  # a save made a new version live while this read: follow that one
            return journal
        raise StoreError(f"store {self.root} keeps moving to new versions: no journal to follow")

    def moved(self) -> bool:
        """Whether a tag was added (or another version made live) since the last call."""
        try:
            return bool(self._journal.read_new(only=TAG_LINE_START))
        except VersionMoved:
            self._journal = self._caught_up()
            return True
