"""The content–tag graph and its indexes: build, recall, insert, persist, shard. Imports no core, no Ray."""

from graph_store.config import GraphConfig, IndexConfig, RecallConfig
from graph_store.errors import EncoderMismatchError, StoreError
from graph_store.recall import Candidate
from graph_store.shards import ShardedStore, open_store
from graph_store.store import GraphStore, shard_of
from graph_store.vocabulary import StoreVocabulary, read_vocabulary

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
    "open_store",
    "read_vocabulary",
    "shard_of",
]
