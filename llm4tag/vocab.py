"""A tag vocabulary built from raw content with the LLM (TagGPT, reference 002, section 2.1).

1. Candidate tags per item: the LLM answers TagGPT's generation prompt (peers.prompts.generative) for
   every item, in batches; each answer is cached in a JSONL file as it comes, so an interrupted build
   resumes where it stopped.
2. Aggregation: a tag's count is the number of items whose answer names it (spellings normalised).
3. Frequency filter: tags on too few items (no stable value) or too many (no power to tell items apart)
   are dropped; thresholds from the config, by default from the data's popularity distribution.
4. Near-duplicate merging: tags whose encoder cosine reaches ``merge_threshold`` (0.8) become one tag,
   labelled by its most popular spelling, with the others as its aliases.

The result is the vocabulary file every other verb reads (`tag`, `description`) plus `aliases` and
`count`. :func:`vocabulary_measures` gives TagGPT's measures of a tagging system (popularity
distribution, tags per item, redundancy ratio), :func:`vocabulary_coverage` how well a built
vocabulary covers a reference one.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from graph_store.durable import append_lines
from llm4tag.baselines import BaselinePrompts, parse_tags
from llm4tag.config import Settings, VocabConfig
from llm4tag.data import Item
from llm4tag.encoded_text import item_text
from llm4tag.progress import step

POPULARITY_BINS: tuple[tuple[int, int | None], ...] = (
    (1, 1),
    (2, 2),
    (3, 4),
    (5, 9),
    (10, 19),
    (20, 49),
    (50, 99),
    (100, None),
)


# --- aggregation and filtering (pure)


def aggregate(item_tags: Mapping[str, Sequence[str]]) -> Counter[str]:
    """Document frequency: on how many items each tag was generated (a repeat within an item counts once)."""
    counts: Counter[str] = Counter()
    for tags in item_tags.values():
        counts.update(set(tags))
    return counts


@dataclass
class FrequencyCut:
    min_count: int
    max_count: int
    kept: list[str]  # most popular first
    too_rare: list[str]
    too_common: list[str]


def frequency_thresholds(counts: Mapping[str, int], n_items: int, config: VocabConfig) -> tuple[int, int]:
    """(min_count, max_count): a tag is kept when min_count <= count <= max_count.

    Defaults come from the data: too rare below max(2, 0.2% of the items); too common above the upper
    Tukey fence of the log counts of the tags that are not too rare (an outlier of popularity, as a
    tag on nearly every item is), but never below ``max_share_floor`` of the items.
    """
    min_count = config.min_count or max(2, math.ceil(0.002 * n_items))
    if config.max_share is not None:
        return min_count, math.floor(config.max_share * n_items)
    floor = math.ceil(config.max_share_floor * n_items)
    logs = np.log([c for c in counts.values() if c >= min_count])
    if len(logs) < 4:
        return min_count, max(floor, n_items)
    q1, q3 = np.percentile(logs, [25, 75])
    fence = math.floor(math.exp(q3 + 1.5 * (q3 - q1)))
    return min_count, max(fence, floor)


def frequency_filter(counts: Mapping[str, int], n_items: int, config: VocabConfig) -> FrequencyCut:
    low, high = frequency_thresholds(counts, n_items, config)
    ranked = sorted(counts, key=lambda t: (-counts[t], t))
    return FrequencyCut(
        min_count=low,
        max_count=high,
        kept=[t for t in ranked if low <= counts[t] <= high],
        too_rare=[t for t in ranked if counts[t] < low],
        too_common=[t for t in ranked if counts[t] > high],
    )


def merge_near_duplicates(tags: Sequence[str], vectors: np.ndarray, threshold: float) -> list[list[int]]:
    """Groups of near-duplicate tags, as positions into ``tags`` (ordered most popular first).

    Leader clustering: each tag joins the most similar group leader at or above ``threshold``, else it
    leads a new group. Unlike transitive merging it never chains "a"~"b"~"c" into one tag when "a" and
    "c" differ, and the leaders (the vocabulary's tags) stay below the threshold pairwise.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    groups: list[list[int]] = []
    leaders: list[int] = []
    for i in range(len(tags)):
        if leaders:
            sims = vectors[leaders] @ vectors[i]
            best = int(np.argmax(sims))
            if sims[best] >= threshold:
                groups[best].append(i)
                continue
        leaders.append(i)
        groups.append([i])
    return groups


# --- measures (pure, given vectors)


def _pairs_at_or_above(vectors: np.ndarray, threshold: float) -> tuple[int, int]:
    n = len(vectors)
    if n < 2:
        return 0, 0
    sims = vectors @ vectors.T
    upper = np.triu_indices(n, k=1)
    return int((sims[upper] >= threshold).sum()), len(upper[0])


def vocabulary_measures(
    item_tags: Mapping[str, Sequence[str]],
    vectors: Mapping[str, np.ndarray],
    threshold: float = 0.8,
    vocabulary: Sequence[str] | None = None,
) -> dict:
    """TagGPT's measures of a tagging system (section 3.1) over the items and the tags they carry.

    popularity: how many tags are used on 1, 2, 3-4, ... items; tags per item ("least effort");
    item redundancy: the mean share of an item's tag pairs at or above ``threshold`` cosine ("high
    coverage of multiple facets"); redundancy ratio: the share of all tag pairs of the vocabulary at or
    above it ("uniformity"). ``vocabulary`` defaults to the tags used on the items.
    """
    counts = aggregate(item_tags)
    vocabulary = list(vocabulary) if vocabulary is not None else sorted(counts)
    per_item = [len(set(t)) for t in item_tags.values()]
    pop_hist = {}
    for low, high in POPULARITY_BINS:
        label = f"{low}" if low == high else (f"{low}+" if high is None else f"{low}-{high}")
        pop_hist[label] = sum(
            1 for t in vocabulary if counts[t] >= low and (high is None or counts[t] <= high)
        )
    unused = sum(1 for t in vocabulary if counts[t] == 0)
    item_shares = []
    for tags in item_tags.values():
        distinct = [t for t in dict.fromkeys(tags) if t in vectors]
        if len(distinct) >= 2:
            hits, pairs = _pairs_at_or_above(np.stack([vectors[t] for t in distinct]), threshold)
            item_shares.append(hits / pairs)
    with_vectors = [t for t in vocabulary if t in vectors]
    hits, pairs = _pairs_at_or_above(
        np.stack([vectors[t] for t in with_vectors]) if with_vectors else np.zeros((0, 1)), threshold
    )
    tag_hist = Counter(min(n, 10) for n in per_item)
    return {
        "items": len(item_tags),
        "tags": len(vocabulary),
        "items_with_tags": sum(1 for n in per_item if n),
        "tags_per_item_mean": round(float(np.mean(per_item)), 4) if per_item else math.nan,
        "tags_per_item_median": float(np.median(per_item)) if per_item else math.nan,
        "tags_per_item_hist": {("10+" if n == 10 else str(n)): tag_hist[n] for n in sorted(tag_hist)},
        "popularity_hist": pop_hist,
        "unused_tags": unused,
        "tags_used_once_share": round(pop_hist["1"] / max(len(vocabulary) - unused, 1), 4),
        "popularity_max": max((counts[t] for t in vocabulary), default=0),
        "item_redundancy": round(float(np.mean(item_shares)), 4) if item_shares else 0.0,
        "redundancy_ratio": round(hits / pairs, 6) if pairs else 0.0,
        "redundant_pairs": hits,
        "threshold": threshold,
    }


def vocabulary_coverage(
    reference: Sequence[str],
    reference_vectors: np.ndarray,
    built: Sequence[str],
    built_vectors: np.ndarray,
    threshold: float = 0.8,
) -> dict:
    """The share of ``reference`` tags that some built tag matches at or above ``threshold`` cosine."""
    if not len(reference) or not len(built):
        return {
            "reference_tags": len(reference),
            "matched": 0,
            "coverage": 0.0,
            "threshold": threshold,
            "mean_best_cosine": math.nan,
            "matches": {},
            "nearest": {},
        }
    sims = np.asarray(reference_vectors, np.float32) @ np.asarray(built_vectors, np.float32).T
    best = sims.argmax(axis=1)
    top = sims.max(axis=1)
    matched = {
        reference[i]: (built[int(best[i])], round(float(top[i]), 4)) for i in np.flatnonzero(top >= threshold)
    }
    nearest = {reference[i]: (built[int(best[i])], round(float(top[i]), 4)) for i in range(len(reference))}
    return {
        "reference_tags": len(reference),
        "matched": len(matched),
        "coverage": round(len(matched) / len(reference), 4),
        "threshold": threshold,
        "mean_best_cosine": round(float(top.mean()), 4),
        "matches": matched,
        "nearest": nearest,
    }


# --- the build


@dataclass
class VocabularyResult:
    rows: list[dict]  # the vocabulary file's rows, most popular first
    item_tags: dict[str, list[str]]  # each item's tags in the built vocabulary
    raw_tags: dict[str, list[str]]  # each item's parsed candidate tags
    cut: FrequencyCut
    measures: dict
    stats: dict = field(default_factory=dict)

    @property
    def tags(self) -> list[str]:
        return [r["tag"] for r in self.rows]


def _cache_key(engine_name: str, messages, max_tokens: int) -> str:
    blob = json.dumps([engine_name, messages, max_tokens], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_answer_cache(path: Path) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
                rows[row["id"]] = row
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a torn last line from an interrupted build: that item is asked again
    return rows


class VocabularyBuilder:
    def __init__(self, engine, encoder, settings: Settings):
        self.engine = engine
        self.encoder = encoder
        self.settings = settings
        self.config: VocabConfig = settings.vocab
        self.prompts = BaselinePrompts(settings)

    def answers(self, items: Sequence[Item], cache: Path) -> tuple[dict[str, str], dict]:
        """Each item's raw LLM answer; cached answers to the same prompt and model are reused."""
        cached = read_answer_cache(cache)
        fields = self.settings.texts.item_fields
        messages = {i.id: self.prompts.generative(item_text(i, fields)) for i in items}
        keys = {
            i: _cache_key(self.engine.name if self.engine else "", m, self.config.max_new_tokens)
            for i, m in messages.items()
        }
        # Without an engine (a rebuild from the cache alone) every cached answer counts as it is.
        out = {
            i: cached[i]["raw"]
            for i in messages
            if i in cached and (self.engine is None or cached[i].get("key") == keys[i])
        }
        todo = [i.id for i in items if i.id not in out]
        stats = {"items": len(items), "cached": len(out), "asked": 0, "seconds": 0.0}
        if todo and self.engine is None:
            raise ValueError(f"{len(todo)} items have no cached answer and no LLM engine was given")
        cache.parent.mkdir(parents=True, exist_ok=True)
        with step("vocab: LLM answers", total=len(items), initial=len(items) - len(todo)) as bar:
            for start in range(0, len(todo), self.config.chunk):
                chunk = todo[start : start + self.config.chunk]
                started = time.perf_counter()
                texts = self.engine.generate([messages[i] for i in chunk], self.config.max_new_tokens)
                lines = []
                for item_id, text in zip(chunk, texts, strict=True):
                    out[item_id] = text
                    lines.append(json.dumps({"id": item_id, "key": keys[item_id], "raw": text}).encode())
                append_lines(cache, lines)  # a chunk at a time: an interrupted build resumes after it
                stats["asked"] += len(chunk)
                stats["seconds"] += time.perf_counter() - started
                bar.update(len(chunk))
        return out, stats

    def build(self, items: Sequence[Item], answers: Mapping[str, str]) -> VocabularyResult:
        c = self.config
        raw_tags = {i.id: parse_tags(answers.get(i.id, ""), c.max_words, c.max_chars) for i in items}
        counts = aggregate(raw_tags)
        cut = frequency_filter(counts, len(items), c)
        kept_vectors = self.encoder.encode(cut.kept) if cut.kept else np.zeros((0, self.encoder.dim))
        groups = merge_near_duplicates(cut.kept, kept_vectors, c.merge_threshold)
        owner = {cut.kept[m]: cut.kept[g[0]] for g in groups for m in g}
        item_tags = {
            item_id: list(dict.fromkeys(owner[t] for t in tags if t in owner))
            for item_id, tags in raw_tags.items()
        }
        merged_counts = aggregate(item_tags)
        rows = []
        for group in groups:
            label = cut.kept[group[0]]
            aliases = [cut.kept[m] for m in group[1:]]
            described = aliases[: c.description_aliases]
            rows.append(
                {
                    "tag": label,
                    "description": ("also: " + ", ".join(described)) if described else None,
                    "aliases": aliases,
                    "count": merged_counts[label],
                }
            )
        rows.sort(key=lambda r: (-r["count"], r["tag"]))
        leader_vectors = {cut.kept[g[0]]: kept_vectors[g[0]] for g in groups}
        measures = vocabulary_measures(
            item_tags, leader_vectors, c.redundancy_threshold, [r["tag"] for r in rows]
        )
        stats = {
            "candidate_tags": len(counts),
            "min_count": cut.min_count,
            "max_count": cut.max_count,
            "too_rare": len(cut.too_rare),
            "too_common": len(cut.too_common),
            "too_common_tags": cut.too_common[:20],
            "after_filter": len(cut.kept),
            "merged_away": len(cut.kept) - len(groups),
            "vocabulary": len(rows),
            "raw_tags_per_item": round(float(np.mean([len(t) for t in raw_tags.values()])), 3)
            if raw_tags
            else 0.0,
        }
        return VocabularyResult(rows, item_tags, raw_tags, cut, measures, stats)


def label_vectors(encoder, labels: Sequence[str]) -> dict[str, np.ndarray]:
    vectors = encoder.encode(list(labels)) if labels else np.zeros((0, encoder.dim))
    return dict(zip(labels, vectors, strict=True))
