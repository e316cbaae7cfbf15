"""GraphRecall deployment: one shard of the content–tag graph in memory per replica.

Every replica of a shard follows the shard's durable journal, so a write made through any replica
(feedback, write-back) is seen by all of them. A new or restarted replica replays the journal in its
constructor, and Serve routes no request to a replica before its constructor has returned: a replica
takes traffic only once it holds every write acknowledged before it started. On a cluster the journal
must be on storage every node shares (`journal` in the app's args, or the store folder itself).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import ray
from ray import serve

from graph_store import GraphStore
from graph_store.shards import shard_folder
from llm4tag.config import Settings

log = logging.getLogger("ray.serve")


def shard_paths(store: str, shard: int, num_shards: int, journal: str | None) -> tuple[Path, Path | None]:
    """The shard's store folder and its journal folder (None: the journal sits in the store folder)."""
    if num_shards == 1:
        return Path(store), Path(journal) if journal else None
    name = shard_folder(shard, num_shards)
    return Path(store) / name, (Path(journal) / name if journal else None)


@serve.deployment(
    name="GraphRecall", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64, max_queued_requests=256
)
class GraphRecallDeployment:
    def __init__(
        self, store: str, shard: int, num_shards: int, settings: Settings, journal: str | None = None
    ):
        folder, journal_dir = shard_paths(store, shard, num_shards, journal)
        started = time.perf_counter()
        # load() replays the journal: the catch-up happens here, before the replica is ready.
        self.store = GraphStore.load(folder, journal_dir=journal_dir)
        self.store.config.recall = settings.graph.recall  # the store's own copy of its settings
        self.shard = (shard, num_shards)
        self.loaded_s = time.perf_counter() - started
        self.journal_path = str(self.store.journal.path) if self.store.journal is not None else None
        log.info(
            "GraphRecall shard %s/%s ready in %.1f s: %s contents, journal %s",
            shard,
            num_shards,
            self.loaded_s,
            self.store.stats()["contents"],
            self.journal_path,
        )

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

    def tag_counts(self) -> list[int]:
        """Stored items of this shard carrying each tag, in vocabulary order (the UI's vocabulary page)."""
        self.store.sync()
        return self.store.graph.det_tag_counts().tolist()

    def tags_from(self, start: int) -> tuple[list[str], np.ndarray]:
        """The names and vectors of the tags at position ``start`` and after (tags added since a
        ranking's fit: the ingress's ranking follows them)."""
        self.store.sync()
        return list(self.store.graph.tag_names[start:]), self.store.tag_index.reconstruct_all()[start:]

    def check_health(self) -> None:
        # Serve calls this every health_check_period_s: an idle replica keeps following the journal,
        # and one that can no longer read it (shared volume gone, damaged file) raises, so that Serve
        # replaces it instead of letting it answer from a stale graph.
        self.store.sync()

    def lookup(self, item_ids: list[str]) -> dict:
        """Which of the items this replica holds, with their deterministic tags (for checks and tests)."""
        self.store.sync()
        graph = self.store.graph
        found: dict[str, list[str] | None] = {}
        for item_id in item_ids:
            pos = graph.content_pos.get(item_id)
            found[item_id] = (
                None if pos is None else sorted(graph.tag_names[t] for t in graph.det_tags(pos).tolist())
            )
        context = ray.get_runtime_context()
        return {
            "replica": context.get_actor_name(),
            "node": context.get_node_id(),
            "shard": list(self.shard),
            "contents": self.store.stats()["contents"],
            "loaded_s": round(self.loaded_s, 2),
            "items": found,
        }

    def describe(self) -> dict:
        self.store.sync()
        stats = self.store.stats()
        return {
            "replica": ray.get_runtime_context().get_actor_name(),
            "shard": list(self.shard),
            "contents": stats["contents"],
            "tags": stats["tags"],
            "journal": self.journal_path,
            "loaded_s": round(self.loaded_s, 2),
        }
