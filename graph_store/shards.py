"""A store split into content shards: each shard holds its contents and every tag.

Recall searches every shard, merges the hits per item and selects once, so the candidates equal
those of the unsharded store (exactly, with exact indexes). A Serve replica holds one shard.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from graph_store.config import RecallConfig
from graph_store.durable import CURRENT, write_atomically
from graph_store.errors import StoreError
from graph_store.metapaths import Candidate, select_merged
from graph_store.store import GraphStore, shard_of

SHARDS_FILE = "shards.json"


def shard_folder(index: int, count: int) -> str:
    return f"shard-{index:03d}-of-{count:03d}"


class ShardedStore:
    def __init__(self, shards: Sequence[GraphStore]):
        if not shards:
            raise StoreError("a sharded store needs at least one shard")
        count = len(shards)
        if sorted(s.shard for s in shards) != [(i, count) for i in range(count)]:
            raise StoreError(f"shards {[s.shard for s in shards]} are not a complete set of {count}")
        if len({s.encoder_id for s in shards}) != 1:
            raise StoreError("shards disagree on the encoder")
        self.shards = sorted(shards, key=lambda s: s.shard[0])
        self._vocabulary()
        self.config = self.shards[0].config
        self.encoder_id = self.shards[0].encoder_id
        self.meta = self.shards[0].meta

    @property
    def tag_names(self) -> list[str]:
        return self._vocabulary()

    def _vocabulary(self) -> list[str]:
        """The vocabulary: the longest of the shards' (each shard's is a prefix of it, as tags are only
        ever appended; a shard lacks the last ones while an add is written or after it was cut short).
        Read from the shards each time, so it follows their syncs and reloads."""
        vocabularies = [s.graph.tag_names for s in self.shards]
        longest = max(vocabularies, key=len)
        if any(v != longest[: len(v)] for v in vocabularies):
            raise StoreError("shards disagree on the tag vocabulary")
        return longest

    def incomplete_tags(self) -> list[str]:
        """Tags some shard lacks (an add cut short between shards), in vocabulary order."""
        return self.tag_names[min(s.graph.num_tags for s in self.shards) :]

    def add_tags(self, names, vectors, descriptions=None, *, encoder_id=None) -> None:
        """Add tags to every shard, through each shard's journal (:meth:`GraphStore.add_tags`).

        The shards are written one after another: a tag that an add cut short left in some shards only
        is written to the others by adding it again, before any other tag, so that every shard
        holds the tags in the same positions.
        """
        self.sync()
        names = list(names)
        vectors, descriptions = np.asarray(vectors, np.float32), list(descriptions or [None] * len(names))
        for shard, rows in zip(
            self.shards, self.check_new_tags(names, vectors, descriptions, encoder_id), strict=True
        ):
            if rows:
                shard.add_tags(
                    [names[i] for i in rows],
                    vectors[rows],
                    [descriptions[i] for i in rows],
                    encoder_id=encoder_id,
                )

    def check_new_tags(self, names, vectors, descriptions=None, encoder_id=None) -> list[list[int]]:
        """Refuse tags that cannot be added (:meth:`GraphStore.check_new_tags`, a tag already in every
        shard, an add cut short that they do not complete); returns the rows each shard lacks."""
        names = list(names)
        vectors, descriptions = np.asarray(vectors, np.float32), list(descriptions or [None] * len(names))
        if not names:
            raise StoreError("no tags to add")
        if len(vectors) != len(names) or len(descriptions) != len(names):
            raise StoreError(
                f"{len(vectors)} vectors and {len(descriptions)} descriptions for {len(names)} tags"
            )
        lacking = self.incomplete_tags()
        if lacking and names[: len(lacking)] != lacking:
            raise StoreError(
                f"an earlier add was cut short: tags {', '.join(map(repr, lacking))} are in some shards "
                "only; add them again, first, to complete it"
            )
        rows = [[i for i, name in enumerate(names) if name not in s.graph.tag_pos] for s in self.shards]
        known = [name for name in names if all(name in s.graph.tag_pos for s in self.shards)]
        if known:
            raise StoreError(f"tag '{known[0]}' is already in the store's vocabulary")
        for shard, part in zip(self.shards, rows, strict=True):
            if part:
                shard.check_new_tags(
                    [names[i] for i in part], vectors[part], [descriptions[i] for i in part], encoder_id
                )
        return rows

    def recall(self, vectors: np.ndarray, recall: RecallConfig | None = None) -> list[list[Candidate]]:
        rc = recall or self.config.recall
        return select_merged([shard.search(vectors, rc) for shard in self.shards], self.tag_names, rc)

    def match(self, vectors: np.ndarray, k: int = 20) -> list[list[Candidate]]:
        # Tags are replicated in every shard, so one shard answers match-based recall.
        return self.shards[0].match(vectors, k)

    def owner(self, item_id: str) -> GraphStore:
        return self.shards[shard_of(item_id, len(self.shards))]

    def insert(self, item_ids, vectors, tags=None, texts=None) -> None:
        vectors = np.asarray(vectors, np.float32)
        # Check everything before any shard changes: a bad item must not leave the others inserted
        # in some shards and not in others.
        if any(len(x) != len(item_ids) for x in (vectors, tags, texts) if x is not None):
            raise StoreError("item_ids, vectors, tags and texts must have the same length")
        dim = self.shards[0].dim
        if vectors.ndim != 2 or vectors.shape[1] != dim:
            raise StoreError(f"vectors must have shape (n, {dim}), got {tuple(vectors.shape)}")
        first_row = {item_id: row for row, item_id in reversed(list(enumerate(item_ids)))}
        for row, item_id in enumerate(item_ids):
            if first_row[item_id] != row or item_id in self.owner(item_id).graph.content_pos:
                raise StoreError(f"item '{item_id}' is already in the store or given twice")
            if tags is not None:
                self.shards[0].graph.tag_positions(tags[row] or (), where=f" (item '{item_id}')")
        groups: dict[int, list[int]] = {}
        for row, item_id in enumerate(item_ids):
            groups.setdefault(shard_of(item_id, len(self.shards)), []).append(row)
        for index, rows in groups.items():
            self.shards[index].insert(
                [item_ids[r] for r in rows],
                vectors[rows],
                [tags[r] for r in rows] if tags is not None else None,
                [texts[r] for r in rows] if texts is not None else None,
            )

    def write_back(self, item_id: str, tags: Sequence[str]) -> int:
        return self.owner(item_id).write_back(item_id, tags)

    def record(self, item_ids, vectors, tags, texts=None) -> None:
        """Upsert items in their owning shards (durably, through each shard's journal)."""
        vectors = np.asarray(vectors, np.float32)
        texts = list(texts) if texts is not None else [None] * len(item_ids)
        for item_id, item_tags in zip(item_ids, tags, strict=True):
            self.shards[0].graph.tag_positions(item_tags, where=f" (item '{item_id}')")
        groups: dict[int, list[int]] = {}
        for row, item_id in enumerate(item_ids):
            groups.setdefault(shard_of(item_id, len(self.shards)), []).append(row)
        for index, rows in groups.items():
            self.shards[index].record(
                [item_ids[r] for r in rows], vectors[rows], [tags[r] for r in rows], [texts[r] for r in rows]
            )

    def sync(self) -> int:
        return sum(shard.sync() for shard in self.shards)

    def stats(self) -> dict:
        per = [s.stats() for s in self.shards]
        total = {
            k: sum(p[k] for p in per)
            for k in ("contents", "deterministic_edges", "similarity_edges_ct", "similarity_edges_cc")
        }
        return {**total, "tags": len(self.tag_names), "shards": len(per)}

    def save(self, directory: str | os.PathLike) -> Path:
        """Save every shard, then switch to the new set with one atomic write of shards.json.

        A crash before that write leaves the previous set of shard versions live and intact.
        """
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        if (root / CURRENT).exists():
            raise StoreError(f"{root} holds an unsharded store; save the shards to another folder")
        count = len(self.shards)
        listing = []
        with contextlib.ExitStack() as stack:
            saves = [
                stack.enter_context(shard.saving(root / shard_folder(shard.shard[0], count)))
                for shard in self.shards
            ]
            for shard, save in zip(self.shards, saves, strict=True):
                version = save.write()
                listing.append({"folder": shard_folder(shard.shard[0], count), "version": version.name})
            write_atomically(root / SHARDS_FILE, json.dumps({"shards": listing}, indent=2).encode())
            for save in saves:
                # Each shard folder also stays loadable on its own (a replica holding one shard).
                save.activate()
        return root

    @classmethod
    def load(cls, directory: str | os.PathLike, **kwargs) -> ShardedStore:
        root = Path(directory)
        try:
            listing = json.loads((root / SHARDS_FILE).read_text())["shards"]
            entries = [(e, None) if isinstance(e, str) else (e["folder"], e["version"]) for e in listing]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"{root} is not a sharded store: {exc}") from exc
        return cls([GraphStore.load(root / folder, version=version, **kwargs) for folder, version in entries])


def open_store(directory: str | os.PathLike, **kwargs) -> GraphStore | ShardedStore:
    """Load a store folder, sharded or not."""
    root = Path(directory)
    if (root / SHARDS_FILE).exists():
        return ShardedStore.load(root, **kwargs)
    return GraphStore.load(root, **kwargs)
