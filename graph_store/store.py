"""A graph store: the content–tag graph, its two vector indexes, recall, growth, and persistence.

On disk (graph_store/persistence.py) a store is a folder of immutable versions, a CURRENT file naming
the live one, and the journal of writes since (graph_store/journal.py). A store loaded from a folder
writes through the journal and follows what other processes write there; when another process saves
a new version, it reloads that version before it reads or writes again.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from graph_store.ann import VectorIndex, set_threads
from graph_store.config import GraphConfig, RecallConfig
from graph_store.durable import Carry, VersionMoved, append_to_live
from graph_store.errors import EncoderMismatchError, StoreError
from graph_store.graph import (
    BROADER,
    DETERMINISTIC,
    SIMILAR_CC,
    SIMILAR_CT,
    ContentTagGraph,
)
from graph_store.journal import TAG_RECORD, Journal, record_line, tag_record, tag_record_line
from graph_store.metapaths import Candidate, Hits, round_sims, select, select_match
from graph_store.persistence import StoreSave, current_version, read_manifest, read_version, store_folder


def shard_of(item_id: str, num_shards: int) -> int:
    """Owning shard of an item: stable across processes and machines (unlike hash())."""
    return zlib.crc32(item_id.encode("utf-8")) % num_shards


def _search_with_ties(index: VectorIndex, vectors: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per query: (rounded similarities, positions) of the top k hits and of every further hit tied
    with the k-th. The caller breaks ties by key and cuts at k; which of several tied vectors an index
    returns depends on its internal order, which differs between a store and its shards.
    """
    queries = np.asarray(vectors, np.float32)
    queries = queries[None, :] if queries.ndim == 1 else queries
    fetch = k + 1
    sims, ids = index.search(queries, fetch)
    sims = round_sims(sims)
    rows = list(zip(sims, ids, strict=True))
    active = np.arange(len(rows))
    while sims.shape[1] == fetch:  # fewer columns: the index holds no more vectors
        active = active[(ids[:, -1] >= 0) & (sims[:, -1] == sims[:, k - 1])]
        if not len(active):
            break
        fetch *= 2
        sims, ids = index.search(queries[active], fetch)
        sims = round_sims(sims)
        for row, row_sims, row_ids in zip(active.tolist(), sims, ids, strict=True):
            rows[row] = (row_sims, row_ids)
    return rows


