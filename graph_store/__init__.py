"""The content–tag graph and its indexes: build, recall, insert, persist, shard. Imports no core, no Ray.

The names below load on first use (PEP 562), so that a light module of this package (the durability
layer, graph_store.durable, which every data writer uses) does not pull in faiss and igraph.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Candidate": "graph_store.metapaths",
    "EncoderMismatchError": "graph_store.errors",
    "GraphConfig": "graph_store.config",
    "GraphStore": "graph_store.store",
    "IndexConfig": "graph_store.config",
    "RecallConfig": "graph_store.config",
    "ShardedStore": "graph_store.shards",
    "StoreError": "graph_store.errors",
    "StoreVocabulary": "graph_store.vocabulary",
    "TagWatch": "graph_store.vocabulary",
    "open_store": "graph_store.shards",
    "read_vocabulary": "graph_store.vocabulary",
    "shard_of": "graph_store.store",
}

__all__ = [
    "Candidate",
    "EncoderMismatchError",
    "GraphConfig",
    "GraphStore",
    "IndexConfig",
    "RecallConfig",
    "ShardedStore",
    "StoreError",
    "StoreVocabulary",
    "TagWatch",
    "open_store",
    "read_vocabulary",
    "shard_of",
]

if TYPE_CHECKING:
    from graph_store.config import GraphConfig, IndexConfig, RecallConfig
    from graph_store.errors import EncoderMismatchError, StoreError
    from graph_store.metapaths import Candidate
    from graph_store.shards import ShardedStore, open_store
    from graph_store.store import GraphStore, shard_of
    from graph_store.vocabulary import StoreVocabulary, TagWatch, read_vocabulary


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'graph_store' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
