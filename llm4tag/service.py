"""The HTTP service's settings (request limits, batching, retries) and its vocabulary search; the
request and answer shapes are llm4tag/http_schema.py's."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import Field, field_validator

from llm4tag.auth import Auth
from llm4tag.http_schema import Limits, RequestError
from llm4tag.section import Section


class Batching(Section):
    """How a stage batches concurrent requests."""

    section: ClassVar[str] = "service.batching"

    max_batch_size: int = Field(8, ge=1, description="requests per model call at most")
    batch_wait_timeout_s: float = Field(0.02, ge=0, description="how long a batch waits to fill up")


class ServiceConfig(Section):
    """The HTTP service (the `service:` argument of the Serve application)."""

    section: ClassVar[str] = "service"

    limits: Limits = Field(default_factory=Limits, description="bounds on one request")
    encoder: Batching = Field(
        default_factory=lambda: Batching(max_batch_size=64, batch_wait_timeout_s=0.005),
        description="the Encoder deployment's batches",
    )
    generator: Batching = Field(default_factory=Batching, description="the Generator deployment's batches")
    calibrator: Batching = Field(
        default_factory=lambda: Batching(max_batch_size=16, batch_wait_timeout_s=0.02),
        description="the Calibrator's batches (on the Generator when judgments continue its conversation)",
    )
    auth: Auth = Field(
        default_factory=Auth,
        description="API keys for the write and admin routes (`auth: off` turns the check off)",
    )
    adapters_root: str | None = Field(
        None,
        description="POST /v1/admin/adapter accepts only adapter folders under this folder (none: refused)",
    )
    retry_after_s: int = Field(2, ge=0, description="Retry-After of a 503 when the service sheds load")
    llm_nice: int = Field(
        0,
        ge=0,
        le=19,
        description=(
            "niceness of the LLM replicas' processes (Generator, Calibrator): where they share CPU cores "
            "with the HTTP path (serve_config.cpu.yaml), a higher value lets the proxy and the ingress "
            "answer (and refuse) at once while the LLM computes; 0 on GPU machines"
        ),
    )
    deadline_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description=(
            "a tag request's time budget (a request's X-Deadline-Ms header may only shorten it): one "
            "that cannot be answered in time is refused at once (503 with Retry-After), one that runs "
            "past it is answered 504 and its queued work dropped"
        ),
    )
    # E.g. its node went away.
    retries: int = Field(
        2, ge=0, description="a downstream replica that died mid-request is retried this often"
    )

    @field_validator("auth", mode="before")
    @classmethod
    def _auth_off(cls, value: Any) -> Any:
        # YAML reads `auth: off` as false; both spellings turn the check off, and only they do.
        if value is False or (isinstance(value, str) and value.strip().lower() == "off"):
            return {"enabled": False}
        return value


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
                "q", f"has {len(query)} characters, more than the limit of {self.max_query_chars}"
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
