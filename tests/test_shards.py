"""Sharded stores: recall over shards equals the unsharded store's exactly; persistence; routing."""

from __future__ import annotations

import json

import numpy as np
import pytest

import graph_store.persistence as store_module
from graph_store import (
    EncoderMismatchError,
    GraphConfig,
    GraphStore,
    IndexConfig,
    RecallConfig,
    ShardedStore,
    StoreError,
    open_store,
    shard_of,
)
from graph_store.shards import SHARDS_FILE, shard_folder

ENCODER = "random-32d"
DIM, N_TAGS, N_ITEMS = 32, 50, 2000
TIE_GROUP = 40  # items sharing one vector: more than c2c_search_k, so ties straddle the cut
RECALL = RecallConfig(delta_ct=0.75, delta_cc=0.8, c2c_search_k=30)  # other settings: defaults
# No fill, tight caps, no fallback: exercises other branches of the selection.
RECALL_TIGHT = RECALL.with_overrides(
    dict(fill=False, max_c2t=3, max_c2c2t=4, min_c2t=0, min_c2c=0, delta_cc=0.7)
)


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def make_data(seed: int = 0):
    rng = np.random.default_rng(seed)
    tag_vectors = unit(rng.normal(size=(N_TAGS, DIM)))
    tags = [f"tag-{i:02d}" for i in rng.permutation(N_TAGS)]  # names do not follow positions
    cluster = rng.integers(N_TAGS, size=N_ITEMS)
    vectors = unit(tag_vectors[cluster] + 0.12 * rng.normal(size=(N_ITEMS, DIM)))
    item_tags = []
    for c in cluster:
        extra = rng.integers(N_TAGS, size=rng.integers(0, 3))
        item_tags.append(sorted({tags[c], *(tags[e] for e in extra)}))
    # Exact duplicates: 150 items copy another item's vector (ties between different ids, often in
    # different shards), and one group of TIE_GROUP items shares a single vector.
    dup_from = rng.choice(N_ITEMS - TIE_GROUP, size=150, replace=False)
    dup_to = rng.choice(np.setdiff1d(np.arange(N_ITEMS - TIE_GROUP), dup_from), size=150, replace=False)
    vectors[dup_to] = vectors[dup_from]
    vectors[N_ITEMS - TIE_GROUP :] = vectors[N_ITEMS - TIE_GROUP]
    # Ids in an order unrelated to the positions, so that position order and id order differ.
    ids = [f"item-{i:05d}" for i in rng.permutation(N_ITEMS)]
    queries = np.vstack(
        [
            vectors[rng.choice(N_ITEMS, size=80, replace=False)],  # stored vectors (ties at 1.0)
            vectors[dup_from[:40]],
            vectors[N_ITEMS - TIE_GROUP : N_ITEMS - TIE_GROUP + 5],
            unit(tag_vectors[rng.integers(N_TAGS, size=75)] + 0.12 * rng.normal(size=(75, DIM))),
        ]
    )
    assert len(queries) == 200
    return ids, vectors, item_tags, tags, tag_vectors, queries


@pytest.fixture(scope="module")
def data():
    return make_data()


def build(data, **config) -> GraphStore:
    ids, vectors, item_tags, tags, tag_vectors, _ = data
    return GraphStore.build(
        item_ids=ids,
        item_vectors=vectors,
        item_tags=item_tags,
        tags=tags,
        tag_vectors=tag_vectors,
        encoder_id=ENCODER,
        config=GraphConfig(
            content_index=IndexConfig(kind="flat"),
            tag_index=IndexConfig(kind="flat"),
            recall=RECALL,
            **config,
        ),
        item_texts=[f"text {i}" for i in ids],
    )


@pytest.fixture(scope="module")
def store(data) -> GraphStore:
    return build(data)


@pytest.fixture(scope="module")
def expected(store, data):
    queries = data[-1]
    return {"default": store.recall(queries), "tight": store.recall(queries, RECALL_TIGHT)}


