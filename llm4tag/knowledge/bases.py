"""The two knowledge bases of short-term retrieved knowledge injection (paper §3.3.2).

- :class:`SampleKnowledgeBase` holds annotated contents with their correct and incorrect tags
  ("retrieved in-context learning injection"): for an item, the most similar samples become few-shot
  examples. Feedback appends new samples or corrects existing ones, retrievable at once.
- :class:`DomainKnowledgeBase` holds snippets of domain knowledge ("retrieved augmented generation
  injection"): tag descriptions, definitions of terms and manually written tagging rules. For an item and
  its candidate tags, the snippets about those tags or general rules most similar to the item are returned.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from llm4tag.data import Item, Tag
from llm4tag.knowledge.entries import KnowledgeError, Sample, SampleHit, Snippet, SnippetHit
from llm4tag.knowledge.index import KnowledgeBase, _as_queries, _single_thread
from llm4tag.knowledge.sources import DEFAULT_MAX_CHARS, load_knowledge_file, vocabulary_snippets

if TYPE_CHECKING:
    from llm4tag.encoder import Encoder


class SampleKnowledgeBase(KnowledgeBase[Sample]):
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


class DomainKnowledgeBase(KnowledgeBase[Snippet]):
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


def build_knowledge(
    items: Iterable[Item],
    tags: Sequence[Tag],
    encoder: Encoder,
    knowledge_files: Sequence[str | os.PathLike[str]] = (),
    item_fields: Sequence[str] = ("text",),
    *,
    item_vectors: np.ndarray | None = None,
    strict: bool = False,
    max_chars: int = DEFAULT_MAX_CHARS,
) -> tuple[SampleKnowledgeBase, DomainKnowledgeBase]:
    """Both knowledge bases for a training set: samples of the items that have tags; snippets of the tag
    descriptions and of the knowledge files (their tags checked against ``tags``).

    ``item_vectors`` (one row per annotated item, as the graph build encoded them) saves encoding the
    items again.
    """
    annotated = [item for item in items if item.tags]
    samples_list = [Sample.from_item(item, item_fields) for item in annotated]
    if item_vectors is None:
        item_vectors = encoder.encode([s.text for s in samples_list])
    samples = SampleKnowledgeBase.build(samples_list, item_vectors, encoder.id)
    domain = domain_knowledge(tags, encoder, knowledge_files, strict=strict, max_chars=max_chars)
    return samples, domain


def domain_knowledge(
    tags: Sequence[Tag],
    encoder: Encoder,
    knowledge_files: Sequence[str | os.PathLike[str]] = (),
    *,
    strict: bool = False,
    max_chars: int = DEFAULT_MAX_CHARS,
) -> DomainKnowledgeBase:
    """The snippets of the tag descriptions and of the knowledge files (their tags checked against
    ``tags``)."""
    domain = DomainKnowledgeBase.from_vocabulary(tags, encoder, max_chars)
    vocabulary = {t.tag for t in tags}
    extra = [
        snippet
        for path in knowledge_files
        for snippet in load_knowledge_file(path, vocabulary, strict=strict, max_chars=max_chars)
    ]
    if extra:
        domain.add(extra, encoder.encode([s.text for s in extra]), durable=False)
    return domain
