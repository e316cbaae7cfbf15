"""The HTTP service's settings (request limits, batching, retries) and its vocabulary search; the
request and answer shapes are llm4tag/http_schema.py's."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import ClassVar

from pydantic import Field

from llm4tag.http_schema import Limits
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
    retry_after_s: int = Field(2, ge=0, description="Retry-After of a 503 when the service sheds load")
    # E.g. its node went away.
    retries: int = Field(
        2, ge=0, description="a downstream replica that died mid-request is retried this often"
    )


_WORD = re.compile(r"[a-z0-9]+")


def search_tags(
    query: str, tags: Sequence[str], descriptions: Sequence[str | None], limit: int = 20
) -> list[dict]:
    """Tags matching every word of the query (in the name or the description), best first.

    A name match ranks above a description match, a whole-name match above all; an empty query lists
    the vocabulary in its order.
    """
    words = _WORD.findall(query.lower())
    if not words:
        return [{"tag": t, "description": d} for t, d in zip(tags[:limit], descriptions[:limit], strict=True)]
    scored = []
    for position, (tag, description) in enumerate(zip(tags, descriptions, strict=True)):
        name_words = _WORD.findall(tag.lower())
        name = " ".join(name_words)
        text = (description or "").lower()
        score = 0.0
        for word in words:
            if word in name_words:
                score += 3
            elif word in name:
                score += 2
            elif word in text:
                score += 1
            else:
                score = -math.inf
                break
        if score > -math.inf:
            if name == " ".join(words):
                score += 10
            scored.append((-score, position, tag, description))
    scored.sort()
    return [{"tag": tag, "description": description} for _, _, tag, description in scored[:limit]]