class GraphStore:
    """One store, or one content shard of a store (then shard = (index, count))."""

    def __init__(
        self,
        graph: ContentTagGraph,
        content_index: VectorIndex,
        tag_index: VectorIndex,
        config: GraphConfig,
        encoder_id: str,
        shard: tuple[int, int] = (0, 1),
        meta: dict | None = None,
    ):
        if content_index.size != graph.num_contents or tag_index.size != graph.num_tags:
            raise StoreError(
                f"index sizes ({content_index.size} contents, {tag_index.size} tags) do not match the graph "
                f"({graph.num_contents} contents, {graph.num_tags} tags)"
            )
        self.graph = graph
        self.content_index = content_index
        self.tag_index = tag_index
        self.config = config
        self.encoder_id = encoder_id
        self.shard = shard
        # Opaque to the store: what the caller needs to use it the same way later (text fields...).
        self.meta = dict(meta or {})
        self.dim = tag_index.dim
        # Set when loaded from a folder: durable writes go there, and other processes' writes come in.
        self.journal: Journal | None = None
        self.folder: Path | None = None  # the folder the journal continues
        # Set for a view of a version that is not live: it refuses writes (they would go nowhere).
        self.read_only: str | None = None
        self._replayed = 0  # journal records the last load replayed
        # Changed in memory by insert()/write_back() since loaded (not through the journal): a reload
        # would lose that, so a save that finds the folder moved on refuses instead of reloading.
        self._unjournaled = False
        self._replaying = False
        self._write_lock = threading.RLock()

    # -- building ---------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        *,
        item_ids: Sequence[str],
        item_vectors: np.ndarray,
        item_tags: Sequence[Sequence[str]],
        tags: Sequence[str],
        tag_vectors: np.ndarray,
        encoder_id: str,
        config: GraphConfig | None = None,
        item_texts: Sequence[str | None] | None = None,
        tag_descriptions: Sequence[str | None] | None = None,
        shard: tuple[int, int] = (0, 1),
        meta: dict | None = None,
        tag_broader: Sequence[tuple[str, str]] = (),
    ) -> GraphStore:
        """``tag_broader``: the vocabulary's hierarchy as (narrower, broader) tag pairs, kept as tag–tag
        edges (recall does not follow them; see README "SKOS vocabularies")."""
        config = config or GraphConfig()
        set_threads(config.recall.threads)
        if len(item_ids) != len(item_vectors) or len(item_ids) != len(item_tags):
            raise StoreError("item_ids, item_vectors and item_tags must have the same length")
        if len(tags) != len(tag_vectors):
            raise StoreError("tags and tag_vectors must have the same length")
        if len(tags) == 0:
            raise StoreError("a store needs at least one tag")
        if item_vectors.shape[1:] != tag_vectors.shape[1:]:
            raise StoreError(
                f"item vectors are {item_vectors.shape[1:]}-d but tag vectors {tag_vectors.shape[1:]}-d"
            )
        graph = ContentTagGraph(flush_every=config.flush_every)
        graph.add_tags(list(tags), tag_descriptions)
        graph.add_contents(list(item_ids), item_texts)
        pairs_c, pairs_t = [], []
        for pos, item_tag_list in enumerate(item_tags):
            tag_pos = graph.tag_positions(item_tag_list, where=f" (annotation of item '{item_ids[pos]}')")
            pairs_c.extend([pos] * len(tag_pos))
            pairs_t.extend(tag_pos)
        graph.add_deterministic_bulk(np.asarray(pairs_c, np.int64), np.asarray(pairs_t, np.int64))
        if tag_broader:
            graph.add_broader(
                graph.tag_positions([a for a, _ in tag_broader], where=" (narrower tag)"),
                graph.tag_positions([b for _, b in tag_broader], where=" (broader tag)"),
            )
        store = cls(
            graph,
            VectorIndex.build(item_vectors, config.content_index),
            VectorIndex.build(tag_vectors, config.tag_index),
            config,
            encoder_id,
            shard,
            meta,
        )
        if config.materialize_similarity and 0 < len(item_ids) <= config.materialize_similarity_max:
            store._link_similar(np.arange(len(item_ids)), np.asarray(item_vectors, np.float32))
        graph.flush()
        return store

    def _link_similar(self, content_pos: np.ndarray, vectors: np.ndarray, batch: int = 4096) -> None:
        """Similarity edges of the given contents (c–t and c–c), thresholds with top-k fallback."""
        rc = self.config.recall
        ct_edges, cc_edges = [], []
        for lo in range(0, len(content_pos), batch):
            part, vecs = content_pos[lo : lo + batch], vectors[lo : lo + batch]
            if self.config.sim_edges_ct:
                sims, ids = self.tag_index.search(vecs, self.config.sim_edges_ct)
                ct_edges.append(
                    self._passing_edges(part, sims, ids, rc.delta_ct, rc.min_c2t, self.config.sim_edges_ct)
                )
            if self.config.sim_edges_cc:
                sims, ids = self.content_index.search(vecs, self.config.sim_edges_cc + 1)
                # An item is its own nearest neighbour; drop self hits before linking.
                keep = ids != part[:, None]
                sims = np.where(keep, sims, -np.inf)
                order = np.argsort(-sims, axis=1, kind="stable")
                sims = np.take_along_axis(sims, order, 1)[:, : self.config.sim_edges_cc]
                ids = np.take_along_axis(ids, order, 1)[:, : self.config.sim_edges_cc]
                ids = np.where(np.isfinite(sims), ids, -1)
                cc_edges.append(
                    self._passing_edges(part, sims, ids, rc.delta_cc, rc.min_c2c, self.config.sim_edges_cc)
                )
        if ct_edges:
            # One add for the whole call, not one per batch: each add may fold the pending edges into
            # igraph, which rebuilds its edge index, O(|E|) (613 s instead of 20 s for 1M items).
            self.graph.add_similarity(SIMILAR_CT, *(np.concatenate(x) for x in zip(*ct_edges, strict=True)))
        if cc_edges:
            # The graph is undirected: two contents in each other's top list share one edge, not two
            # parallel ones (a pair can span batches, so this runs once over the whole call).
            src, dst, weight = (np.concatenate(x) for x in zip(*cc_edges, strict=True))
            n = np.int64(max(self.graph.num_contents, 1))
            _, first = np.unique(np.minimum(src, dst) * n + np.maximum(src, dst), return_index=True)
            keep = np.sort(first)
            self.graph.add_similarity(SIMILAR_CC, src[keep], dst[keep], weight[keep])

    def _add_edges(self, kind, part, sims, ids, threshold, minimum, cap) -> None:
        self.graph.add_similarity(kind, *self._passing_edges(part, sims, ids, threshold, minimum, cap))

    @staticmethod
    def _passing_edges(part, sims, ids, threshold, minimum, cap):
        passing = (sims >= threshold) | (np.arange(sims.shape[1])[None, :] < min(minimum, cap))
        passing &= ids >= 0
        rows, cols = np.nonzero(passing)
        return part[rows].astype(np.int64), ids[rows, cols].astype(np.int64), sims[rows, cols]

    # -- recall -----------------------------------------------------------------------------------
    def search(
        self, vectors: np.ndarray, recall: RecallConfig | None = None, *, tags_k: int | None = None
    ) -> list[Hits]:
        """Tag and content hits of each query vector, in canonical order (ties broken by key)."""
        rc = recall or self.config.recall
        set_threads(rc.threads)
        tags_k = tags_k or (rc.num_candidates + rc.max_c2c2t)
        tag_rows = _search_with_ties(self.tag_index, vectors, tags_k)
        if rc.c2c_search_k and self.content_index.size:
            nb_rows = _search_with_ties(self.content_index, vectors, rc.c2c_search_k)
        else:
            nb_rows = [(np.zeros(0), np.zeros(0, np.int64))] * len(tag_rows)
        out = []
        ids_of = self.graph.content_ids
        det_tags = self.graph.det_tags
        nb_k = rc.c2c_search_k
        # A row whose similarities strictly decrease (no ties, no missing hits) is already in canonical
        # order; the annotated tags of those rows' neighbours come from one gather for the batch.
        fast = [
            len(ids) > 0 and ids.min() >= 0 and bool((sims[:-1] > sims[1:]).all()) for sims, ids in nb_rows
        ]
        heads = [ids[:nb_k] for (_, ids), is_fast in zip(nb_rows, fast, strict=True) if is_fast]
        fast_tags = iter(self.graph.det_tags_many(np.concatenate(heads)) if heads else ())
        for (tag_sims, tag_ids), (nb_sims, nb_ids), is_fast in zip(tag_rows, nb_rows, fast, strict=True):
            valid = tag_ids >= 0
            t_pos, t_sim = tag_ids[valid], tag_sims[valid]
            order = np.lexsort((t_pos, -t_sim))[:tags_k]
            if is_fast:
                keep = nb_ids[:nb_k].tolist()
                neighbour_ids, neighbour_sims = [ids_of[pos] for pos in keep], nb_sims[:nb_k].tolist()
                neighbour_tags = list(itertools.islice(fast_tags, len(keep)))
            else:
                neighbours = [
                    (sim, ids_of[pos], det_tags(pos))
                    for pos, sim in zip(nb_ids.tolist(), nb_sims.tolist(), strict=True)
                    if pos >= 0
                ]
                neighbours.sort(key=lambda r: (-r[0], r[1]))
                del neighbours[nb_k:]
                neighbour_ids, neighbour_sims = [n[1] for n in neighbours], [n[0] for n in neighbours]
                neighbour_tags = [n[2] for n in neighbours]
            out.append(
                Hits(
                    tag_pos=t_pos[order],
                    tag_sims=t_sim[order],
                    neighbour_ids=neighbour_ids,
                    neighbour_sims=neighbour_sims,
                    neighbour_tags=neighbour_tags,
                    num_tags=self.graph.num_tags,
                )
            )
        return out

    def recall(self, vectors: np.ndarray, recall: RecallConfig | None = None) -> list[list[Candidate]]:
        rc = recall or self.config.recall
        return [select(hits, self.graph.tag_names, rc) for hits in self.search(vectors, rc)]

    def match(self, vectors: np.ndarray, k: int = 20) -> list[list[Candidate]]:
        set_threads(self.config.recall.threads)
        rc = RecallConfig(c2c_search_k=0, num_candidates=k, max_c2c2t=0, threads=self.config.recall.threads)
        return [select_match(hits, self.graph.tag_names, k) for hits in self.search(vectors, rc, tags_k=k)]

    # -- dynamic growth ---------------------------------------------------------------------------
    def insert(
        self,
        item_ids: Sequence[str],
        vectors: np.ndarray,
        tags: Sequence[Sequence[str] | None] | None = None,
        texts: Sequence[str | None] | None = None,
    ) -> None:
        """Add new contents with their similarity edges (and deterministic edges for known tags).

        They are searchable by the next recall: faiss appends to the index in place. On a store loaded
        from a folder this changes memory only, until the next save (:meth:`record` writes durably).
        """
        self._unjournaled = self._unjournaled or not self._replaying
        vectors = np.asarray(vectors, np.float32)
        if len(item_ids) != len(vectors):
            raise StoreError("item_ids and vectors must have the same length")
        # Checked before anything changes: a short texts list would add some vertices to the graph
        # and none to the index, leaving the two out of step.
        if any(len(x) != len(item_ids) for x in (tags, texts) if x is not None):
            raise StoreError("item_ids, tags and texts must have the same length")
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise StoreError(f"vectors must have shape (n, {self.dim}), got {tuple(vectors.shape)}")
        first_row = {item_id: row for row, item_id in reversed(list(enumerate(item_ids)))}
        duplicates = [
            item_id
            for row, item_id in enumerate(item_ids)
            if item_id in self.graph.content_pos or first_row[item_id] != row
        ]
        if duplicates:
            raise StoreError(f"item '{duplicates[0]}' is already in the store or given twice")
        tag_lists = list(tags) if tags is not None else [None] * len(item_ids)
        resolved = [
            self.graph.tag_positions(t or (), where=f" (item '{i}')")
            for i, t in zip(item_ids, tag_lists, strict=True)
        ]
        positions = np.asarray(self.graph.add_contents(list(item_ids), texts), np.int64)
        self.content_index.add(vectors)
        for pos, tag_pos in zip(positions.tolist(), resolved, strict=True):
            if tag_pos:
                self.graph.add_deterministic(pos, tag_pos)
        if self.config.materialize_similarity:
            self._link_similar(positions, vectors)

    def write_back(self, item_id: str, tags: Sequence[str]) -> int:
        """Record final tags of a stored item as deterministic edges; returns how many were new.

        In memory only, as :meth:`insert`; :meth:`record` writes durably.
        """
        self._unjournaled = self._unjournaled or not self._replaying
        pos = self.graph.content_pos.get(item_id)
        if pos is None:
            raise StoreError(f"item '{item_id}' is not in the store; insert it before writing tags back")
        return self.graph.add_deterministic(pos, self.graph.tag_positions(tags, where=f" (item '{item_id}')"))

    def record(
        self,
        item_ids: Sequence[str],
        vectors: np.ndarray,
        tags: Sequence[Sequence[str]],
        texts: Sequence[str | None] | None = None,
    ) -> None:
        """Upsert items with their final tags: new items are inserted, known ones get the tags as edges.

        With a journal (a store loaded from a folder) the writes are on disk before this returns, and
        every process holding the same folder sees them at its next :meth:`sync`.
        """
        vectors = np.asarray(vectors, np.float32)
        texts = list(texts) if texts is not None else [None] * len(item_ids)
        if not len(item_ids) == len(vectors) == len(tags) == len(texts):
            raise StoreError("item_ids, vectors, tags and texts must have the same length")
        if len(item_ids) and (vectors.ndim != 2 or vectors.shape[1] != self.dim):
            raise StoreError(f"vectors must have shape (n, {self.dim}), got {tuple(vectors.shape)}")
        # Checked before anything is written: a journal record must never fail to replay.
        for item_id, item_tags in zip(item_ids, tags, strict=True):
            self.graph.tag_positions(item_tags, where=f" (item '{item_id}')")
        records = [
            {"id": i, "tags": list(t), "text": x, "vector": v}
            for i, t, x, v in zip(item_ids, tags, texts, vectors, strict=True)
        ]
        with self._write_lock:
            if self.read_only is not None:
                raise StoreError(f"cannot write to {self.read_only}")
            if self.journal is None:
                self._upsert(records)
                return
            lines = [record_line(r["id"], r["tags"], r["text"], r["vector"]) for r in records]
            # Another process may have saved a new version: then the write goes to that one's journal.
            append_to_live(lambda: self.journal, lines, self.reload)
            self.sync()

    def add_tags(
        self,
        names: Sequence[str],
        vectors: np.ndarray,
        descriptions: Sequence[str | None] | None = None,
        *,
        encoder_id: str | None = None,
    ) -> None:
        """Add tags to the vocabulary, after every tag it holds; the next recall can return them.

        ``vectors``: the tags' unit vectors from the store's encoder (``encoder_id``, checked when
        given). With a journal the tags are on disk before this returns, every process holding the
        folder adds them at its next :meth:`sync`, and the next save folds them into its version.
        """
        names = list(names)
        with self._write_lock:
            if self.read_only is not None:
                raise StoreError(f"cannot write to {self.read_only}")
            self.sync()  # the tags other processes added count as already in the vocabulary
            vectors, descriptions = self.check_new_tags(names, vectors, descriptions, encoder_id)
            records = [tag_record(*row) for row in zip(names, descriptions, vectors, strict=True)]
            if self.journal is None:
                self._upsert(records)
                return
            lines = [tag_record_line(r) for r in records]
            append_to_live(lambda: self.journal, lines, self.reload)
            self.sync()

    def check_new_tags(
        self,
        names: Sequence[str],
        vectors: np.ndarray,
        descriptions: Sequence[str | None] | None = None,
        encoder_id: str | None = None,
    ) -> tuple[np.ndarray, list[str | None]]:
        """Refuse tags that cannot be added (a blank name, one already in the vocabulary or given twice,
        vectors not of this store's encoder); returns the vectors as float32 rows and the descriptions
        (None where not given)."""
        if encoder_id is not None and encoder_id != self.encoder_id:
            raise EncoderMismatchError(
                f"the tag vectors come from encoder '{encoder_id}', but the store was built with "
                f"'{self.encoder_id}': encode the tags with the store's encoder"
            )
        if not names:
            raise StoreError("no tags to add")
        descriptions = list(descriptions) if descriptions is not None else [None] * len(names)
        if len(descriptions) != len(names):
            raise StoreError(f"{len(descriptions)} descriptions for {len(names)} tags")
        seen: set[str] = set()
        for name in names:
            if not isinstance(name, str) or not name.strip():
                raise StoreError(f"a tag name must be a string with a non-space character, got {name!r}")
            if name in self.graph.tag_pos:
                raise StoreError(f"tag '{name}' is already in the store's vocabulary")
            if name in seen:
                raise StoreError(f"tag '{name}' is given twice")
            seen.add(name)
        vectors = np.asarray(vectors, np.float32)
        if vectors.shape != (len(names), self.dim):
            raise StoreError(
                f"tag vectors must have shape ({len(names)}, {self.dim}) (the store's encoder is "
                f"{self.dim}-d), got {tuple(vectors.shape)}"
            )
        norms = np.linalg.norm(vectors, axis=1)
        bad = np.flatnonzero(~np.isfinite(norms) | (np.abs(norms - 1.0) > 1e-3))
        if len(bad):
            raise StoreError(
                f"the vector of tag '{names[bad[0]]}' is not a unit vector (norm {norms[bad[0]]:.4g}): "
                "the indexes compare unit vectors, encode the tag with the store's encoder"
            )
        return vectors, descriptions

    def sync(self) -> int:
        """Apply journal records written since the last sync (by any process); returns how many.

        When another process saved a new version meanwhile, the store reloads it (with its journal).
        """
        if self.journal is None:
            return 0
        with self._write_lock:
            try:
                records = [record for _, record in self.journal.read_new()]
            except VersionMoved:
                return self.reload()
            if records:
                self._upsert(records)
            return len(records)

    def reload(self) -> int:
        """Load the folder's live version and its journal in place of this one; returns the journal
        records replayed."""
        if self.folder is None or self.journal is None:
            raise StoreError("only a store loaded from a folder can reload")
        with self._write_lock:
            fresh = type(self).load(
                self.folder,
                expected_encoder_id=self.encoder_id,
                recall=self.config.recall,
                journal_dir=self.journal.journal_dir,
            )
            lock = self._write_lock
            self.__dict__.update(fresh.__dict__)
            self._write_lock = lock
            return self._replayed

    def _upsert(self, records: Sequence[dict]) -> None:
        self._replaying = True
        try:
            self._upsert_records(records)
        finally:
            self._replaying = False

    def _upsert_records(self, records: Sequence[dict]) -> None:
        # In journal order: an item record after a tag record may carry that tag.
        items: list[dict] = []
        for record in records:
            if record.get("kind") == TAG_RECORD:
                self._upsert_items(items)
                items = []
                self._add_tag(record)
            else:
                items.append(record)
        self._upsert_items(items)

    def _add_tag(self, record: dict) -> None:
        if record["tag"] in self.graph.tag_pos:
            return  # replayed from an earlier point, or added by another process meanwhile
        self.graph.add_tags([record["tag"]], [record.get("description")])
        self.tag_index.add(np.asarray([record["vector"]], np.float32))

    def _upsert_items(self, records: Sequence[dict]) -> None:
        pending: dict[str, dict] = {}
        for record in records:
            item_id, item_tags = record["id"], list(record.get("tags") or ())
            if item_id in pending:
                pending[item_id]["tags"] = list(dict.fromkeys([*pending[item_id]["tags"], *item_tags]))
            elif item_id in self.graph.content_pos:
                self.write_back(item_id, item_tags)
            else:
                pending[item_id] = {**record, "tags": item_tags}
        if pending:
            new = list(pending.values())
            self.insert(
                [r["id"] for r in new],
                np.asarray([r["vector"] for r in new], np.float32),
                [r["tags"] for r in new],
                [r.get("text") for r in new],
            )

    def owns(self, item_id: str) -> bool:
        return shard_of(item_id, self.shard[1]) == self.shard[0]

    # -- sharding ---------------------------------------------------------------------------------
    def split(self, num_shards: int) -> list[GraphStore]:
        """Partition the contents into shards by shard_of(id); every shard keeps all tags."""
        if num_shards < 1:
            raise StoreError("the number of shards must be at least 1")
        graph = self.graph
        vectors = self.content_index.reconstruct_all()
        tag_vectors = self.tag_index.reconstruct_all()
        owner = np.fromiter(
            (shard_of(i, num_shards) for i in graph.content_ids), np.int64, graph.num_contents
        )
        shards = []
        for index in range(num_shards):
            members = np.flatnonzero(owner == index)
            shards.append(
                GraphStore.build(
                    item_ids=[graph.content_ids[m] for m in members],
                    item_vectors=vectors[members],
                    item_tags=[[graph.tag_names[t] for t in graph.det_tags(m).tolist()] for m in members],
                    tags=graph.tag_names,
                    tag_vectors=tag_vectors,
                    encoder_id=self.encoder_id,
                    config=self.config,
                    item_texts=[graph.content_texts[m] for m in members],
                    tag_descriptions=graph.tag_descriptions,
                    shard=(index, num_shards),
                    meta=self.meta,
                    tag_broader=self.graph.broader_pairs(),
                )
            )
        return shards

    # -- inspection -------------------------------------------------------------------------------
    def stats(self) -> dict:
        _, _, kind, _ = self.graph.edges.arrays()
        counts = np.bincount(kind.astype(np.int64), minlength=4) if len(kind) else np.zeros(4, np.int64)
        hierarchy = {"broader_edges": int(counts[BROADER])} if counts[BROADER] else {}
        return {
            "contents": self.graph.num_contents,
            "tags": self.graph.num_tags,
            "deterministic_edges": int(counts[DETERMINISTIC]),
            "similarity_edges_ct": int(counts[SIMILAR_CT]),
            "similarity_edges_cc": int(counts[SIMILAR_CC]),
            "content_index": self.content_index.kind,
            "tag_index": self.tag_index.kind,
            "shard": list(self.shard),
            **hierarchy,
        }

    # -- persistence ------------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike, *, activate: bool = True) -> Path:
        """Write a new version and switch CURRENT to it atomically; returns the version folder.

        Saving to the folder the store was loaded from folds its journal in: the new version holds
        what this process has applied, and the writes other processes appended while it was written
        move into the new version's journal (none is lost). With activate=False the version is
        written but not live (a sharded store switches all shards after writing every one).
        """
        with self.saving(directory) as save:
            path = save.write()
            if activate:
                save.activate()
        return path

    @contextlib.contextmanager
    def saving(self, directory: str | os.PathLike) -> Iterator[StoreSave]:
        """A save of this store into ``directory``, holding the folder's save lock throughout."""
        folder = store_folder(directory)
        with folder.saving():
            yield StoreSave(self, folder)

    def manifest(self) -> dict:
        return {
            "encoder_id": self.encoder_id,
            "dim": self.dim,
            "shard": list(self.shard),
            "content_index": self.content_index.kind,
            "tag_index": self.tag_index.kind,
            "config": self.config.model_dump(),
            "meta": self.meta,
            "counts": self.stats(),
        }

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike,
        *,
        expected_encoder_id: str | None = None,
        recall: RecallConfig | None = None,
        version: str | None = None,
        journal_dir: str | os.PathLike | None = None,
    ) -> GraphStore:
        """Load the live version (or the named one) of a store folder.

        ``journal_dir``: where the live version's journal is (default: the store folder). Loading
        replays it, so a store returned by load has every write acknowledged so far. A version that
        is not the live one is a read-only view.
        """
        root = Path(directory)
        folder = current_version(root) if version is None else root / version
        if not folder.is_dir():
            raise StoreError(f"store {root} has no version '{version}'")
        manifest = read_manifest(folder)
        if expected_encoder_id is not None and manifest["encoder_id"] != expected_encoder_id:
            raise EncoderMismatchError(
                f"store {root} was built with encoder '{manifest['encoder_id']}', but the encoder in use is "
                f"'{expected_encoder_id}'; rebuild the store with this encoder or configure the original one"
            )
        config = GraphConfig.load(manifest["config"])
        if recall is not None:
            config.recall = recall
        graph, content_index, tag_index = read_version(root, folder, manifest, config)
        store = cls(
            graph,
            content_index,
            tag_index,
            config,
            manifest["encoder_id"],
            tuple(manifest["shard"]),
            manifest.get("meta"),
        )
        if version is not None and version != store_folder(root).live():
            store.read_only = f"version {version} of {root}, which is not the live one (a read-only view)"
            return store
        # If another process makes a newer version live meanwhile, the first sync says so and the
        # store reloads: a loaded store never takes writes it cannot make durable.
        carry = Carry.from_dict(manifest.get("journal_carry"))
        store.journal = Journal(root, folder.name, journal_dir, carry)
        store.folder = root
        store._replayed = store.sync()
        return store
