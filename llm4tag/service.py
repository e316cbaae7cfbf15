"""The HTTP service's settings (request limits, batching, retries) and its vocabulary search; the
request and answer shapes are llm4tag/http_schema.py's."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from llm4tag.errors import ConfigError
from llm4tag.http_schema import Limits


@dataclass
class Batching:
    max_batch_size: int = 8
    batch_wait_timeout_s: float = 0.02


@dataclass
class ServiceConfig:
    limits: Limits = field(default_factory=Limits)
    encoder: Batching = field(default_factory=lambda: Batching(64, 0.005))
    generator: Batching = field(default_factory=Batching)
    calibrator: Batching = field(default_factory=lambda: Batching(16, 0.02))
    # Seconds a client is told to wait (Retry-After) when the service sheds load.
    retry_after_s: int = 2
    # A downstream replica that died mid-request (e.g. its node went away) is retried this often.
    retries: int = 2

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ServiceConfig:
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown service setting(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            if name == "limits":
                kwargs[name] = _dataclass(Limits, value, "service.limits")
            elif name in ("encoder", "generator", "calibrator"):
                kwargs[name] = _dataclass(Batching, value, f"service.{name}")
            else:
                kwargs[name] = value
        config = cls(**kwargs)
        for name in (
            "max_items",
            "max_text_chars",
            "max_body_bytes",
            "max_tags_per_item",
            "max_search_results",
        ):
            if getattr(config.limits, name) < 1:
                raise ConfigError(f"service.limits.{name} must be >= 1")
        return config

    def to_dict(self) -> dict:
        return asdict(self)


def _dataclass(cls, value: Any, where: str):
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a mapping, got {type(value).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ConfigError(f"unknown setting(s) in {where}: {', '.join(unknown)}")
    return cls(**value)


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
