"""Candidate recall for items: encode them, then ask the graph store (graph or match-based)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from graph_store import Candidate, GraphStore, ShardedStore, StoreError, open_store
from llm4tag.config import Settings, TextConfig
from llm4tag.data import Item, Tag
from llm4tag.encoder import Encoder, EncoderConfig
from llm4tag.errors import LLM4TagError
from llm4tag.skos import hierarchy, vocabulary_meta
from llm4tag.texts import item_text, tag_text

log = logging.getLogger("llm4tag.recall")
METHODS = ("graph", "match")


@dataclass
class BuildReport:
    contents: int
    tags: int
    skipped_unannotated: int
    encode_seconds: float
    build_seconds: float
    stats: dict
    # The annotated items and their vectors, so the knowledge base need not encode them again.
    annotated: list = field(default_factory=list, repr=False)
    item_vectors: np.ndarray | None = field(default=None, repr=False)


def build_store(
    items: Sequence[Item], tags: Sequence[Tag], settings: Settings, encoder: Encoder, shards: int = 1
) -> tuple[GraphStore | ShardedStore, BuildReport]:
    """A store over the annotated items: only they carry deterministic edges worth following."""
    annotated = [item for item in items if item.tags]
    if not annotated:
        raise LLM4TagError("no annotated items to build a store from: every item lacks 'tags'")
    started = time.perf_counter()
    tag_vectors = encoder.encode([tag_text(t, settings.texts.tag_description_chars) for t in tags])
    item_vectors = encoder.encode([item_text(i, settings.texts.item_fields) for i in annotated])
    encoded = time.perf_counter()
    store: GraphStore | ShardedStore = GraphStore.build(
        item_ids=[i.id for i in annotated],
        item_vectors=item_vectors,
        item_tags=[list(i.tags or ()) for i in annotated],
        tags=[t.tag for t in tags],
        tag_vectors=tag_vectors,
        tag_descriptions=[t.description for t in tags],
        item_texts=[i.text for i in annotated],
        encoder_id=encoder.id,
        config=settings.graph,
        meta={
            "encoder": asdict(settings.encoder),
            "texts": asdict(settings.texts),
            **({"vocabulary": vocabulary} if (vocabulary := vocabulary_meta(tags)) else {}),
        },
        tag_broader=hierarchy(tags),
    )
    if shards > 1:
        store = ShardedStore(store.split(shards))
    report = BuildReport(
        contents=len(annotated),
        tags=len(tags),
        skipped_unannotated=len(items) - len(annotated),
        encode_seconds=encoded - started,
        build_seconds=time.perf_counter() - encoded,
        stats=store.stats(),
        annotated=annotated,
        item_vectors=item_vectors,
    )
    return store, report


class Recaller:
    """A loaded store with the encoder it was built with."""

    def __init__(self, store: GraphStore | ShardedStore, encoder: Encoder, texts: TextConfig):
        self.store = store
        self.encoder = encoder
        self.texts = texts

    @classmethod
    def open(cls, directory: str | Path, settings: Settings | None = None) -> Recaller:
        """Load a store; the encoder and text fields default to those the store was built with."""
        store = open_store(directory)
        meta = store.meta
        if settings is None:
            encoder_config = EncoderConfig(**meta["encoder"]) if "encoder" in meta else EncoderConfig()
            texts = TextConfig(**meta["texts"]) if "texts" in meta else TextConfig()
        else:
            encoder_config, texts = settings.encoder, settings.texts
            store_config = store.config
            store_config.recall = settings.graph.recall
        encoder = Encoder(encoder_config)
        if encoder.id != store.encoder_id:
            raise StoreError(
                f"store {directory} was built with encoder '{store.encoder_id}', but the configured "
                f"encoder is '{encoder.id}'; rebuild the store or configure the encoder it was built with"
            )
        return cls(store, encoder, texts)

    def encode(self, items: Sequence[Item]) -> np.ndarray:
        return self.encoder.encode([item_text(i, self.texts.item_fields) for i in items])

    def recall(
        self, items: Sequence[Item], method: str = "graph", k: int | None = None
    ) -> list[list[Candidate]]:
        if method not in METHODS:
            raise LLM4TagError(f"recall method '{method}' is not one of {', '.join(METHODS)}")
        vectors = self.encode(items)
        if method == "match":
            return self.store.match(vectors, k or self.store.config.recall.num_candidates)
        recall = self.store.config.recall
        if k is not None and k != recall.num_candidates:
            recall = type(recall)(**{**asdict(recall), "num_candidates": k})
        return self.store.recall(vectors, recall)

    def recall_rows(
        self, items: Iterable[Item], method: str = "graph", k: int | None = None, batch_size: int = 1024
    ) -> Iterator[dict]:
        """Output rows ({id, candidates}) in input order, computed a batch at a time."""
        batch: list[Item] = []
        for item in items:
            batch.append(item)
            if len(batch) >= batch_size:
                yield from self._rows(batch, method, k)
                batch = []
        if batch:
            yield from self._rows(batch, method, k)

    def _rows(self, batch: list[Item], method: str, k: int | None) -> Iterator[dict]:
        for item, candidates in zip(batch, self.recall(batch, method, k), strict=True):
            yield {"id": item.id, "candidates": [c.to_dict() for c in candidates]}
