"""Knowledge-enhanced tag generation (paper section 3.3): the LLM picks tags among the candidates,
with retrieved samples and domain knowledge in its prompt (short-term retrieved knowledge, SRKI)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from llm4tag.encoded_text import readable_tag
from llm4tag.engines.base import CHOICE_SEPARATOR, ChoiceRequest, Engine, Messages
from llm4tag.engines.choices import match_choices
from llm4tag.prompts import Prompts, RetrievedSample


class TagLabels:
    """Tag identifiers as the LLM reads them ("card_arrival" -> "card arrival"), one-to-one.

    A label that two tags would share stays the raw identifier for both, so every answer maps back
    to exactly one tag.
    """

    def __init__(self, tags: Sequence[str]):
        readable: dict[str, list[str]] = {}
        for tag in tags:
            readable.setdefault(readable_tag(tag), []).append(tag)
        self.label = {}
        for text, owners in readable.items():
            for tag in owners:
                self.label[tag] = text if len(owners) == 1 and text not in self.label.values() else tag
        self.tag = {label: tag for tag, label in self.label.items()}

    def labels(self, tags: Sequence[str]) -> list[str]:
        return [self.label.get(t, t) for t in tags]

    def tags(self, labels: Sequence[str]) -> list[str]:
        return [self.tag.get(label, label) for label in labels]


@dataclass
class Generation:
    tags: list[str]
    sample_ids: list[str] = field(default_factory=list)
    snippet_ids: list[str] = field(default_factory=list)
    raw: str | None = None  # free-text answer, when generation is unconstrained
    # The prompt and the answer as the model wrote it: a judgment that continues this conversation
    # (prompts.layout: continuation) starts from them.
    messages: Messages | None = None
    answer: str | None = None


class Generator:
    def __init__(
        self,
        engine: Engine,
        prompts: Prompts,
        labels: TagLabels,
        samples=None,
        knowledge=None,
        num_samples: int = 3,
        num_snippets: int = 3,
        constrained: bool = True,
        max_new_tokens: int = 48,
    ):
        self.engine = engine
        self.prompts = prompts
        self.labels = labels
        self.samples = samples if num_samples > 0 else None
        self.knowledge = knowledge if num_snippets > 0 else None
        self.num_samples = num_samples
        self.num_snippets = num_snippets
        self.constrained = constrained
        self.max_new_tokens = max_new_tokens

    @property
    def retrieval(self) -> bool:
        return self.samples is not None or self.knowledge is not None

    def prompts_for(
        self,
        ids: Sequence[str],
        contents: Sequence[str],
        vectors: np.ndarray,
        candidates: Sequence[Sequence[str]],
        max_tags: int,
    ) -> tuple[list[Messages], list[list[str]], list[list[str]]]:
        """The prompts, and which samples and snippets went into each (for provenance)."""
        sample_hits: list[list] = [[] for _ in ids]
        snippet_hits: list[list] = [[] for _ in ids]
        if self.samples is not None and len(ids):
            # An item never retrieves itself: a stored item would otherwise be its own best example.
            sample_hits = self.samples.search(vectors, n=self.num_samples, exclude_ids=[{i} for i in ids])
        if self.knowledge is not None and len(ids):
            snippet_hits = self.knowledge.search(vectors, [list(c) for c in candidates], n=self.num_snippets)
        messages = []
        for content, cands, s_hits, k_hits in zip(
            contents, candidates, sample_hits, snippet_hits, strict=True
        ):
            samples = snippets = None
            if self.retrieval:
                samples = [
                    RetrievedSample(
                        h.sample.text,
                        tuple(self.labels.labels(h.sample.correct)),
                        tuple(self.labels.labels(h.sample.incorrect)),
                    )
                    for h in s_hits
                ]
                snippets = [h.snippet.text for h in k_hits]
            messages.append(
                self.prompts.generation(content, self.labels.labels(cands), max_tags, samples, snippets)
            )
        return (
            messages,
            [[h.sample.id for h in hits] for hits in sample_hits],
            [[h.snippet.id for h in hits] for hits in snippet_hits],
        )

    def generate(
        self,
        ids: Sequence[str],
        contents: Sequence[str],
        vectors: np.ndarray,
        candidates: Sequence[Sequence[str]],
        max_tags: int,
    ) -> list[Generation]:
        messages, sample_ids, snippet_ids = self.prompts_for(ids, contents, vectors, candidates, max_tags)
        choice_sets = [tuple(self.labels.labels(c)) for c in candidates]
        results = [
            Generation([], samples, snippets, messages=prompt)
            for samples, snippets, prompt in zip(sample_ids, snippet_ids, messages, strict=True)
        ]
        todo = [i for i, c in enumerate(choice_sets) if c]
        if self.constrained:
            answers = self.engine.choose([ChoiceRequest(messages[i], choice_sets[i], max_tags) for i in todo])
            for i, labels in zip(todo, answers, strict=True):
                results[i].tags = self.labels.tags(labels)
                results[i].answer = CHOICE_SEPARATOR.join(labels)
        else:
            texts = self.engine.generate([messages[i] for i in todo], self.max_new_tokens)
            for i, text in zip(todo, texts, strict=True):
                results[i].raw = results[i].answer = text
                results[i].tags = self.labels.tags(match_choices(text, choice_sets[i], max_tags))
        return results
