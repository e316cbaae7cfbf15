"""The vocabulary's hierarchy in the graph store (tag–tag "broader" edges) and per-tag item counts."""

from __future__ import annotations

import numpy as np

from graph_store import GraphStore, read_vocabulary
from graph_store.shards import ShardedStore
from tests.conftest import DIM, HAND_ITEMS, TAG_AXIS, TAG_ORDER, build_hand_store

HIERARCHY = [("beta", "alpha"), ("gamma", "alpha"), ("zeta", "eps")]


def build_with_hierarchy() -> GraphStore:
    """The hand store's items and tags, with a hierarchy over its tags."""
    plain = build_hand_store()
    tag_vectors = np.zeros((len(TAG_ORDER), DIM), np.float32)
    for row, name in enumerate(TAG_ORDER):
        tag_vectors[row, TAG_AXIS[name]] = 1.0
    ids = list(HAND_ITEMS)
    return GraphStore.build(
        item_ids=ids,
        item_vectors=np.stack([HAND_ITEMS[i][0] for i in ids]),
        item_tags=[HAND_ITEMS[i][1] for i in ids],
        tags=TAG_ORDER,
        tag_vectors=tag_vectors,
        encoder_id="hand-encoder",
        config=plain.config,
        item_texts=[f"text of {i}" for i in ids],
        tag_descriptions=[f"about {t}" for t in TAG_ORDER],
        tag_broader=HIERARCHY,
    )


def test_hierarchy_edges_are_kept_through_save_load_and_sharding(tmp_path):
    store = build_with_hierarchy()
    assert sorted(store.graph.broader_pairs()) == sorted(HIERARCHY)
    assert store.stats()["broader_edges"] == 3
    # Recall reads contents' edges only: the hierarchy changes no candidate.
    plain = build_hand_store()
    query = np.stack([HAND_ITEMS["a"][0]])
    assert [c.to_dict() for c in store.recall(query)[0]] == [c.to_dict() for c in plain.recall(query)[0]]
    store.save(tmp_path / "one")
    loaded = GraphStore.load(tmp_path / "one")
    assert sorted(loaded.graph.broader_pairs()) == sorted(HIERARCHY)
    assert sorted(read_vocabulary(tmp_path / "one").broader) == sorted(HIERARCHY)
    assert read_vocabulary(tmp_path / "one").meta == {}
    sharded = ShardedStore(store.split(2))
    sharded.save(tmp_path / "two")
    assert all(sorted(s.graph.broader_pairs()) == sorted(HIERARCHY) for s in sharded.shards)
    assert sorted(read_vocabulary(tmp_path / "two").broader) == sorted(HIERARCHY)
    assert "broader_edges" not in plain.stats()


def test_tag_counts_follow_annotations_and_write_back():
    store = build_hand_store()
    graph = store.graph
    expected = {t: sum(t in tags for _, tags in HAND_ITEMS.values()) for t in graph.tag_names}
    assert dict(zip(graph.tag_names, graph.det_tag_counts().tolist(), strict=True)) == expected
    store.write_back("d", ["alpha", "delta"])  # delta was there already: counted once
    expected["alpha"] += 1
    assert dict(zip(graph.tag_names, graph.det_tag_counts().tolist(), strict=True)) == expected
    graph.compact()
    assert dict(zip(graph.tag_names, graph.det_tag_counts().tolist(), strict=True)) == expected
