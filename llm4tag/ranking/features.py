"""Candidates of an item and their features: graph recall's candidates (C2T, C2C2T) together with the
learned recall's top tags and the tags with few annotations closest to the item (reserved slots, so
that a tag nobody has annotated yet can be chosen), each described by what the ranker needs to say
how likely it is right.

Everything here is computed from the store and the learned model the caller passes in; for training
rows these were built without the item (crossfit.py), so a feature never contains the item's own
annotation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from pydantic import Field

from graph_store import GraphStore, RecallConfig, ShardedStore
from graph_store.durable import durable_file
from graph_store.metapaths import Hits, merge_hits, select
from llm4tag.config_section import Section
from llm4tag.ranking.learned import LearnedRecall

LEARNED = "learned"  # provenance of a tag the learned recall proposed
FEW = "few"  # provenance of a tag with few annotations proposed by its cosine to the item (slots)

FEATURES: tuple[str, ...] = (
    # graph recall
    "graph_score", "c2t", "c2c2t", "in_c2t", "in_c2c2t", "in_graph", "graph_rank", "graph_gap",
    # item-tag cosine, for every candidate (C2T only has it for the tags it linked)
    "cosine", "cosine_rank", "cosine_gap",
    # learned recall
    "learned", "in_learned", "learned_rank", "learned_gap",
    # the item's nearest annotated items that carry the tag
    "nb_share", "nb_max_sim", "nb_first_rank", "nb_top1",
    # the tag's annotations in the store
    "popularity", "popularity_share",
    # the item as a whole
    "item_nb_top_sim", "item_nb_mean_sim", "item_nb_mean_tags", "item_learned_top", "item_graph_top",
    "item_candidates",
    # tags with few annotations: whether the tag is one, its cosine's rank among them and how far it
    # stands out of the vocabulary's cosines to the item; the item's best cosine to such a tag and to
    # an annotated one (is the item about something the annotations do not cover?)
    "few", "in_few", "few_rank", "cosine_z", "item_few_top", "item_known_top",
)  # fmt: skip
_INDEX = {name: i for i, name in enumerate(FEATURES)}
_ABSENT_RANK = 50.0  # rank of a tag a path did not propose
_ITEM_NEIGHBOURS = 10  # neighbours the item-level similarity and tag-count features look at
_FEW_CHUNK = 1024  # items per matrix product with the few-annotation tags' vectors


@dataclass
class CandidateSet:
    """One item's candidates (graph first, then learned-only ones) and their feature rows."""

    tags: list[str]
    provenance: list[tuple[str, ...]]  # paths that proposed each tag: c2t, c2c2t, learned
    features: np.ndarray  # (len(tags), len(FEATURES)) float32


class FewTags(Section):
    """Reserved candidate slots for tags with few annotations (``ranking.few_tags``)."""

    section: ClassVar[str] = "ranking.few_tags"

    annotations: int = Field(
        3, ge=0, description="a tag with fewer annotations than this counts as one with few annotations"
    )
    slots: int = Field(
        5,
        ge=0,
        description="candidates reserved per item for the tags with few annotations closest to it "
        "(cosine of the item to the tag's name and description), beside graph and learned recall's",
    )


def contents_of(store: GraphStore | ShardedStore) -> int:
    shards = store.shards if isinstance(store, ShardedStore) else [store]
    return sum(shard.graph.num_contents for shard in shards)


@dataclass
class TagStats:
    """What the features read about the vocabulary: the tags, their vectors, and how many of the
    annotated items the models were fitted on carry each one. Saved with the fitted models, so the
    features of an item are the same in every process that ranks it (the in-process pipeline, the
    Serve Ranker, a bulk actor) whatever the store has grown by since; a refit renews them."""

    tag_names: list[str]
    tag_vectors: np.ndarray  # (tags, dim) unit vectors
    popularity: np.ndarray  # (tags,) annotation counts
    contents: int  # annotated items

    @classmethod
    def from_store(cls, store: GraphStore | ShardedStore) -> TagStats:
        shards = store.shards if isinstance(store, ShardedStore) else [store]
        names = list(shards[0].graph.tag_names)
        counts = np.zeros(len(names), np.float64)
        for shard in shards:
            graph = shard.graph
            if graph.num_contents:
                det = graph.det_tags_many(np.arange(graph.num_contents))
                flat = np.concatenate(det) if det else np.zeros(0, np.int64)
                counts += np.bincount(flat.astype(np.int64), minlength=len(names))
        return cls(names, shards[0].tag_index.reconstruct_all(), counts, contents_of(store))

    def following(self, tag_names: Sequence[str], tag_vectors: np.ndarray) -> TagStats:
        """These statistics over the store's vocabulary as it has grown since the fit (``tag_names`` and
        ``tag_vectors``: all of its tags, in position order): the tags added after the fit join with 0
        annotations, so that the few-tag slots offer them."""
        fitted = len(self.tag_names)
        if list(tag_names[:fitted]) != self.tag_names:
            raise ValueError(
                "the store's vocabulary is not the one its ranking was fitted on (tags are only ever "
                "appended to it): refit the ranking (llm4tag refit)"
            )
        added = len(tag_names) - fitted
        if not added:
            return self
        return TagStats(
            list(tag_names),
            np.concatenate([self.tag_vectors, np.asarray(tag_vectors, np.float32)[fitted:]]),
            np.concatenate([self.popularity, np.zeros(added)]),
            self.contents,
        )

    def save(self, path: Path) -> None:
        with durable_file(path) as fh:
            np.savez(
                fh,
                tag_names=np.asarray(self.tag_names, dtype=object).astype(str),
                tag_vectors=self.tag_vectors,
                popularity=self.popularity,
                contents=np.asarray(self.contents),
            )

    @classmethod
    def load(cls, path: Path) -> TagStats:
        with np.load(path, allow_pickle=False) as data:
            return cls(
                [str(t) for t in data["tag_names"]],
                data["tag_vectors"].astype(np.float32),
                data["popularity"].astype(np.float64),
                int(data["contents"]),
            )


