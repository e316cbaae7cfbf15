"""Meta-path recall (C2T ∪ C2C2T) and match-based recall over search hits.

Searching (faiss) and selecting (this module) are separate so that a sharded store can search every
shard, merge the hits, and select exactly as an unsharded store would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from graph_store.config import RecallConfig

C2T, C2C2T, MATCH = "c2t", "c2c2t", "match"
MAX_VIA = 5  # neighbour items named in a candidate's provenance


@dataclass
class Candidate:
    tag: str
    score: float
    paths: tuple[str, ...]
    c2t_score: float | None = None  # cosine(item, tag) on a C2T similarity edge
    c2c2t_score: float | None = None  # similarity-weighted share of neighbours annotated with the tag
    via: tuple[str, ...] = ()  # neighbour items whose deterministic edge led here, most similar first

    def to_dict(self) -> dict:
        out: dict = {"tag": self.tag, "score": round(self.score, 6), "paths": list(self.paths)}
        if self.c2t_score is not None:
            out["c2t_score"] = round(self.c2t_score, 6)
        if self.c2c2t_score is not None:
            out["c2c2t_score"] = round(self.c2c2t_score, 6)
        if self.via:
            out["via"] = list(self.via)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Candidate:
        """The inverse of ``to_dict`` (scores come back as ``to_dict`` rounded them)."""
        return cls(
            tag=data["tag"],
            score=float(data["score"]),
            paths=tuple(data.get("paths") or ()),
            c2t_score=data.get("c2t_score"),
            c2c2t_score=data.get("c2c2t_score"),
            via=tuple(data.get("via") or ()),
        )


@dataclass
class Hits:
    """Search hits of one query item: tags by cosine, similar contents with their annotated tags."""

    tag_pos: np.ndarray  # tag positions, best first
    tag_sims: np.ndarray
    neighbour_ids: list[str] = field(default_factory=list)
    neighbour_sims: list[float] = field(default_factory=list)
    neighbour_tags: list[np.ndarray] = field(default_factory=list)  # tag positions per neighbour
    num_tags: int = 0  # the vocabulary size of the store that searched (0: not known)

    def within(self, num_tags: int) -> Hits:
        """These hits without the tags at position ``num_tags`` or beyond: tags added to the store
        after the caller read its vocabulary, which it cannot name until it reads it again."""
        if self.num_tags <= num_tags:
            return self
        return Hits(
            tag_pos=self.tag_pos[self.tag_pos < num_tags],
            tag_sims=self.tag_sims[self.tag_pos < num_tags],
            neighbour_ids=self.neighbour_ids,
            neighbour_sims=self.neighbour_sims,
            neighbour_tags=[tags[tags < num_tags] for tags in self.neighbour_tags],
            num_tags=num_tags,
        )


def round_sims(sims: np.ndarray) -> np.ndarray:
    # Dot products computed by different BLAS blockings (one index vs. its shards) differ in the last
    # bits; rounding makes merged and unsharded rankings, ties included, identical.
    return np.round(np.asarray(sims, dtype=np.float64), 6)


def select_merged(
    per_shard: Sequence[Sequence[Hits]], tag_names: Sequence[str], recall: RecallConfig
) -> list[list[Candidate]]:
    """Candidates per query from every shard's hits (one list of Hits per shard, queries in order):
    merged, then selected once, so they equal the candidates of the unsharded store."""
    return [
        select(merge_hits(list(parts), recall.c2c_search_k), tag_names, recall)
        for parts in zip(*per_shard, strict=True)
    ]


def merge_hits(parts: Sequence[Hits], neighbours_k: int) -> Hits:
    """Combine the hits of one query from several content shards (tags are in every shard)."""
    if len(parts) == 1:
        return parts[0]
    tag_best: dict[int, float] = {}
    for part in parts:
        for pos, sim in zip(part.tag_pos.tolist(), part.tag_sims.tolist(), strict=True):
            if sim > tag_best.get(pos, -np.inf):
                tag_best[pos] = sim
    tag_order = sorted(tag_best.items(), key=lambda kv: (-kv[1], kv[0]))
    rows = [
        (sim, item_id, tags)
        for part in parts
        for item_id, sim, tags in zip(
            part.neighbour_ids, part.neighbour_sims, part.neighbour_tags, strict=True
        )
    ]
    rows.sort(key=lambda r: (-r[0], r[1]))
    rows = rows[:neighbours_k]
    return Hits(
        tag_pos=np.asarray([p for p, _ in tag_order], np.int64),
        tag_sims=np.asarray([s for _, s in tag_order], np.float64),
        neighbour_ids=[r[1] for r in rows],
        neighbour_sims=[r[0] for r in rows],
        neighbour_tags=[r[2] for r in rows],
        num_tags=max(part.num_tags for part in parts),
    )


def linked(sims: Sequence[float], threshold: float, minimum: int, cap: int | None = None) -> int:
    """How many of the (descending) hits get a similarity edge: all at or above the threshold, at
    least `minimum` (the top-k fallback), at most `cap`."""
    passing = int(np.searchsorted(-np.asarray(sims, dtype=np.float64), -threshold, side="right"))
    count = max(passing, min(minimum, len(sims)))
    return count if cap is None else min(count, cap)


def select(hits: Hits, tag_names: Sequence[str], config: RecallConfig) -> list[Candidate]:
    """Meta-path candidates for one item, best first, at most config.num_candidates."""
    hits = hits.within(len(tag_names))
    c2t: dict[int, float] = {}
    n_ct = linked(hits.tag_sims, config.delta_ct, config.min_c2t)
    for pos, sim in zip(hits.tag_pos[:n_ct].tolist(), hits.tag_sims[:n_ct].tolist(), strict=True):
        c2t[pos] = float(sim)

    votes: dict[int, float] = {}
    via: dict[int, list[str]] = {}
    n_cc = linked(hits.neighbour_sims, config.delta_cc, config.min_c2c, config.c2c_search_k)
    total = 0.0
    for item_id, sim, tags in zip(
        hits.neighbour_ids[:n_cc], hits.neighbour_sims[:n_cc], hits.neighbour_tags[:n_cc], strict=True
    ):
        weight = max(float(sim), 1e-6)  # fallback neighbours may sit at or below zero similarity
        total += weight
        for pos in tags.tolist():
            votes[pos] = votes.get(pos, 0.0) + weight
            via.setdefault(pos, []).append(item_id)
    c2c2t = {pos: v / total for pos, v in votes.items()} if total else {}

    def fused(pos: int) -> float:
        return config.c2t_weight * c2t.get(pos, 0.0) + config.c2c2t_weight * c2c2t.get(pos, 0.0)

    by_c2c2t = sorted(c2c2t, key=lambda p: (-c2c2t[p], p))
    by_c2t = sorted(c2t, key=lambda p: (-c2t[p], p))
    chosen = by_c2c2t[: config.max_c2c2t]
    taken = set(chosen)
    for pos in [p for p in by_c2t if p not in taken][: config.max_c2t]:
        chosen.append(pos)
        taken.add(pos)
    chosen = chosen[: config.num_candidates]
    if config.fill and len(chosen) < config.num_candidates:
        rest = sorted((p for p in set(c2t) | set(c2c2t) if p not in taken), key=lambda p: (-fused(p), p))
        chosen.extend(rest[: config.num_candidates - len(chosen)])
        taken.update(chosen)
        # Still short (few edges passed either threshold): the next most similar tags become
        # fallback C2T edges, so downstream stages always get num_candidates to choose from.
        for pos, sim in zip(hits.tag_pos[n_ct:].tolist(), hits.tag_sims[n_ct:].tolist(), strict=True):
            if len(chosen) >= config.num_candidates:
                break
            if pos not in taken:
                c2t[pos] = float(sim)
                chosen.append(pos)
                taken.add(pos)

    out = []
    for pos in chosen:
        paths = tuple(name for name, table in ((C2T, c2t), (C2C2T, c2c2t)) if pos in table)
        out.append(
            Candidate(
                tag=tag_names[pos],
                score=fused(pos),
                paths=paths,
                c2t_score=c2t.get(pos),
                c2c2t_score=c2c2t.get(pos),
                via=tuple(via.get(pos, ())[:MAX_VIA]),
            )
        )
    out.sort(key=lambda c: (-c.score, c.tag))
    return out


def select_match(hits: Hits, tag_names: Sequence[str], k: int) -> list[Candidate]:
    """The paper's match-based baseline: the k tags most similar to the item."""
    hits = hits.within(len(tag_names))
    return [
        Candidate(tag=tag_names[pos], score=float(sim), paths=(MATCH,), c2t_score=float(sim))
        for pos, sim in zip(hits.tag_pos[:k].tolist(), hits.tag_sims[:k].tolist(), strict=True)
    ]
