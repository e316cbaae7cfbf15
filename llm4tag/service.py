"""What the HTTP service accepts and answers, as plain Python: request limits, request parsing with
errors that name the field, and vocabulary search. The Serve ingress is a thin layer over this."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from llm4tag.data import Item
from llm4tag.errors import ConfigError

ID_PATTERN = re.compile(r"^[^\x00-\x1f]{1,256}$")


@dataclass
class Limits:
    """Bounds on one request; larger requests get a 4xx rather than tying up the service."""

    max_items: int = 64  # items per POST /v1/tag or /v1/feedback
    max_text_chars: int = 20_000  # per text field of an item
    max_body_bytes: int = 4 * 1024 * 1024
    max_tags_per_item: int = 64  # in feedback
    max_search_results: int = 100  # GET /v1/tags?limit=


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


class RequestError(ValueError):
    """A request the service refuses; ``field`` names the offending part (JSON-path-like)."""

    def __init__(self, field: str, message: str, status: int = 422):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status

    def body(self) -> dict:
        return {"error": self.message, "field": self.field}


@dataclass
class TagRequest:
    items: list[Item]
    candidates: bool = False
    dropped: bool = False
    single: bool = False  # the body was one item, so the answer is one row


@dataclass
class FeedbackRequest:
    items: list[Item]
    incorrect: list[list[str]]


def _items_of(body: Any, limits: Limits, options: Sequence[str]) -> tuple[list[Any], dict, bool]:
    if not isinstance(body, dict):
        raise RequestError("body", f"must be a JSON object, got {_json_type(body)}")
    if "items" in body:
        extra = sorted(set(body) - {"items", *options})
        if extra:
            raise RequestError(extra[0], "unknown field")
        raw = body["items"]
        if not isinstance(raw, list):
            raise RequestError("items", f"must be a list of items, got {_json_type(raw)}")
        if not raw:
            raise RequestError("items", "is empty")
        if len(raw) > limits.max_items:
            raise RequestError(
                "items", f"has {len(raw)} items, more than the limit of {limits.max_items}", 413
            )
        return raw, {k: body[k] for k in options if k in body}, False
    # One item at the top level, possibly with the options beside it.
    item = {k: v for k, v in body.items() if k not in options}
    return [item], {k: body[k] for k in options if k in body}, True


def _flag(options: dict, name: str) -> bool:
    value = options.get(name, False)
    if not isinstance(value, bool):
        raise RequestError(name, f"must be true or false, got {_json_type(value)}")
    return value


def _item(
    raw: Any, where: str, text_fields: Sequence[str], limits: Limits, allowed: set[str], index: int
) -> Item:
    if not isinstance(raw, dict):
        raise RequestError(where, f"must be a JSON object, got {_json_type(raw)}")
    extra = sorted(set(raw) - allowed)
    if extra:
        raise RequestError(f"{where}.{extra[0]}", f"unknown field (allowed: {', '.join(sorted(allowed))})")
    item_id = raw.get("id")
    if item_id is None:
        item_id = f"item-{index}"
    elif not isinstance(item_id, str) or not ID_PATTERN.match(item_id):
        raise RequestError(f"{where}.id", "must be a string of 1-256 printable characters")
    texts = {}
    for name in dict.fromkeys(["text", *text_fields]):
        value = raw.get(name)
        if value is None:
            if name == "text":
                raise RequestError(f"{where}.text", "is missing")
            continue
        if not isinstance(value, str):
            raise RequestError(f"{where}.{name}", f"must be a string, got {_json_type(value)}")
        if len(value) > limits.max_text_chars:
            raise RequestError(
                f"{where}.{name}",
                f"has {len(value)} characters, more than the limit of {limits.max_text_chars}",
                413,
            )
        texts[name] = value
    if not texts["text"].strip():
        raise RequestError(f"{where}.text", "is empty")
    extra_fields = {k: v for k, v in texts.items() if k != "text"}
    return Item(id=item_id, text=texts["text"], tags=None, extra=extra_fields)


def parse_tag_request(body: Any, text_fields: Sequence[str], limits: Limits) -> TagRequest:
    """``{"id", "text", ...}`` or ``{"items": [...], "candidates": bool, "dropped": bool}``."""
    options = ("candidates", "dropped")
    raw_items, opts, single = _items_of(body, limits, options)
    allowed = {"id", "text", *text_fields}
    items = []
    for index, raw in enumerate(raw_items):
        where = "body" if single else f"items[{index}]"
        items.append(_item(raw, where, text_fields, limits, allowed, index))
    _no_duplicate_ids(items, single)
    return TagRequest(items, _flag(opts, "candidates"), _flag(opts, "dropped"), single)


def parse_feedback_request(
    body: Any, text_fields: Sequence[str], vocabulary: set[str] | frozenset[str], limits: Limits
) -> FeedbackRequest:
    """Corrected annotations: ``{"id", "text", "tags": [correct...], "incorrect": [wrong...]}`` or a list
    under ``items``. Every tag must be in the vocabulary; ids are required (they key the graph)."""
    raw_items, _, single = _items_of(body, limits, ())
    allowed = {"id", "text", "tags", "incorrect", *text_fields}
    items, incorrect = [], []
    for index, raw in enumerate(raw_items):
        where = "body" if single else f"items[{index}]"
        if isinstance(raw, dict) and "id" not in raw:
            raise RequestError(f"{where}.id", "is missing (feedback must name the item it corrects)")
        item = _item(
            {k: v for k, v in raw.items() if k not in ("tags", "incorrect")}
            if isinstance(raw, dict)
            else raw,
            where,
            text_fields,
            limits,
            allowed,
            index,
        )
        correct = _tag_list(raw.get("tags"), f"{where}.tags", vocabulary, limits)
        wrong = _tag_list(raw.get("incorrect"), f"{where}.incorrect", vocabulary, limits)
        if not correct and not wrong:
            raise RequestError(
                f"{where}.tags", "feedback needs correct tags ('tags') or wrong ones ('incorrect')"
            )
        both = sorted(set(correct) & set(wrong))
        if both:
            raise RequestError(f"{where}.incorrect", f"names tag(s) also given as correct: {', '.join(both)}")
        items.append(Item(id=item.id, text=item.text, tags=tuple(correct), extra=item.extra))
        incorrect.append(wrong)
    _no_duplicate_ids(items, single)
    return FeedbackRequest(items, incorrect)


def _tag_list(value: Any, where: str, vocabulary, limits: Limits) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise RequestError(where, f"must be a list of tag strings, got {_json_type(value)}")
    if len(value) > limits.max_tags_per_item:
        raise RequestError(
            where, f"has {len(value)} tags, more than the limit of {limits.max_tags_per_item}", 413
        )
    unknown = [t for t in value if t not in vocabulary]
    if unknown:
        shown = ", ".join(repr(t) for t in unknown[:5])
        raise RequestError(where, f"unknown tag(s) {shown}: not in the vocabulary (see GET /v1/tags?q=)")
    return list(dict.fromkeys(value))


def _no_duplicate_ids(items: Sequence[Item], single: bool) -> None:
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        if item.id in seen:
            raise RequestError(f"items[{index}].id", f"'{item.id}' is also the id of items[{seen[item.id]}]")
        seen[item.id] = index


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object" if isinstance(value, dict) else type(value).__name__


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