def test_data_exercises_both_paths_and_ties(expected, store, data):
    got = expected["default"]
    assert all(len(c) == RECALL.num_candidates for c in got)
    paths = [cand.paths for cands in got for cand in cands]
    assert ("c2t", "c2c2t") in paths and ("c2t",) in paths and ("c2c2t",) in paths
    assert any(
        cand.c2t_score is not None and cand.c2t_score < RECALL.delta_ct for cands in got for cand in cands
    )
    # The tie group: a query equal to its vector has more neighbours at 1.0 than c2c_search_k.
    hits = store.search(data[1][-1], RECALL)[0]
    assert hits.neighbour_sims[: RECALL.c2c_search_k] == [1.0] * RECALL.c2c_search_k
    group_ids = sorted(data[0][N_ITEMS - TIE_GROUP :])
    assert hits.neighbour_ids == group_ids[: RECALL.c2c_search_k]  # ties broken by id
    tight = expected["tight"]
    assert max(len(c) for c in tight) <= 7 and min(len(c) for c in tight) >= 1


@pytest.mark.parametrize("num_shards", [1, 3, 4])
def test_sharded_recall_equals_unsharded(store, data, expected, num_shards):
    shards = store.split(num_shards)
    assert [s.shard for s in shards] == [(i, num_shards) for i in range(num_shards)]
    for shard in shards:
        assert all(shard_of(i, num_shards) == shard.shard[0] for i in shard.graph.content_ids)
        assert shard.graph.tag_names == store.graph.tag_names
        assert all(shard.owns(i) for i in shard.graph.content_ids)
    assert sorted(i for s in shards for i in s.graph.content_ids) == sorted(store.graph.content_ids)
    sharded = ShardedStore(shards)
    stats = sharded.stats()
    assert (stats["contents"], stats["tags"], stats["shards"]) == (N_ITEMS, N_TAGS, num_shards)
    assert stats["deterministic_edges"] == store.stats()["deterministic_edges"]
    queries = data[-1]
    for name, want in expected.items():
        got = sharded.recall(queries, RECALL_TIGHT if name == "tight" else None)
        for q, (g, w) in enumerate(zip(got, want, strict=True)):
            assert g == w, f"{name} query {q} with {num_shards} shards"
    assert sharded.match(queries[:20], 7) == store.match(queries[:20], 7)


def test_sharded_save_load_round_trip(store, data, expected, tmp_path):
    sharded = ShardedStore(store.split(3))
    root = sharded.save(tmp_path / "sharded")
    assert json.loads((root / SHARDS_FILE).read_text()) == {
        "shards": [{"folder": shard_folder(i, 3), "version": "v000001"} for i in range(3)]
    }
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith("journal.")) == [
        *(shard_folder(i, 3) for i in range(3)),
        SHARDS_FILE,
    ]
    loaded = open_store(root, expected_encoder_id=ENCODER)
    assert isinstance(loaded, ShardedStore)
    assert loaded.stats() == sharded.stats()
    assert loaded.recall(data[-1]) == expected["default"]
    assert ShardedStore.load(root).recall(data[-1], RECALL_TIGHT) == expected["tight"]
    with pytest.raises(EncoderMismatchError):
        open_store(root, expected_encoder_id="another")
    # Unsharded stores open through the same door.
    store.save(tmp_path / "plain")
    plain = open_store(tmp_path / "plain", expected_encoder_id=ENCODER)
    assert isinstance(plain, GraphStore)
    assert plain.recall(data[-1][:50]) == expected["default"][:50]
    with pytest.raises(StoreError, match="unsharded store"):
        sharded.save(tmp_path / "plain")
    with pytest.raises(StoreError, match="not a sharded store"):
        ShardedStore.load(tmp_path / "plain")


def test_incomplete_or_mixed_shards_are_refused(store):
    shards = store.split(3)
    with pytest.raises(StoreError, match="not a complete set"):
        ShardedStore(shards[:2])
    with pytest.raises(StoreError, match="at least one shard"):
        ShardedStore([])
    shards[1].encoder_id = "another"
    with pytest.raises(StoreError, match="disagree"):
        ShardedStore(shards)


