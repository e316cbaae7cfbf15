"""Settings of the graph store and of meta-path recall, and the one config mechanism of the project.

Every configuration section (here and in llm4tag) is a :class:`ConfigModel`: a pydantic model whose
fields carry their defaults and descriptions (docs/configuration.md is generated from them), that
refuses unknown keys and validates on construction and on assignment. Read from YAML data
(:meth:`ConfigModel.load`), the first problem becomes one error naming the setting (``StoreError``
here, ``ConfigError`` in llm4tag); built in code, a bad value raises pydantic's ValidationError. A
changed copy is :meth:`ConfigModel.with_overrides` (validated again); nothing mutates shared settings.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from graph_store.errors import StoreError

INDEX_KINDS = ("auto", "flat", "ivf", "hnsw")


def merged(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` laid over it, mappings merged key by key."""
    out = dict(base)
    for key, value in override.items():
        inner = out.get(key)
        out[key] = (
            merged(inner, value) if isinstance(value, Mapping) and isinstance(inner, Mapping) else value
        )
    return out


def read_yaml(path: str | os.PathLike, what: str, error: type[Exception] = StoreError) -> Any:
    """A YAML file's data; an unreadable or invalid file is one ``error`` naming it (``what``)."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise error(f"{what} {path} is not valid YAML: {exc}") from exc


def describe_error(exc: ValidationError, where: str) -> str:
    """The first problem of a validation error, naming the setting (``pipeline.threshold: ...``)."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    loc = [str(p) for p in first["loc"]]
    if first["type"] == "extra_forbidden":
        parent = loc[:-1]
        names = sorted(
            str(e["loc"][-1])
            for e in errors
            if e["type"] == "extra_forbidden" and [str(p) for p in e["loc"][:-1]] == parent
        )
        section = ".".join([where, *parent]) if where else ".".join(parent)
        if not section:
            return f"config has unknown section(s): {', '.join(names)}"
        return f"config section '{section}' has unknown setting(s): {', '.join(names)}"
    path = ".".join([where, *loc] if where else loc)
    message = first["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if first["type"] in ("model_type", "dict_type"):
        message = f"must be a mapping of settings, got {type(first['input']).__name__}"
    return f"{path or where}: {message}"


class ConfigModel(BaseModel):
    """A configuration section (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, validate_default=True)
    # The exception a bad setting raises, and the section's name in its messages.
    error: ClassVar[type[Exception]] = StoreError
    section: ClassVar[str] = ""

    @classmethod
    def load(cls, data: Any, where: str | None = None) -> Self:
        """The section from YAML data (``None``: the defaults)."""
        where = cls.section if where is None else where
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            what = f"config section '{where}'" if where else "config"
            raise cls.error(f"{what} must be a mapping of settings, got {type(data).__name__}")
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            raise cls.error(describe_error(exc, where)) from None

    def with_overrides(self, overrides: Mapping[str, Any]) -> Self:
        """A validated copy with ``overrides`` (nested mappings for nested sections) laid over it. The
        copy knows which settings were given (``model_fields_set``), as the original did: a default
        left alone stays a default (``pipeline.threshold`` unset means the store's fitted cut)."""
        return type(self).load(merged(self.model_dump(exclude_unset=True), overrides))


class IndexConfig(ConfigModel):
    """How one nearest-neighbour index (contents or tags) is built and searched."""

    section: ClassVar[str] = "index"

    kind: Literal["auto", "flat", "ivf", "hnsw"] = Field(
        "auto", description="auto: exact up to auto_exact_max vectors, IVF above; or flat | ivf | hnsw"
    )
    # flat 100k x 384-d took 6.7 ms/query.
    auto_exact_max: int = Field(50_000, ge=1, description="auto: exact search up to this many vectors")
    nlist: int | None = Field(None, ge=1, description="IVF lists; null: about 4 * sqrt(n), at most n / 39")
    nprobe: int = Field(16, ge=1, description="IVF lists searched per query")
    # sq8: 4x less memory, ~2x faster scans (IVF search is bound by memory bandwidth). With 16 probes
    # it doubled batched recall at 1M items (515 -> 1,041 items/s) and cost at most 0.77% #Right on
    # the shared data (flat with 32 probes: 0.57%); benchmarks/recall.py and recall_quality.py --ann.
    encoding: Literal["flat", "sq8"] = Field(
        "sq8", description="IVF list storage: flat (float32 vectors) or sq8 (8-bit codes)"
    )
    train_size: int = Field(200_000, ge=1, description="vectors sampled to train IVF")
    hnsw_m: int = Field(32, ge=2, description="HNSW: links per vector")
    hnsw_ef_search: int = Field(64, ge=1, description="HNSW: candidates kept while searching")
    hnsw_ef_construction: int = Field(80, ge=1, description="HNSW: candidates kept while building")


class RecallConfig(ConfigModel):
    """Meta-path recall (LLM4Tag section 3.2).

    A new item gets similarity edges to tags (cosine >= delta_ct) and to stored contents
    (cosine >= delta_cc). When fewer than min_* edges pass a threshold the best ones below it are
    linked anyway, so an item in a sparse region still reaches the graph (top-k fallback).
    C2T contributes at most max_c2t tags, C2C2T at most max_c2c2t; a path that falls short leaves its
    slots to the other, up to num_candidates.
    """

    section: ClassVar[str] = "graph.recall"

    # Defaults measured with the bundled MiniLM encoder on a validation slice of each shared data
    # set's train split (benchmarks/recall_quality.py --sweep): the paper's delta_cc = 0.8 and 15/5
    # split (set for BGE on its data) recalled 16% fewer right tags on the multi-tag set than
    # these. C2T keeps 5 slots so tags without annotations yet (reachable only by C2T) still surface.
    delta_ct: float = Field(0.5, ge=-1.0, le=1.0, description="cosine threshold of item-tag similarity edges")
    delta_cc: float = Field(
        0.5, ge=-1.0, le=1.0, description="cosine threshold of item-item similarity edges"
    )
    max_c2t: int = Field(5, ge=0, description="at most this many candidates by C2T (item -> similar tag)")
    max_c2c2t: int = Field(
        15, ge=0, description="at most this many by C2C2T (item -> similar item -> its annotated tag)"
    )
    num_candidates: int = Field(20, ge=1, description="candidates per item")
    min_c2t: int = Field(
        5, ge=0, description="at least this many item-tag edges, below the threshold if need be"
    )
    min_c2c: int = Field(
        30, ge=0, description="at least this many item-item edges, below the threshold if need be"
    )
    c2c_search_k: int = Field(50, ge=0, description="similar stored items looked at per item")
    fill: bool = Field(True, description="fill short candidate lists with the next most similar tags")
    c2t_weight: float = Field(1.0, description="rank weight of cosine(item, tag)")
    c2c2t_weight: float = Field(1.0, description="rank weight of the neighbours' vote share")
    # 1 was faster than 2 on the 2-vCPU machines.
    threads: int | None = Field(1, ge=1, description="faiss OpenMP threads (null: faiss's default)")


class GraphConfig(ConfigModel):
    """Everything that shapes a built store (the `graph:` section)."""

    section: ClassVar[str] = "graph"

    content_index: IndexConfig = Field(default_factory=IndexConfig, description="the index of stored items")
    tag_index: IndexConfig = Field(default_factory=IndexConfig, description="the index of tags")
    recall: RecallConfig = Field(default_factory=RecallConfig, description="meta-path recall")
    # The paper's global graph; recall of a new item does not need these edges.
    materialize_similarity: bool = Field(True, description="store similarity edges of every annotated item")
    # The self-join took ~34 min for 1M items on the 2-vCPU machine (2.5 min for everything else).
    # Inserted items are always linked.
    materialize_similarity_max: int = Field(
        200_000, ge=0, description="...but not at build time above this many items"
    )
    sim_edges_ct: int = Field(5, ge=0, description="item-tag similarity edges stored per item")
    sim_edges_cc: int = Field(5, ge=0, description="item-item similarity edges stored per item")
    # Each igraph add_edges call rebuilds its edge index, O(|E|) on a million-edge graph.
    flush_every: int = Field(
        1024, ge=1, description="insertions folded into the graph in batches of this many"
    )

    @field_validator("content_index", "tag_index", "recall", mode="before")
    @classmethod
    def _mapping(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, Mapping | BaseModel):
            raise ValueError(f"must be a mapping of settings, got {type(value).__name__}")
        return value
