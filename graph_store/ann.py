"""Nearest-neighbour indexes over unit vectors (inner product = cosine), built with faiss."""

from __future__ import annotations

import math

import faiss
import numpy as np

from graph_store.config import IndexConfig
from graph_store.errors import StoreError


def set_threads(threads: int | None) -> None:
    if threads:
        faiss.omp_set_num_threads(threads)


def as_queries(vectors: np.ndarray, dim: int) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors[None, :]
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise StoreError(f"vectors must have shape (n, {dim}), got {tuple(vectors.shape)}")
    return np.ascontiguousarray(vectors)


class VectorIndex:
    """One faiss index plus how it was chosen; positions in the index are the row numbers added."""

    def __init__(self, index: faiss.Index, kind: str):
        self.index = index
        self.kind = kind

    @property
    def dim(self) -> int:
        return self.index.d

    @property
    def size(self) -> int:
        return self.index.ntotal

    @property
    def exact(self) -> bool:
        return self.kind == "flat"

    @classmethod
    def build(cls, vectors: np.ndarray, config: IndexConfig, *, seed: int = 0) -> VectorIndex:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2:
            raise StoreError(f"vectors must be a 2-d array, got shape {vectors.shape}")
        n, dim = vectors.shape
        kind = config.kind
        if kind == "auto":
            kind = "flat" if n <= config.auto_exact_max else "ivf"
        if kind == "ivf" and n < 2 * 39:
            kind = "flat"  # too few vectors to train even two lists
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "ivf":
            nlist = config.nlist or max(2, int(4 * math.sqrt(n)))
            nlist = max(2, min(nlist, n // 39))
            quantizer = faiss.IndexFlatIP(dim)
            if config.encoding == "sq8":
                index = faiss.IndexIVFScalarQuantizer(
                    quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
                )
            else:
                index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(seed)
            take = min(n, max(config.train_size, 39 * nlist))
            sample = vectors if take >= n else vectors[np.sort(rng.choice(n, take, replace=False))]
            index.cp.seed = seed
            index.train(sample)
            index.nprobe = min(config.nprobe, nlist)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = config.hnsw_ef_construction
            index.hnsw.efSearch = config.hnsw_ef_search
        else:  # guarded by IndexConfig
            raise StoreError(f"unknown index kind '{kind}'")
        if n:
            index.add(vectors)
        return cls(index, kind)

    def configure(self, config: IndexConfig) -> None:
        """Apply search-time settings (nprobe, efSearch) that may change without a rebuild."""
        if self.kind == "ivf":
            ivf = faiss.extract_index_ivf(self.index)
            ivf.nprobe = min(config.nprobe, ivf.nlist)
        elif self.kind == "hnsw":
            self.index.hnsw.efSearch = config.hnsw_ef_search

    def add(self, vectors: np.ndarray) -> None:
        self.index.add(as_queries(vectors, self.dim))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (similarities, positions); missing hits have position -1."""
        queries = as_queries(queries, self.dim)
        k = max(1, min(k, self.size)) if self.size else 0
        if k == 0:
            empty = np.zeros((len(queries), 0))
            return empty.astype(np.float32), empty.astype(np.int64)
        sims, ids = self.index.search(queries, k)
        return sims, ids

    def reconstruct_all(self) -> np.ndarray:
        if self.kind == "ivf":
            faiss.extract_index_ivf(self.index).make_direct_map()
        return self.index.reconstruct_n(0, self.size)

    def save(self, path: str) -> None:
        faiss.write_index(self.index, path)

    @classmethod
    def load(cls, path: str, kind: str) -> VectorIndex:
        try:
            index = faiss.read_index(path)
        except RuntimeError as exc:
            raise StoreError(f"cannot read index {path}: {str(exc).splitlines()[0]}") from exc
        return cls(index, kind)
