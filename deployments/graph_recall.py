"""GraphRecall deployment: one shard of the content–tag graph in memory per replica.

Every replica of a shard follows the shard's durable journal, so a write made through any replica
(feedback, write-back) is seen by all of them, and a new or restarted replica replays it on load.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import ray
from ray import serve

from deployments._common import settings_of
from graph_store import GraphStore
from graph_store.shards import shard_folder


@serve.deployment(name="GraphRecall", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64)
class GraphRecall:
    def __init__(self, store: str, shard: int, num_shards: int, settings: dict):
        folder = Path(store) if num_shards == 1 else Path(store) / shard_folder(shard, num_shards)
        self.store = GraphStore.load(folder)
        self.store.config.recall = settings_of(settings).graph.recall
        self.shard = (shard, num_shards)

    # Recall of a batch takes milliseconds: it runs on the event loop, which also keeps searches and
    # writes of this replica from interleaving.
    def search(self, vectors: np.ndarray) -> list:
        self.store.sync()
        return self.store.search(vectors)

    def record(
        self, item_ids: list[str], vectors: np.ndarray, tags: list[list[str]], texts: list[str]
    ) -> int:
        self.store.record(item_ids, vectors, tags, texts)
        return len(item_ids)

    def describe(self) -> dict:
        self.store.sync()
        stats = self.store.stats()
        return {
            "replica": ray.get_runtime_context().get_actor_name(),
            "shard": list(self.shard),
            "contents": stats["contents"],
            "tags": stats["tags"],
        }
