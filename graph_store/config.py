"""Settings of the graph store and of meta-path recall, as plain data (loaded from YAML by the core)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any

from graph_store.errors import StoreError

INDEX_KINDS = ("auto", "flat", "ivf", "hnsw")


@dataclass
class IndexConfig:
    """How one nearest-neighbour index (contents or tags) is built and searched."""

    kind: str = "auto"
    # auto: exact search up to this many vectors, IVF above (flat 100k x 384-d took 6.7 ms/query).
    auto_exact_max: int = 50_000
    nlist: int | None = None  # IVF lists; None: about 4 * sqrt(n), at most n / 39
    # IVF list storage: "flat" keeps float32 vectors; "sq8" keeps 8-bit codes: 4x less memory and
    # ~2x faster scans (IVF search is bound by memory bandwidth). With 16 probes, sq8 doubled batched
    # recall at 1M items (515 -> 1,041 items/s) and cost at most 0.77% #Right on the shared data
    # (flat with 32 probes: 0.57%); benchmarks/recall.py and recall_quality.py --ann.
    nprobe: int = 16
    encoding: str = "sq8"
    train_size: int = 200_000  # vectors sampled to train IVF
    hnsw_m: int = 32
    hnsw_ef_search: int = 64
    hnsw_ef_construction: int = 80

    def __post_init__(self) -> None:
        if self.kind not in INDEX_KINDS:
            raise StoreError(f"index kind '{self.kind}' is not one of {', '.join(INDEX_KINDS)}")
        if self.nprobe < 1:
            raise StoreError("index nprobe must be at least 1")
        if self.encoding not in ("flat", "sq8"):
            raise StoreError(f"index encoding '{self.encoding}' is not one of flat, sq8")


@dataclass
class RecallConfig:
    """Meta-path recall (LLM4Tag section 3.2).

    A new item gets similarity edges to tags (cosine >= delta_ct) and to stored contents
    (cosine >= delta_cc). When fewer than min_* edges pass a threshold the best ones below it are
    linked anyway, so an item in a sparse region still reaches the graph (top-k fallback).
    C2T contributes at most max_c2t tags, C2C2T at most max_c2c2t; a path that falls short leaves its
    slots to the other, up to num_candidates.
    """

    # Defaults measured with the bundled MiniLM encoder on a validation slice of each shared data
    # set's train split (benchmarks/recall_quality.py --sweep): the paper's delta_cc = 0.8 and 15/5
    # split (set for BGE on its data) recalled 16% fewer right tags on the multi-tag set than
    # these. C2T keeps 5 slots so tags without annotations yet (reachable only by C2T) still surface.
    delta_ct: float = 0.5
    delta_cc: float = 0.5
    max_c2t: int = 5
    max_c2c2t: int = 15
    num_candidates: int = 20
    min_c2t: int = 5
    min_c2c: int = 30
    c2c_search_k: int = 50  # similar contents looked at per item
    fill: bool = True
    # Candidates are ranked by c2t_weight * cosine(item, tag) + c2c2t_weight * neighbour vote share.
    c2t_weight: float = 1.0
    c2c2t_weight: float = 1.0
    threads: int | None = 1  # faiss OpenMP threads; 1 was faster than 2 on the 2-vCPU machines

    def __post_init__(self) -> None:
        for name in ("max_c2t", "max_c2c2t", "num_candidates", "min_c2t", "min_c2c", "c2c_search_k"):
            if getattr(self, name) < 0:
                raise StoreError(f"recall setting {name} must not be negative")
        if self.num_candidates < 1:
            raise StoreError("recall num_candidates must be at least 1")
        for name in ("delta_ct", "delta_cc"):
            if not -1.0 <= getattr(self, name) <= 1.0:
                raise StoreError(f"recall setting {name} is a cosine threshold and must lie in [-1, 1]")


@dataclass
class GraphConfig:
    """Everything that shapes a built store."""

    content_index: IndexConfig = field(default_factory=IndexConfig)
    tag_index: IndexConfig = field(default_factory=IndexConfig)
    recall: RecallConfig = field(default_factory=RecallConfig)
    # Similarity edges stored for every annotated content (the paper's global graph); recall of a
    # new item does not need them, so very large builds may switch them off to save time.
    materialize_similarity: bool = True
    # ...but not at build time above this many contents: the self-join took ~34 min for 1M items
    # on the 2-vCPU machine (2.5 min for everything else). Inserted items are always linked.
    materialize_similarity_max: int = 200_000
    sim_edges_ct: int = 5
    sim_edges_cc: int = 5
    # Pending insertions are folded into the igraph graph in batches: each igraph add_edges call
    # rebuilds its edge index, which costs O(|E|) on a million-edge graph.
    flush_every: int = 1024

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> GraphConfig:
        return _from_dict(cls, data or {}, "graph")


def _from_dict(cls, data: dict[str, Any], where: str):
    if not isinstance(data, dict):
        raise StoreError(f"config section '{where}' must be a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise StoreError(f"config section '{where}' has unknown setting(s): {', '.join(unknown)}")
    kwargs = {}
    for name, value in data.items():
        default = cls.__dataclass_fields__[name].default_factory  # type: ignore[attr-defined]
        target = default() if callable(default) else None
        if target is not None and is_dataclass(target):
            kwargs[name] = _from_dict(type(target), value, f"{where}.{name}")
        else:
            kwargs[name] = value
    return cls(**kwargs)
