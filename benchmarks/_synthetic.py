"""Synthetic stores with structure, for benchmarks: a two-level Gaussian mixture on the unit sphere.

Uniform random vectors make every ANN index look bad and every cosine ~0, so instead:

* topics: random unit centroids (about one per 100 tags);
* tags: unit vectors scattered around a topic (tags of one topic have cosine ~0.5 with each other);
* items: 1-5 tags each. The first tag follows a Zipf-like popularity over a random permutation of the
  tags (a few tags are on a sizeable share of all items, which exercises the C2C2T fan-out); further
  tags come mostly from the first tag's topic (realistic co-occurrence), else again by popularity.
  The vector is the normalised weighted mix of the item's tag vectors plus Gaussian noise of a
  per-item strength, so cosines to own tags range from ~0.4 to ~0.95.

Query items are drawn the same way from another random stream: they are not in the store.
Everything is float32 and generated in chunks, so 1M x 384-d costs the 1.5 GB of the result only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_TAGS_PER_ITEM = 5


def _normalise(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)
    return x


@dataclass
class TagSpace:
    names: list[str]
    vectors: np.ndarray  # (n_tags, dim) float32, unit rows
    topic: np.ndarray  # topic of each tag
    topic_members: list[np.ndarray]  # tags of each topic
    popularity_cdf: np.ndarray  # over tag ids (Zipf over a random permutation)


def make_tags(n_tags: int, dim: int, seed: int = 0, zipf_s: float = 1.0) -> TagSpace:
    rng = np.random.default_rng([seed, 1])
    n_topics = max(4, n_tags // 100)
    topics = _normalise(rng.standard_normal((n_topics, dim), dtype=np.float32))
    topic = rng.integers(0, n_topics, n_tags)
    spread = rng.standard_normal((n_tags, dim), dtype=np.float32) / np.float32(np.sqrt(dim))
    vectors = _normalise(topics[topic] + spread)
    order = np.argsort(topic, kind="stable")
    bounds = np.searchsorted(topic[order], np.arange(n_topics + 1))
    members = [order[bounds[t] : bounds[t + 1]] for t in range(n_topics)]
    weights = np.empty(n_tags, np.float64)
    weights[rng.permutation(n_tags)] = 1.0 / np.arange(1, n_tags + 1) ** zipf_s
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    names = [f"tag{j:06d}" for j in range(n_tags)]
    return TagSpace(names, vectors, topic, members, cdf)


def _draw_popular(rng: np.random.Generator, space: TagSpace, size) -> np.ndarray:
    return np.minimum(np.searchsorted(space.popularity_cdf, rng.random(size)), len(space.names) - 1)


def make_items(
    space: TagSpace,
    n_items: int,
    seed: int = 0,
    stream: int = 2,
    chunk: int = 32_768,
    noise: tuple[float, float] = (0.3, 0.8),
    same_topic: float = 0.7,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Item vectors (n, dim) float32 and their tags as CSR (indptr, tag ids)."""
    rng = np.random.default_rng([seed, stream])
    dim = space.vectors.shape[1]
    vectors = np.empty((n_items, dim), np.float32)
    tag_rows, counts = [], []
    sizes = np.asarray([len(m) for m in space.topic_members])
    for lo in range(0, n_items, chunk):
        b = min(chunk, n_items - lo)
        k = rng.integers(1, MAX_TAGS_PER_ITEM + 1, b)
        tags = np.empty((b, MAX_TAGS_PER_ITEM), np.int64)
        tags[:, 0] = _draw_popular(rng, space, b)
        topic = space.topic[tags[:, 0]]
        for j in range(1, MAX_TAGS_PER_ITEM):
            pick = rng.integers(0, 1 << 30, b) % sizes[topic]
            in_topic = np.fromiter(
                (space.topic_members[t][p] for t, p in zip(topic.tolist(), pick.tolist(), strict=True)),
                np.int64,
                b,
            )
            tags[:, j] = np.where(rng.random(b) < same_topic, in_topic, _draw_popular(rng, space, b))
        valid = np.arange(MAX_TAGS_PER_ITEM)[None, :] < k[:, None]
        # drop repeats within an item (keep the first occurrence)
        for j in range(1, MAX_TAGS_PER_ITEM):
            valid[:, j] &= ~(tags[:, :j] == tags[:, j : j + 1]).any(1)
        weight = np.where(valid, rng.uniform(0.5, 1.0, (b, MAX_TAGS_PER_ITEM)), 0.0).astype(np.float32)
        weight[:, 0] = 1.0
        mix = np.zeros((b, dim), np.float32)
        for j in range(MAX_TAGS_PER_ITEM):
            mix += weight[:, j : j + 1] * space.vectors[tags[:, j]]
        _normalise(mix)
        sigma = rng.uniform(*noise, b).astype(np.float32) / np.float32(np.sqrt(dim))
        mix += sigma[:, None] * rng.standard_normal((b, dim), dtype=np.float32)
        vectors[lo : lo + b] = _normalise(mix)
        counts.append(valid.sum(1))
        tag_rows.append(tags[valid])
    indptr = np.concatenate([[0], np.cumsum(np.concatenate(counts))]).astype(np.int64)
    return vectors, indptr, np.concatenate(tag_rows)


@dataclass
class SyntheticStore:
    item_ids: list[str]
    item_vectors: np.ndarray
    item_tags: list[list[str]]
    tags: list[str]
    tag_vectors: np.ndarray
    queries: np.ndarray
    query_tags: list[list[str]]


def make_store_data(n_items: int, n_tags: int, dim: int, n_queries: int, seed: int = 0) -> SyntheticStore:
    space = make_tags(n_tags, dim, seed)
    vectors, indptr, tag_ids = make_items(space, n_items, seed, stream=2)
    names = space.names
    flat = [names[t] for t in tag_ids.tolist()]
    item_tags = [flat[indptr[i] : indptr[i + 1]] for i in range(n_items)]
    queries, q_indptr, q_tags = make_items(space, n_queries, seed, stream=3)
    q_flat = [names[t] for t in q_tags.tolist()]
    query_tags = [q_flat[q_indptr[i] : q_indptr[i + 1]] for i in range(n_queries)]
    return SyntheticStore(
        item_ids=[f"item{i:07d}" for i in range(n_items)],
        item_vectors=vectors,
        item_tags=item_tags,
        tags=names,
        tag_vectors=space.vectors,
        queries=queries,
        query_tags=query_tags,
    )
