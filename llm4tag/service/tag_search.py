"""The vocabulary search of GET /v1/tags and the review UI's vocabulary view."""

from __future__ import annotations

import re
from collections.abc import Sequence

from llm4tag.service.http_schema import RequestError

_WORD = re.compile(r"[a-z0-9]+")


class TagSearch:
    """Search of one vocabulary: tags matching every word of the query (in the name or the
    description), best first. A name match ranks above a description match, a whole-name match above
    all; an empty query lists the vocabulary in its order.

    The names and descriptions are lowered and split once, here, not per request; the query is capped
    (``max_query_chars``) and its repeated words count once, and each word scans only the tags every
    earlier word matched, so a request costs at most (distinct words) x (vocabulary) substring tests.
    """

    def __init__(self, tags: Sequence[str], descriptions: Sequence[str | None], max_query_chars: int = 200):
        self.tags, self.descriptions = list(tags), list(descriptions)
        if len(self.tags) != len(self.descriptions):
            raise ValueError("one description (or None) per tag")
        self.max_query_chars = max_query_chars
        self._names = [" ".join(_WORD.findall(t.lower())) for t in self.tags]
        self._name_words = [frozenset(name.split()) for name in self._names]
        self._texts = [(d or "").lower() for d in self.descriptions]

    def check_query(self, query: str) -> None:
        """Refuse (422 naming ``q``) a query over the limit, searched or not."""
        if len(query) > self.max_query_chars:
            raise RequestError(
                f"has {len(query)} characters, more than the limit of {self.max_query_chars}", "q"
            )

    def search(self, query: str, limit: int = 20) -> list[dict]:
        self.check_query(query)
        words = list(dict.fromkeys(_WORD.findall(query.lower())))
        if not words:
            return [self._row(p) for p in range(min(limit, len(self.tags)))]
        scores = dict.fromkeys(range(len(self.tags)), 0.0)
        for word in words:
            matched = {}
            for position, score in scores.items():
                if word in self._name_words[position]:
                    matched[position] = score + 3
                elif word in self._names[position]:
                    matched[position] = score + 2
                elif word in self._texts[position]:
                    matched[position] = score + 1
            scores = matched
            if not scores:
                return []
        whole = " ".join(words)
        ranked = sorted(scores, key=lambda p: (-(scores[p] + (10 if self._names[p] == whole else 0)), p))
        return [self._row(p) for p in ranked[:limit]]

    def _row(self, position: int) -> dict:
        return {"tag": self.tags[position], "description": self.descriptions[position]}