def test_insert_and_write_back_are_routed(data):
    plain = build(data)
    sharded = ShardedStore(plain.split(4))
    rng = np.random.default_rng(5)
    tag_vectors, tags = data[4], data[3]
    new_ids = [f"new-{i:03d}" for i in range(40)]
    new_vectors = unit(tag_vectors[rng.integers(N_TAGS, size=40)] + 0.12 * rng.normal(size=(40, DIM)))
    new_tags = [[tags[i % N_TAGS]] if i % 3 else None for i in range(40)]
    for s in (plain, sharded):
        s.insert(new_ids, new_vectors, tags=new_tags, texts=[f"t{i}" for i in range(40)])
    owners = {shard_of(i, 4) for i in new_ids}
    assert owners == {0, 1, 2, 3}
    for item_id in new_ids:
        owner = sharded.shards[shard_of(item_id, 4)]
        assert item_id in owner.graph.content_pos
        assert sum(item_id in s.graph.content_pos for s in sharded.shards) == 1
        assert sharded.owner(item_id) is owner
    assert sharded.stats()["contents"] == N_ITEMS + 40
    # Write-backs: to new and to built items; counted once, on the owning shard.
    for s in (plain, sharded):
        assert s.write_back("new-000", [tags[7], tags[8]]) == 2
        assert s.write_back("new-000", [tags[7]]) == 0
        assert s.write_back(data[0][0], [tags[9]]) == (0 if tags[9] in data[2][0] else 1)
    # One built item of every shard gets a tag it does not have yet; only its owner changes.
    for index in range(4):
        row = next(r for r, i in enumerate(data[0]) if shard_of(i, 4) == index and tags[11] not in data[2][r])
        item_id = data[0][row]
        det_before = [s.stats()["deterministic_edges"] for s in sharded.shards]
        assert sharded.write_back(item_id, [tags[11]]) == 1
        assert plain.write_back(item_id, [tags[11]]) == 1
        det_after = [s.stats()["deterministic_edges"] for s in sharded.shards]
        changed = [b - a for a, b in zip(det_before, det_after, strict=True)]
        assert changed == [int(j == index) for j in range(4)]
    owner = sharded.owner("new-000")
    assert {owner.graph.tag_names[t] for t in owner.graph.det_tags(owner.graph.content_pos["new-000"])} == {
        tags[7],
        tags[8],
    }
    queries = np.vstack([new_vectors, data[-1][:60]])
    assert sharded.recall(queries) == plain.recall(queries)
    (new0,) = [c for c in sharded.recall(new_vectors[0])[0] if c.tag == tags[7]]
    assert new0.via[0] == "new-000"
    with pytest.raises(StoreError, match="'new-001'"):
        sharded.insert(["new-001"], new_vectors[:1])
    with pytest.raises(StoreError, match="not in the store"):
        sharded.write_back("nobody", [tags[0]])


def test_failed_sharded_insert_changes_no_shard(data):
    sharded = ShardedStore(build(data).split(4))
    before = sharded.stats()
    ids = ["ok-a", "ok-b", "ok-c", "ok-d", "bad"]
    assert len({shard_of(i, 4) for i in ids}) > 1
    vectors = np.repeat(data[1][:1], len(ids), 0)
    with pytest.raises(StoreError, match="'no-such-tag'"):
        sharded.insert(ids, vectors, tags=[[data[3][0]]] * 4 + [["no-such-tag"]])
    with pytest.raises(StoreError, match="'ok-b'"):
        sharded.insert(["ok-a", "ok-b", "ok-c", "ok-b"], vectors[:4])
    with pytest.raises(StoreError, match="same length"):
        sharded.insert(ids, vectors[:3])
    assert sharded.stats() == before
    assert sum(s.content_index.size for s in sharded.shards) == N_ITEMS


def test_crash_between_shards_keeps_the_previous_set_live(store, data, expected, tmp_path, monkeypatch):
    """A save that dies after writing some shards must not mix old and new shard versions."""
    root = tmp_path / "sharded"
    ShardedStore(store.split(3)).save(root)
    before = open_store(root).recall(data[-1][:20])
    changed = ShardedStore.load(root)
    new_ids = [f"crash-{i}" for i in range(30)]
    changed.insert(new_ids, data[-1][:30], [[store.graph.tag_names[0]]] * 30)
    saved = []
    original = store_module.write_version

    def write_then_die_on_third(folder, *args, **kwargs):
        if len(saved) == 2:
            raise KeyboardInterrupt("killed while saving shard 3")
        saved.append(folder)
        return original(folder, *args, **kwargs)

    monkeypatch.setattr(store_module, "write_version", write_then_die_on_third)
    with pytest.raises(KeyboardInterrupt):
        changed.save(root)
    monkeypatch.setattr(store_module, "write_version", original)
    after = open_store(root)
    assert after.stats() == ShardedStore.load(root).stats()
    assert after.stats()["contents"] == store.graph.num_contents  # none of the 30 inserts is live
    assert after.recall(data[-1][:20]) == before
    # The next complete save makes all shards move together.
    changed.save(root)
    assert open_store(root).stats()["contents"] == store.graph.num_contents + 30