def search_hits(store: GraphStore | ShardedStore, vectors: np.ndarray, recall: RecallConfig) -> list[Hits]:
    """Every shard's hits, merged (what the stage flow's Search + merge gives the ranking)."""
    if isinstance(store, ShardedStore):
        parts = [shard.search(vectors, recall) for shard in store.shards]
        return [merge_hits(p, recall.c2c_search_k) for p in zip(*parts, strict=True)]
    return store.search(vectors, recall)


class CandidateFeatures:
    """Candidates and features of new items from their search hits, one vocabulary's statistics and
    one learned model."""

    def __init__(
        self,
        stats: TagStats,
        learned: LearnedRecall | None,
        recall: RecallConfig,
        learned_k: int = 10,
        few: FewTags | None = None,
    ):
        self.learned = learned
        self.recall = recall
        self.learned_k = learned_k
        self.tag_names = stats.tag_names
        self.tag_pos = {t: i for i, t in enumerate(self.tag_names)}
        self.tag_vectors = stats.tag_vectors
        self.popularity = stats.popularity
        self.contents = max(stats.contents, 1)
        self.few = few or FewTags()
        self.is_few = self.popularity < self.few.annotations
        self.few_pos = np.flatnonzero(self.is_few)
        # The learned recall proposes the tags of its fit; tags added to the store since come after them.
        if learned is not None and learned.tags != self.tag_names[: len(learned.tags)]:
            raise ValueError("the learned recall and the store have different tag vocabularies")

    def compute(self, texts: Sequence[str], vectors: np.ndarray, hits: Sequence[Hits]) -> list[CandidateSet]:
        """``hits``: each item's merged search hits (graph recall selects its candidates from them)."""
        vectors = np.asarray(vectors, np.float32)
        if not (len(texts) == len(vectors) == len(hits)):
            raise ValueError("texts, vectors and hits must have the same length")
        if not len(texts):
            return []
        hits = [h.within(len(self.tag_names)) for h in hits]
        learned = (
            self.learned.predict(texts, vectors, self.learned_k)
            if self.learned is not None
            else [[] for _ in texts]
        )
        few = self._few_cosines(vectors)
        return [
            self._one(h, select(h, self.tag_names, self.recall), lr, v, f)
            for h, lr, v, f in zip(hits, learned, vectors, few, strict=True)
        ]

    def _few_cosines(self, vectors: np.ndarray) -> list[np.ndarray]:
        """Each item's cosine to every tag with few annotations (ordered as ``few_pos``)."""
        if not len(self.few_pos):
            return [np.zeros(0, np.float32)] * len(vectors)
        few_vectors = self.tag_vectors[self.few_pos]
        out: list[np.ndarray] = []
        for start in range(0, len(vectors), _FEW_CHUNK):
            out.extend(vectors[start : start + _FEW_CHUNK] @ few_vectors.T)
        return out

    def _one(
        self,
        hits: Hits,
        graph,
        learned: list[tuple[str, float]],
        vector: np.ndarray,
        few_sims: np.ndarray,
    ) -> CandidateSet:
        order: list[str] = [c.tag for c in graph]
        paths: dict[str, list[str]] = {c.tag: list(c.paths) for c in graph}
        for tag, _ in learned:
            if tag not in paths:
                order.append(tag)
                paths[tag] = []
            paths[tag].append(LEARNED)
        # Reserved slots: the few-annotation tags closest to the item. Graph recall reaches such a
        # tag only through C2T's few slots, where every annotated tag competes; nothing else does.
        few_order = np.argsort(-few_sims, kind="stable")
        for k in few_order[: self.few.slots].tolist():
            tag = self.tag_names[int(self.few_pos[k])]
            if tag not in paths:
                order.append(tag)
                paths[tag] = []
            paths[tag].append(FEW)
        n = len(order)
        x = np.zeros((n, len(FEATURES)), np.float32)
        pos = np.asarray([self.tag_pos[t] for t in order], np.int64)

        graph_top = graph[0].score if graph else 0.0
        for rank, c in enumerate(graph):
            row = x[rank]
            row[_INDEX["graph_score"]] = c.score
            row[_INDEX["c2t"]] = c.c2t_score or 0.0
            row[_INDEX["c2c2t"]] = c.c2c2t_score or 0.0
            row[_INDEX["in_c2t"]] = c.c2t_score is not None
            row[_INDEX["in_c2c2t"]] = c.c2c2t_score is not None
            row[_INDEX["in_graph"]] = 1.0
            row[_INDEX["graph_rank"]] = rank
            row[_INDEX["graph_gap"]] = graph_top - c.score
        x[len(graph) :, _INDEX["graph_rank"]] = _ABSENT_RANK
        x[len(graph) :, _INDEX["graph_gap"]] = graph_top

        cosine = self.tag_vectors[pos] @ vector
        x[:, _INDEX["cosine"]] = cosine
        x[:, _INDEX["cosine_rank"]] = np.argsort(np.argsort(-cosine, kind="stable"), kind="stable")
        x[:, _INDEX["cosine_gap"]] = cosine.max() - cosine

        learned_top = learned[0][1] if learned else 0.0
        x[:, _INDEX["learned_rank"]] = _ABSENT_RANK
        x[:, _INDEX["learned_gap"]] = learned_top
        index_of = {t: i for i, t in enumerate(order)}
        for rank, (tag, score) in enumerate(learned):
            row = x[index_of[tag]]
            row[_INDEX["learned"]] = score
            row[_INDEX["in_learned"]] = 1.0
            row[_INDEX["learned_rank"]] = rank
            row[_INDEX["learned_gap"]] = learned_top - score

        sims = np.asarray(hits.neighbour_sims, np.float32)
        n_nb = len(sims)
        share = np.zeros(n, np.float32)
        max_sim = np.zeros(n, np.float32)
        first = np.full(n, _ABSENT_RANK, np.float32)
        top1 = np.zeros(n, np.float32)
        wanted = {int(p): i for i, p in enumerate(pos.tolist())}
        for rank, (sim, tags) in enumerate(zip(sims.tolist(), hits.neighbour_tags, strict=True)):
            for t in tags.tolist():
                i = wanted.get(int(t))
                if i is None:
                    continue
                share[i] += 1.0
                if first[i] == _ABSENT_RANK:
                    first[i], max_sim[i] = rank, sim
                    top1[i] = rank == 0
        x[:, _INDEX["nb_share"]] = share / max(n_nb, 1)
        x[:, _INDEX["nb_max_sim"]] = max_sim
        x[:, _INDEX["nb_first_rank"]] = first
        x[:, _INDEX["nb_top1"]] = top1

        counts = self.popularity[pos]
        x[:, _INDEX["popularity"]] = np.log1p(counts)
        x[:, _INDEX["popularity_share"]] = counts / self.contents

        head = sims[:_ITEM_NEIGHBOURS]
        x[:, _INDEX["item_nb_top_sim"]] = head[0] if n_nb else 0.0
        x[:, _INDEX["item_nb_mean_sim"]] = head.mean() if n_nb else 0.0
        x[:, _INDEX["item_nb_mean_tags"]] = (
            np.mean([len(t) for t in hits.neighbour_tags[:_ITEM_NEIGHBOURS]]) if n_nb else 0.0
        )
        x[:, _INDEX["item_learned_top"]] = learned_top
        x[:, _INDEX["item_graph_top"]] = graph_top
        x[:, _INDEX["item_candidates"]] = n

        few = self.is_few[pos]
        x[:, _INDEX["few"]] = few
        x[:, _INDEX["in_few"]] = [FEW in paths[t] for t in order]
        # Rank among the few-annotation tags: how many of them are closer to the item (the tolerance
        # absorbs the last bits by which the batched product differs from this one).
        ranked = np.sort(few_sims)[::-1]
        closer = np.searchsorted(-ranked, -(cosine + 1e-5), side="right")
        x[:, _INDEX["few_rank"]] = np.where(few, closer, _ABSENT_RANK)
        searched = np.asarray(hits.tag_sims, np.float64)
        spread = searched.std() if len(searched) > 1 else 0.0
        x[:, _INDEX["cosine_z"]] = (cosine - searched.mean()) / spread if spread > 0 else 0.0
        x[:, _INDEX["item_few_top"]] = ranked[0] if len(ranked) else 0.0
        annotated = searched[~self.is_few[np.asarray(hits.tag_pos, np.int64)]]
        x[:, _INDEX["item_known_top"]] = annotated[0] if len(annotated) else 0.0
        return CandidateSet(tags=order, provenance=[tuple(paths[t]) for t in order], features=x)
