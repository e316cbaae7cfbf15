"""`llm4tag augment`: the LLM writes short example items for the tags of a store that have fewer than
``augment.min_annotations`` real annotations, from the tag's name, description (SKOS labels and notes
included), the knowledge snippets about it and, for style, a few real items of the annotated tags
nearest to it (by tag vector). One LLM call per tag, so the cost grows with the tags added, not with
the items tagged.

The examples are stored with provenance ``synthetic`` (llm4tag/synthetic.py), one durable append per
tag: a tag asked for k examples already is skipped, so a rerun after a kill asks the LLM only for the
tag in flight and the tags after it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from graph_store import GraphStore, ShardedStore, open_store
from llm4tag.config import Settings
from llm4tag.encoded_text import readable_tag
from llm4tag.engines.base import Engine, Messages
from llm4tag.errors import LLM4TagError
from llm4tag.knowledge.store_knowledge import StoreKnowledge
from llm4tag.progress import step
from llm4tag.prompts import AugmentPromptConfig, Prompts
from llm4tag.store_builder import store_annotations
from llm4tag.synthetic import SyntheticExamples

# A list marker the model may put before a line despite being asked not to: "1.", "2)", "-", "*", "•".
_MARKER = re.compile(r"^\s*(?:[-*•]|\d{1,3}[.)])\s*")
_QUOTES = "\"'“”‘’`"


@dataclass(frozen=True)
class TagContext:
    """What the prompt shows of one tag."""

    tag: str
    description: str | None
    knowledge: tuple[str, ...]
    style: tuple[str, ...]  # real items of the nearest annotated tags


def _key(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.casefold()).split())


def parse_examples(
    answer: str, tag: str, style: Sequence[str], limit: int, max_chars: int = 300, stored: Sequence[str] = ()
) -> list[str]:
    """The example items of an answer, one per line, at most ``limit``: list markers and enclosing
    quotes stripped, lines cut to ``max_chars``; empty lines, a preamble (a line ending in a colon),
    repeats (of each other or of ``stored``, the tag's examples written before), a line that is the
    tag's name alone and a line copied from the style examples are dropped."""
    banned = {_key(tag), _key(readable_tag(tag))} | {_key(s) for s in style} | {_key(s) for s in stored}
    out: list[str] = []
    for line in answer.splitlines():
        text = _MARKER.sub("", line).strip().strip(_QUOTES).strip()
        if len(text) > max_chars:
            text = text[:max_chars].rstrip()
        key = _key(text)
        if not key or key in banned or text.endswith(":"):  # ":": a preamble ("Here are 5 queries:")
            continue
        banned.add(key)
        out.append(text)
        if len(out) == limit:
            break
    return out


def prompt_version(config: AugmentPromptConfig) -> str:
    """A digest of the templates, recorded with every example (a changed template, a new version)."""
    text = json.dumps(config.model_dump(), sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def augment_messages(
    config: AugmentPromptConfig, prompts: Prompts, context: TagContext, k: int, max_chars: int
) -> Messages:
    common = prompts.common
    description = f" ({context.description})" if context.description else ""
    knowledge = [config.knowledge.format(**common, text=text) for text in context.knowledge]
    examples = [config.example.format(**common, text=text[:max_chars]) for text in context.style]
    none = config.none.format(**common)
    request = config.request.format(
        **common,
        tag=readable_tag(context.tag),
        tag_description=description,
        knowledge="\n".join(knowledge) or none,
        examples="\n".join(examples) or none,
        k=k,
    )
    return [
        {"role": "system", "content": config.system.format(**common)},
        {"role": "user", "content": request},
    ]


class StoreTags:
    """What a store knows of its tags for augmentation: real annotation counts, descriptions (with the
    SKOS label where it is not the tag's name), vectors, real items per tag, knowledge snippets."""

    def __init__(self, store_dir: str | os.PathLike, store: GraphStore | ShardedStore):
        store.sync()
        shard = store.shards[0] if isinstance(store, ShardedStore) else store
        self.names = list(shard.graph.tag_names)
        self.vectors = np.asarray(shard.tag_index.reconstruct_all(), np.float32)
        skos = ((store.meta or {}).get("vocabulary") or {}).get("tags") or {}
        self.descriptions = []
        for name, description in zip(self.names, shard.graph.tag_descriptions, strict=True):
            label = (skos.get(name) or {}).get("label")
            parts = [f"label: {label}" if label and label != name else None, description]
            self.descriptions.append("; ".join(p for p in parts if p) or None)
        self.items: dict[str, list[str]] = {}
        items, _ = store_annotations(store)
        for item in items:
            for tag in item.tags or ():
                self.items.setdefault(tag, []).append(item.text)
        self.knowledge = StoreKnowledge.open(store_dir, store.encoder_id).domain

    def real(self, tag: str) -> int:
        return len(self.items.get(tag, ()))

    def context(self, tag: str, style_tags: int, style_items: int, snippets: int) -> TagContext:
        pos = self.names.index(tag)
        sims = self.vectors @ self.vectors[pos]
        order = np.argsort(-sims, kind="stable")
        near = [self.names[i] for i in order.tolist() if i != pos and self.items.get(self.names[i])]
        style = tuple(text for other in near[:style_tags] for text in self.items[other][:style_items])
        knowledge: tuple[str, ...] = ()
        if self.knowledge is not None and snippets:
            hits = self.knowledge.search(self.vectors[pos : pos + 1], [[tag]], n=snippets + 1)[0]
            # The tag's own description snippet repeats what the prompt already says.
            knowledge = tuple(
                h.snippet.text for h in hits if tag in h.snippet.tags and h.snippet.id != f"tag:{tag}"
            )[:snippets]
        return TagContext(tag, self.descriptions[pos], knowledge, style)


def augment_store(
    store_dir: str | os.PathLike,
    settings: Settings,
    *,
    k: int | None = None,
    min_annotations: int | None = None,
    tags: Sequence[str] | None = None,
    engine: Engine | None = None,
) -> dict:
    """Write up to ``k`` synthetic examples for each tag of the store with fewer than
    ``min_annotations`` real annotations (or for ``tags``); a summary. ``engine``: an engine already
    loaded (default: ``settings.llm``'s, loaded only if a tag needs it)."""
    config = settings.augment
    k = config.k if k is None else k
    floor = config.min_annotations if min_annotations is None else min_annotations
    if k < 1 or floor < 1:
        raise LLM4TagError(f"--k and --min-annotations must be at least 1, got {k} and {floor}")
    started = time.perf_counter()
    known = StoreTags(store_dir, open_store(store_dir))
    if tags is not None:
        unknown = sorted(set(tags) - set(known.names))
        if unknown:
            raise LLM4TagError(
                f"tag {unknown[0]!r} is not in the store's vocabulary ({len(unknown)} unknown)"
            )
        wanted = list(dict.fromkeys(tags))
    else:
        wanted = [t for t in known.names if known.real(t) < floor]
    examples = SyntheticExamples(store_dir)
    stored, asked = examples.by_tag(), examples.asked()
    todo = [t for t in wanted if len(stored.get(t, ())) < k and asked.get(t, 0) < k]
    prompts, version = Prompts(settings.prompts), prompt_version(config.prompts)
    written = calls = 0
    owned = engine is None and bool(todo)
    with step("augment: example items per tag", total=len(todo), unit="tag") as bar:
        if owned:
            from llm4tag.engines import make_engine

            engine = make_engine(settings.llm)
        try:
            for tag in todo:
                have = [e.text for e in stored.get(tag, ())]
                context = known.context(tag, config.style_tags, config.style_items, config.snippets)
                messages = augment_messages(
                    config.prompts, prompts, context, k - len(have), config.max_example_chars
                )
                answer = engine.generate([messages], max_tokens=config.max_new_tokens)[0]
                calls += 1
                texts = parse_examples(
                    answer, tag, context.style, k - len(have), config.max_example_chars, stored=have
                )
                written += len(examples.append(tag, texts, k, settings.llm.model, version))
                bar.update(1)
        finally:
            if owned and engine is not None:
                engine.close()
    return {
        "store": str(Path(store_dir)),
        "model": settings.llm.model,
        "prompt_version": version,
        "k": k,
        "min_annotations": floor,
        "tags_wanted": len(wanted),
        "tags_augmented": len(todo),
        "tags_skipped": len(wanted) - len(todo),
        "examples_written": written,
        "llm_calls": calls,
        "seconds": round(time.perf_counter() - started, 2),
    }


def remove_examples(store_dir: str | os.PathLike, tags: Sequence[str] | None) -> dict:
    """Remove the synthetic examples of ``tags`` (None: all of them); a summary."""
    removed = SyntheticExamples(store_dir).remove(tags)
    return {"store": str(Path(store_dir)), "removed_examples": removed, "tags": list(tags) if tags else "all"}
