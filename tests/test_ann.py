"""The faiss index wrapper: exact, IVF (float and 8-bit lists) and HNSW against brute force."""

from __future__ import annotations

import numpy as np
import pytest

from graph_store import IndexConfig, StoreError
from graph_store.ann import VectorIndex


@pytest.fixture(scope="module")
def vectors() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(40, 32))
    data = centres[rng.integers(0, 40, 6000)] + 0.4 * rng.normal(size=(6000, 32))
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    queries = centres[rng.integers(0, 40, 100)] + 0.4 * rng.normal(size=(100, 32))
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return data.astype(np.float32), queries.astype(np.float32)


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(x) & set(y)) / len(y) for x, y in zip(a, b, strict=True)]))


def test_flat_is_exact(vectors):
    data, queries = vectors
    index = VectorIndex.build(data, IndexConfig(kind="flat"))
    sims, ids = index.search(queries, 10)
    expected = np.argsort(-(queries @ data.T), axis=1, kind="stable")[:, :10]
    assert index.exact and _overlap(ids, expected) == 1.0
    assert np.allclose(sims[:, 0], (queries @ data.T).max(axis=1), atol=1e-5)


@pytest.mark.parametrize(
    ("config", "minimum"),
    [
        (IndexConfig(kind="ivf", nlist=40, nprobe=40, encoding="flat"), 1.0),  # every list probed: exact
        (IndexConfig(kind="ivf", nlist=40, nprobe=40, encoding="sq8"), 0.9),  # 8-bit codes: close
        (IndexConfig(kind="ivf", nlist=40, nprobe=4, encoding="flat"), 0.8),
        (IndexConfig(kind="ivf", nlist=40, nprobe=4), 0.8),
        (IndexConfig(kind="hnsw"), 0.9),
    ],
)
def test_approximate_indexes_find_the_true_neighbours(vectors, config, minimum):
    data, queries = vectors
    exact = np.argsort(-(queries @ data.T), axis=1, kind="stable")[:, :10]
    index = VectorIndex.build(data, config)
    _, ids = index.search(queries, 10)
    assert _overlap(ids, exact) >= minimum
    assert index.kind == config.kind and not index.exact


def test_auto_picks_exact_for_small_and_ivf_for_large(vectors):
    data, _ = vectors
    assert VectorIndex.build(data, IndexConfig(kind="auto", auto_exact_max=10_000)).kind == "flat"
    assert VectorIndex.build(data, IndexConfig(kind="auto", auto_exact_max=1_000)).kind == "ivf"


def test_ivf_survives_save_load_and_adds(vectors, tmp_path):
    data, queries = vectors
    index = VectorIndex.build(data[:5000], IndexConfig(kind="ivf", nlist=20, nprobe=20, encoding="sq8"))
    index.add(data[5000:])
    index.save(str(tmp_path / "i.faiss"))
    loaded = VectorIndex.load(str(tmp_path / "i.faiss"), "ivf")
    assert loaded.size == 6000
    assert np.array_equal(loaded.search(queries, 5)[1], index.search(queries, 5)[1])
    assert loaded.reconstruct_all().shape == (6000, 32)


def test_bad_index_settings_are_refused():
    with pytest.raises(StoreError, match=r"index\.encoding"):
        IndexConfig.load({"encoding": "pq"})
    with pytest.raises(StoreError, match=r"index\.kind"):
        IndexConfig.load({"kind": "lsh"})
    with pytest.raises(StoreError, match=r"index\.nprobe"):
        IndexConfig.load({"nprobe": 0})
    with pytest.raises(ValueError, match="nprobe"):  # built in code: pydantic's ValidationError
        IndexConfig(nprobe=0)


def test_large_builds_skip_the_similarity_self_join_but_inserts_link(vectors):
    from graph_store import GraphConfig, GraphStore

    data, queries = vectors
    tag_vectors = data[:5]
    kwargs = dict(
        item_ids=[f"i{n}" for n in range(200)],
        item_vectors=data[5:205],
        item_tags=[["t0"]] * 200,
        tags=[f"t{n}" for n in range(5)],
        tag_vectors=tag_vectors,
        encoder_id="test",
    )
    small = GraphStore.build(**kwargs, config=GraphConfig(materialize_similarity_max=200))
    assert small.stats()["similarity_edges_cc"] > 0
    large = GraphStore.build(**kwargs, config=GraphConfig(materialize_similarity_max=199))
    assert large.stats()["similarity_edges_cc"] == 0 and large.stats()["similarity_edges_ct"] == 0
    large.insert(["new"], queries[:1])
    assert large.stats()["similarity_edges_ct"] > 0
    assert dict(large.graph.neighbourhood("new"))["similarity_cc"]
