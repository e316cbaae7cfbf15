"""The taggers we compare against, behind one small interface with our own pipeline.

Every tagger turns items into the rows ``llm4tag tag`` writes (``{"id", "tags": [{"tag", "confidence",
"source"}], ...}``), so ``llm4tag eval`` and :func:`llm4tag.evaluation.tagging.evaluate_tagging` score
them all alike. Methods (LLM4Tag table 1 and the papers in /reference):

``match``              top tags by item-tag cosine (the paper's BGE/GTE rows).
``taggpt-selective``   TagGPT's selective tagger: early matching by cosine, the LLM selects among the
                       matched candidates.
``taggpt-generative``  TagGPT's generative tagger: free generation, each generated phrase matched late to
                       the vocabulary by cosine with a threshold.
``betag``              BETag's diverse multi-beam generation of base tags (beam groups with a diversity
                       penalty), matched late like the generative tagger. BETag's behaviour fine-tuning
                       needs user interaction logs, which no shared data set has: this is its
                       "w/o fine-tuning" variant (BETag table 3).
``llm4tag``            our pipeline (recall, knowledge-enhanced generation, calibration).

A tag's ``confidence`` is the method's own score: our calibrated Yes/No probability; for the baselines,
which have none, the cosine that matched the tag (clipped to [0, 1]), so that their accuracy-coverage
curves can be drawn over the same thresholds.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from llm4tag.config import PeerPromptConfig, PeersConfig, Settings, TextConfig, resolve_mode
from llm4tag.data import Item, Tag, read_tags
from llm4tag.encoded_text import item_text, readable_tag, tag_text
from llm4tag.encoder import Encoder
from llm4tag.engines import make_engine
from llm4tag.engines.base import ChoiceRequest, Engine, Messages
from llm4tag.engines.choices import match_choices
from llm4tag.errors import LLM4TagError
from llm4tag.generator import TagLabels
from llm4tag.recaller import Recaller

log = logging.getLogger(__name__)
METHODS = ("llm4tag", "match", "taggpt-selective", "taggpt-generative", "betag")
BASELINE_METHODS = METHODS[1:]


class Tagger(Protocol):
    name: str

    def tag(self, items: Sequence[Item]) -> list[dict]:
        """One row per item, in order."""
        ...


def tag_rows(tagger: Tagger, items: Iterable[Item], batch_size: int) -> Iterator[dict]:
    batch: list[Item] = []
    for item in items:
        batch.append(item)
        if len(batch) >= batch_size:
            yield from tagger.tag(batch)
            batch = []
    if batch:
        yield from tagger.tag(batch)


# --- parsing generated tags


_BULLET = re.compile(r"^\s*(?:\d+\s*[.):]|[-*•·]|#)\s*")
_PREFIX = re.compile(r"^\s*(?:the\s+)?(?:tags?|labels?|keywords?|answer)\s*(?:are|is)?\s*[:：-]\s*", re.I)
_SPLIT = re.compile(r"[,;\n|#،、]+")


def normalise_tag(phrase: str) -> str:
    """One spelling per tag: NFKC, case-folded, ``_`` as space, no wrapping quotes or punctuation."""
    text = unicodedata.normalize("NFKC", phrase).casefold().replace("_", " ")
    text = _BULLET.sub("", text)
    text = " ".join(text.split())
    return text.strip(" \t\"'`*.:;!?()[]{}<>")


def parse_tags(text: str, max_words: int = 5, max_chars: int = 60) -> list[str]:
    """The tags in a free LLM answer, in order, distinct.

    Small models wrap their lists in many ways ("Tags: a, b", numbered lines, hashtags, quotes); a
    phrase longer than ``max_words`` words or ``max_chars`` characters is a sentence (an explanation
    after the list), not a tag, and is dropped.
    """
    found: list[str] = []
    for line in text.splitlines() or [text]:
        line = _PREFIX.sub("", _BULLET.sub("", line))
        for part in _SPLIT.split(line):
            tag = normalise_tag(_PREFIX.sub("", part))
            if (
                tag
                and len(tag) <= max_chars
                and len(tag.split()) <= max_words
                and any(ch.isalpha() for ch in tag)
                and tag not in found
            ):
                found.append(tag)
    return found


# --- the vocabulary as vectors


class TagIndex:
    """Tag names with unit vectors from the encoder that encodes the items: early and late matching."""

    def __init__(self, names: Sequence[str], descriptions: Sequence[str | None], vectors, encoder, texts):
        if len(names) != len(vectors):
            raise LLM4TagError("tag names and tag vectors differ in number")
        self.names = list(names)
        self.descriptions = list(descriptions)
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.encoder = encoder
        self.texts: TextConfig = texts

    @classmethod
    def from_tags(cls, tags: Sequence[Tag], encoder, texts: TextConfig) -> TagIndex:
        vectors = encoder.encode([tag_text(t, texts.tag_description_chars) for t in tags])
        return cls([t.tag for t in tags], [t.description for t in tags], vectors, encoder, texts)

    @classmethod
    def from_store(cls, store, encoder, texts: TextConfig) -> TagIndex:
        # The store's own tag vectors: the same the match-based recall searches.
        first = store.shards[0] if hasattr(store, "shards") else store
        vectors = first.tag_index.reconstruct_all()
        return cls(first.graph.tag_names, first.graph.tag_descriptions, vectors, encoder, texts)

    def encode_items(self, items: Sequence[Item]) -> np.ndarray:
        return self.encoder.encode([item_text(i, self.texts.item_fields) for i in items])

    def similarities(self, vectors: np.ndarray) -> np.ndarray:
        return np.asarray(vectors, dtype=np.float32) @ self.vectors.T

    def top(self, vectors: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
        """The k most similar tags of each vector: (position, cosine), best first, ties by position."""
        sims = self.similarities(vectors)
        k = min(k, sims.shape[1])
        out = []
        for row in sims:
            order = np.lexsort((np.arange(len(row)), -row))[:k]
            out.append([(int(j), float(row[j])) for j in order])
        return out


def _unit(score: float) -> float:
    return round(min(1.0, max(0.0, float(score))), 6)


@dataclass(frozen=True)
class LateMatch:
    tag: str
    score: float  # best cosine of a generated phrase to the tag
    phrase: str  # that phrase
    votes: int  # beams (answers) with a phrase matching the tag


def late_match(
    sims: np.ndarray,
    names: Sequence[str],
    phrases: Sequence[str],
    threshold: float,
    max_tags: int,
    answer_of: Sequence[int] | None = None,
) -> list[LateMatch]:
    """TagGPT's late semantic matching: every vocabulary tag whose cosine to some generated phrase
    reaches ``threshold`` (the score matrix S of section 2.2.1), best first.

    ``sims`` is phrases x tags. With several answers per item (BETag's beams; ``answer_of`` gives each
    phrase's answer), tags that more answers agree on come first, then by cosine.
    """
    if sims.size == 0:
        return []
    answer_of = list(answer_of) if answer_of is not None else [0] * len(phrases)
    best = sims.argmax(axis=0)
    matches = []
    for j in np.flatnonzero(sims.max(axis=0) >= threshold).tolist():
        votes = len({answer_of[i] for i in np.flatnonzero(sims[:, j] >= threshold).tolist()})
        matches.append(LateMatch(names[j], float(sims[best[j], j]), phrases[best[j]], votes))
    matches.sort(key=lambda m: (-m.votes, -m.score, m.tag))
    return matches[:max_tags]


# --- prompts


def _clip(text: str, chars: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= chars else text[: chars - 1].rstrip() + "…"


class BaselinePrompts:
    """The baselines' templates (prompts/peers.yaml, the `peers:` config section) with the domain
    words of the `prompts:` section."""

    def __init__(self, settings: Settings):
        self.config: PeerPromptConfig = settings.peers.prompts
        base = settings.prompts
        self.max_chars = base.max_content_chars
        self.common = {
            "domain": base.domain,
            "item_kind": base.item_kind,
            "item_kind_title": base.item_kind[:1].upper() + base.item_kind[1:],
            "item_kinds": base.item_kind_plural or base.item_kind + "s",
        }
        peers = settings.peers
        self.example = ""
        if peers.example_text:
            self.example = self.config.example.format(
                **self.common,
                text=_clip(peers.example_text, base.max_sample_chars),
                tags=", ".join(readable_tag(t) for t in peers.example_tags),
            )

    def _messages(self, user: str) -> Messages:
        return [
            {"role": "system", "content": self.config.system.format(**self.common)},
            {"role": "user", "content": user},
        ]

    def generative(self, content: str) -> Messages:
        return self._messages(
            self.config.generative.format(
                **self.common, content=_clip(content, self.max_chars), example=self.example
            )
        )

    def selective(self, content: str, candidates: Sequence[str], max_tags: int) -> Messages:
        if max_tags <= 1:
            instruction = self.config.selective_single.format(**self.common)
        else:
            instruction = self.config.selective_multi.format(**self.common, max_tags=max_tags)
        return self._messages(
            self.config.selective.format(
                **self.common,
                content=_clip(content, self.max_chars),
                candidates=", ".join(candidates),
                instruction=instruction,
            )
        )


# --- the taggers


class MatchTagger:
    name = "match"

    def __init__(self, index: TagIndex, max_tags: int):
        self.index = index
        self.max_tags = max_tags

    def tag(self, items: Sequence[Item]) -> list[dict]:
        if not items:
            return []
        hits = self.index.top(self.index.encode_items(items), self.max_tags)
        return [
            {
                "id": item.id,
                "tags": [
                    {"tag": self.index.names[j], "confidence": _unit(s), "source": "match"} for j, s in row
                ],
            }
            for item, row in zip(items, hits, strict=True)
        ]


class _LLMBaseline:
    name = "baseline"

    def __init__(self, index: TagIndex, engine: Engine, settings: Settings, max_tags: int):
        if engine is None:
            raise LLM4TagError(f"method {self.name} needs an LLM engine")
        self.index = index
        self.engine = engine
        self.config: PeersConfig = settings.peers
        self.vocab_parse = (settings.vocab.max_words, settings.vocab.max_chars)
        self.prompts = BaselinePrompts(settings)
        self.max_tags = max_tags

    def contents(self, items: Sequence[Item]) -> list[str]:
        return [item_text(i, self.index.texts.item_fields) for i in items]

    def _late_rows(self, items: Sequence[Item], answers: Sequence[Sequence[str]]) -> list[dict]:
        """Rows from each item's generated answers (one, or one per beam), matched late."""
        rows = []
        parsed = [
            [(a, p) for a, text in enumerate(texts) for p in parse_tags(text, *self.vocab_parse)]
            for texts in answers
        ]
        distinct = sorted({p for item in parsed for _, p in item})
        vectors = (
            self.index.encoder.encode(distinct) if distinct else np.zeros((0, self.index.vectors.shape[1]))
        )
        position = {p: i for i, p in enumerate(distinct)}
        for item, texts, pairs in zip(items, answers, parsed, strict=True):
            phrases = [p for _, p in pairs]
            sims = (
                self.index.similarities(vectors[[position[p] for p in phrases]])
                if phrases
                else np.zeros((0, 0))
            )
            answer_of = [a for a, _ in pairs]
            threshold = self.config.match_threshold
            matches = late_match(sims, self.index.names, phrases, threshold, self.max_tags, answer_of)
            # The best matches under the threshold, like our pipeline's --dropped: an evaluation over
            # lower thresholds re-admits them (the accuracy-coverage curve).
            below = [
                m
                for m in late_match(sims, self.index.names, phrases, -1.0, len(self.index.names), answer_of)
                if m.score < threshold
            ][: self.max_tags]
            rows.append(
                {
                    "id": item.id,
                    "tags": [self._entry(m, len(texts) > 1) for m in matches],
                    "dropped": [self._entry(m, False) for m in below],
                    "generated": list(dict.fromkeys(phrases)),
                    "raw": texts[0] if len(texts) == 1 else list(texts),
                }
            )
        return rows

    @staticmethod
    def _entry(match: LateMatch, votes: bool) -> dict:
        entry = {"tag": match.tag, "confidence": _unit(match.score), "source": "late-match"}
        entry["phrase"] = match.phrase
        if votes:
            entry["votes"] = match.votes
        return entry


class SelectiveTagger(_LLMBaseline):
    name = "taggpt-selective"

    def tag(self, items: Sequence[Item]) -> list[dict]:
        if not items:
            return []
        hits = self.index.top(self.index.encode_items(items), self.config.num_candidates)
        labels = TagLabels(self.index.names)
        choice_sets = [tuple(labels.labels([self.index.names[j] for j, _ in row])) for row in hits]
        messages = [
            self.prompts.selective(content, choices, self.max_tags)
            for content, choices in zip(self.contents(items), choice_sets, strict=True)
        ]
        raws: list[str | None]
        if self.config.selective_constrained:
            chosen = self.engine.choose(
                [ChoiceRequest(m, c, self.max_tags) for m, c in zip(messages, choice_sets, strict=True)]
            )
            raws = [None] * len(items)
        else:
            raws = list(self.engine.generate(messages, self.config.max_new_tokens))
            chosen = [match_choices(t, c, self.max_tags) for t, c in zip(raws, choice_sets, strict=True)]
        rows = []
        for item, row_hits, picked, raw in zip(items, hits, chosen, raws, strict=True):
            cosine = {self.index.names[j]: s for j, s in row_hits}
            tags = labels.tags(picked)
            row = {
                "id": item.id,
                "tags": [{"tag": t, "confidence": _unit(cosine[t]), "source": "match"} for t in tags],
                "generated": tags,
            }
            if raw is not None:
                row["raw"] = raw
            rows.append(row)
        return rows


class GenerativeTagger(_LLMBaseline):
    name = "taggpt-generative"

    def tag(self, items: Sequence[Item]) -> list[dict]:
        if not items:
            return []
        messages = [self.prompts.generative(c) for c in self.contents(items)]
        texts = self.engine.generate(messages, self.config.max_new_tokens)
        return self._late_rows(items, [[t] for t in texts])


class BETagTagger(_LLMBaseline):
    name = "betag"

    def tag(self, items: Sequence[Item]) -> list[dict]:
        if not items:
            return []
        c = self.config
        messages = [self.prompts.generative(content) for content in self.contents(items)]
        answers = self.engine.generate_diverse(
            messages, c.max_new_tokens, c.num_beams, c.num_beam_groups, c.diversity_penalty, c.length_penalty
        )
        return self._late_rows(items, answers)


class PipelineTagger:
    """Our pipeline behind the same interface."""

    name = "llm4tag"

    def __init__(self, pipeline, with_dropped: bool = False, with_candidates: bool = False):
        self.pipeline = pipeline
        self.with_dropped = with_dropped
        self.with_candidates = with_candidates

    def tag(self, items: Sequence[Item]) -> list[dict]:
        return self.pipeline.tag(items, with_candidates=self.with_candidates, with_dropped=self.with_dropped)


_BASELINES = {
    "match": MatchTagger,
    "taggpt-selective": SelectiveTagger,
    "taggpt-generative": GenerativeTagger,
    "betag": BETagTagger,
}


def make_baseline(
    method: str, index: TagIndex, settings: Settings, engine: Engine | None, max_tags: int
) -> Tagger:
    if method not in _BASELINES:
        raise LLM4TagError(f"unknown baseline method '{method}' (one of {', '.join(BASELINE_METHODS)})")
    if method == "match":
        return MatchTagger(index, max_tags)
    return _BASELINES[method](index, engine, settings, max_tags)


def max_tags_for(settings: Settings, store=None) -> int:
    """Tags per item: the configured mode, or for `auto` the store's annotations (as our pipeline
    decides); a bare vocabulary says nothing about them, so it is tagged in multi-tag mode."""
    mode = settings.pipeline.mode
    if mode == "auto":
        if store is None:
            mode = "multi"
        else:
            shards = store.shards if hasattr(store, "shards") else [store]
            stats = [s.stats() for s in shards]
            contents = sum(s["contents"] for s in stats)
            edges = sum(s["deterministic_edges"] for s in stats)
            mode = resolve_mode(mode, [edges / contents] if contents else [])
    return 1 if mode == "single" else settings.pipeline.max_tags


def open_baseline(
    method: str,
    settings: Settings,
    store_dir: str | Path | None = None,
    tags_path: str | Path | None = None,
    engine: Engine | None = None,
) -> Tagger:
    """A baseline tagger over a store's vocabulary (and its encoder) or over a vocabulary file."""
    store = None
    if store_dir is not None:
        recaller = Recaller.open(store_dir, settings)
        store = recaller.store
        index = TagIndex.from_store(store, recaller.encoder, settings.texts)
    elif tags_path is not None:
        index = TagIndex.from_tags(read_tags(tags_path), Encoder(settings.encoder), settings.texts)
    else:
        raise LLM4TagError("a baseline tagger needs a store or a tag vocabulary file")
    if engine is None and method != "match":
        llm = settings.llm
        if method == "betag" and llm.engine == "llamacpp":
            # Diverse beam search needs beams that share and reorder a KV cache; the llama.cpp engine
            # has none, the transformers engine does.
            log.warning("BETag's diverse beam search runs on the transformers engine, not llama.cpp")
            llm = llm.with_overrides({"engine": "transformers"})
        engine = make_engine(llm)
    return make_baseline(method, index, settings, engine, max_tags_for(settings, store))
