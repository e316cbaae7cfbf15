"""Candidate recall for items: encode them, then ask the graph store (graph or match-based)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from graph_store import Candidate, EncoderMismatchError, GraphStore, ShardedStore, open_store
from llm4tag.config import Settings, TextConfig
from llm4tag.data import Item
from llm4tag.encoded_text import item_text
from llm4tag.encoder import Encoder, EncoderConfig
from llm4tag.errors import LLM4TagError

METHODS = ("graph", "match")


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
            encoder_config = EncoderConfig.load(meta.get("encoder"))
            texts = TextConfig.load(meta.get("texts"))
        else:
            encoder_config, texts = settings.encoder, settings.texts
            store_config = store.config
            store_config.recall = settings.graph.recall  # the store's own copy of its settings
        encoder = Encoder(encoder_config)
        if encoder.id != store.encoder_id:
            raise EncoderMismatchError(
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
            recall = recall.with_overrides({"num_candidates": k})
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
