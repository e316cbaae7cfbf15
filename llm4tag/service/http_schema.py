"""The HTTP service's request and answer shapes, once: pydantic models that validate requests (with
errors that name the field) and document the API (OpenAPI at /docs). The Serve ingress is a thin layer
over this; the rows are those ``llm4tag tag`` writes.

Which item fields a request may carry besides ``id`` and ``text`` is configuration (texts.item_fields),
and so are the size limits: :class:`RequestSchema` builds the models for one configuration, and the
limits and the tag vocabulary reach the validators as validation context. What makes an item valid,
and how every problem is worded, is llm4tag/item_rules.py's, as for files and bulk input.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    StrictBool,
    StrictStr,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from llm4tag.config_section import Section
from llm4tag.data import Tag
from llm4tag.item_rules import (
    ITEM_ERROR,
    TOO_LARGE,
    Item,
    ItemId,
    ItemTags,
    ItemText,
    TagName,
    json_type,
    problem_message,
)
from llm4tag.service.refusal import Refusal


class RequestError(Refusal):
    """A malformed (400), invalid (422) or too large (413) request; ``field`` names the offending part."""

    status = 422


class Limits(Section):
    """Bounds on one request; larger requests get a 4xx rather than tying up the service."""

    section: ClassVar[str] = "service.limits"

    max_items: int = Field(64, ge=1, description="items per POST /v1/tag or /v1/feedback")
    max_text_chars: int = Field(20_000, ge=1, description="per text field of an item")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1, description="request body")
    max_tags_per_item: int = Field(64, ge=1, description="tags per item in feedback")
    max_search_results: int = Field(100, ge=1, description="GET /v1/tags?limit=")
    max_query_chars: int = Field(200, ge=1, description="GET /v1/tags?q= (characters)")


JSON_TYPES = ("application/json",)


def require_json(content_type: str | None) -> None:
    """Writes take JSON only. A browser may send a cross-site ``text/plain`` (or form) POST without a
    preflight; refusing every other media type keeps a web page from posting through a user's browser."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media not in JSON_TYPES and not (media.startswith("application/") and media.endswith("+json")):
        shown = f"'{media}'" if media else "missing"
        raise RequestError(f"is {shown}: send the body as application/json", "content-type", 415)


def decode_json(raw: bytes) -> Any:
    """The body's JSON value; anything else (empty, malformed, nested beyond the parser's depth) is a
    400 naming the body."""
    if not raw.strip():
        raise RequestError("is empty: send a JSON object", "body", 400)
    try:
        return json.loads(raw)
    except RecursionError:
        raise RequestError("JSON nested too deeply", "body", 400) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"malformed JSON: {exc}", "body", 400) from exc


def _limits(info: ValidationInfo) -> Limits:
    return (info.context or {}).get("limits") or Limits()


def _too_large(what: str, count: int, limit: int) -> PydanticCustomError:
    return PydanticCustomError(
        TOO_LARGE,
        "has {count} {what}, more than the limit of {limit}",
        {"count": count, "what": what, "limit": limit},
    )


# --- the models (the item model is built per configuration: its text fields are declared ones)

# What the validators below check, said in the OpenAPI schema too (so that a client, or a fuzzer, knows a
# batch must have an item): documentation only, the validators answer.
NOT_EMPTY = {"minItems": 1}


def _an_object(data: Any) -> Any:
    if not isinstance(data, dict):
        raise PydanticCustomError("model_type", "must be an object, got {type}", {"type": json_type(data)})
    return data


class _ItemBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _an_object(cls, data: Any) -> Any:
        return _an_object(data)

    @field_validator("*", mode="after")
    @classmethod
    def _text_within_limits(cls, value: Any, info: ValidationInfo) -> Any:
        if info.field_name not in ("id", "tags", "incorrect") and isinstance(value, str):
            limit = _limits(info).max_text_chars
            if len(value) > limit:
                raise _too_large("characters", len(value), limit)
        return value


class TagItemBase(_ItemBase):
    id: ItemId | None = Field(None, description="Your id for the item (default: item-<index>).")
    text: ItemText = Field(
        ..., description="The item's text (non-empty).", examples=["my card has not arrived yet"]
    )


def _tag_list(value: list[str], info: ValidationInfo) -> list[str]:
    """A feedback item's correct or wrong tags: within the limit, all in the vocabulary."""
    limit = _limits(info).max_tags_per_item
    if len(value) > limit:
        raise _too_large("tags", len(value), limit)
    vocabulary = (info.context or {}).get("vocabulary")
    unknown = [t for t in value if vocabulary is not None and t not in vocabulary]
    if unknown:
        shown = ", ".join(repr(t) for t in unknown[:5])
        raise PydanticCustomError(
            "unknown_tag",
            "unknown tag(s) {shown}: not in the vocabulary (see GET /v1/tags?q=)",
            {"shown": shown},
        )
    return list(dict.fromkeys(value))


class FeedbackItemBase(_ItemBase):
    id: ItemId = Field(..., description="The corrected item's id (feedback must name the item it corrects).")
    text: ItemText = Field(..., description="The item's text.")
    tags: ItemTags = Field(default_factory=list, description="Correct tags (from the vocabulary).")
    incorrect: ItemTags = Field(default_factory=list, description="Tags that were wrong for this item.")

    @field_validator("tags", "incorrect", mode="after")
    @classmethod
    def _known_tags(cls, value: list[str], info: ValidationInfo) -> list[str]:
        return _tag_list(value, info)


class _RequestBase(BaseModel):
    model_config = ConfigDict(extra="forbid")
    OPTIONS: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="before")
    @classmethod
    def _batch_or_one(cls, data: Any) -> Any:
        if "items" in _an_object(data):
            return data
        # One item at the top level, possibly with the options beside it.
        return {"items": [{k: v for k, v in data.items() if k not in cls.OPTIONS}]} | {
            k: data[k] for k in cls.OPTIONS if k in data
        }

    @field_validator("items", mode="before", check_fields=False)
    @classmethod
    def _items_within_limits(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, list):
            if not value:
                raise PydanticCustomError("empty", "must not be empty")
            limit = _limits(info).max_items
            if len(value) > limit:
                raise _too_large("items", len(value), limit)
        return value


class _TagRequestBase(_RequestBase):
    OPTIONS: ClassVar[tuple[str, ...]] = ("candidates", "dropped")


class ErrorOut(BaseModel):
    error: str = Field(..., description="What is wrong.")
    field: str = Field(..., description="Where: body, items[0].text, limit, service ...")


class TagOut(BaseModel):
    tag: str
    confidence: float | None = Field(None, description="Calibrated P(Yes); null when calibration is off.")
    source: str = Field(..., description="Recall path(s) that found the tag: c2t, c2c2t, learned, fill, llm.")
    recall_score: float | None = None
    via: list[str] | None = Field(None, description="Neighbour items behind a C2C2T candidate.")
    by: str | None = Field(None, description="With a ranker (pipeline.route): who kept it, ranker or llm.")
    ranker: float | None = Field(None, description="The ranker's calibrated probability of the tag.")
    yes: float | None = Field(None, description="The LLM's raw Yes-probability (judged tags).")


class RowOut(BaseModel):
    id: str
    tags: list[TagOut]
    route: str | None = Field(
        None, description="With a ranker (pipeline.route): ranker (settled without the LLM) or llm."
    )
    generated: list[str] = Field(..., description="The LLM's choice in its own order, before calibration.")
    no_tag: str | None = Field(
        None, description="Only when tags is empty: why no tag of the vocabulary was kept for the item."
    )
    knowledge: dict = Field(..., description="Ids of the retrieved samples and knowledge snippets.")
    dropped: list[TagOut] | None = None
    candidates: list[dict] | None = None


class TagResponseOut(BaseModel):
    items: list[RowOut]
    timings_ms: dict[str, float]


class FeedbackResponseOut(BaseModel):
    recorded: int
    ids: list[str]
    samples: int


class AdapterRequest(BaseModel):
    """POST /v1/admin/adapter: which role's LoRA adapter to swap in, and from which folder."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["generator", "calibrator"] = Field(..., description="The role whose adapter changes.")
    path: Annotated[StrictStr, Field(min_length=1)] | None = Field(
        None, description="An adapter folder under service.adapters_root; null: the base model."
    )


def parse_adapter_request(body: Any) -> AdapterRequest:
    return _validate(AdapterRequest, body, {}, single=False)


class NewTag(BaseModel):
    """One tag of POST /v1/admin/tags: a line of the tags file `llm4tag build` reads."""

    model_config = ConfigDict(extra="forbid")

    tag: TagName = Field(..., description="The tag's name: new to the vocabulary.")
    description: StrictStr | None = Field(None, description="What the tag means (recall encodes it).")


class NewTags(RootModel[list[NewTag]]):
    """POST /v1/admin/tags: the tags to add, at least one, at most service.limits.max_items."""

    root: list[NewTag] = Field(..., json_schema_extra=NOT_EMPTY)

    @field_validator("root")
    @classmethod
    def _sized_and_distinct(cls, tags: list[NewTag], info: ValidationInfo) -> list[NewTag]:
        limit = _limits(info).max_items
        if not tags:
            raise PydanticCustomError(ITEM_ERROR, "has no tags: send at least one", {})
        if len(tags) > limit:
            raise _too_large("tags", len(tags), limit)
        return tags


def parse_new_tags(body: Any, limits: Limits) -> list[Tag]:
    """The tags of a POST /v1/admin/tags body; a tag given twice is refused naming the second."""
    tags = _validate(NewTags, body, {"limits": limits}, single=False).root
    seen: dict[str, int] = {}
    for index, tag in enumerate(tags):
        if tag.tag in seen:
            raise RequestError(f"'{tag.tag}' is also the tag of [{seen[tag.tag]}]", f"[{index}].tag")
        seen[tag.tag] = index
    return [Tag(tag=t.tag, description=t.description) for t in tags]


# --- what a parsed request is


@dataclass
class TagRequest:
    items: list[Item]
    candidates: bool = False
    dropped: bool = False
    single: bool = False  # the body was one item, so the answer is one row
    # Ids the service gave items sent without one (item-<index>): they name no item of the caller's,
    # so they are never written back (two requests' item-0 would otherwise share one graph vertex).
    unnamed: frozenset[str] = frozenset()


@dataclass
class FeedbackRequest:
    items: list[Item]
    incorrect: list[list[str]]


class RequestSchema:
    """The request models of one configuration (its item text fields)."""

    def __init__(self, text_fields: Sequence[str] = ()):
        extra = {
            name: (StrictStr | None, None)
            for name in dict.fromkeys(text_fields)
            if name not in ("id", "text")
        }
        self.text_fields = list(extra)
        self.tag_item = create_model("TagItemIn", __base__=TagItemBase, **extra)
        self.feedback_item = create_model("FeedbackItemIn", __base__=FeedbackItemBase, **extra)
        self.tag_request = create_model(
            "TagRequestIn",
            __base__=_TagRequestBase,
            items=(
                list[self.tag_item],
                Field(
                    ...,
                    description="Items to tag (a single item may be sent bare).",
                    json_schema_extra=NOT_EMPTY,
                ),
            ),
            candidates=(StrictBool, Field(False, description="Also return the recalled candidates.")),
            dropped=(
                StrictBool,
                Field(False, description="Also return generated tags that calibration dropped."),
            ),
        )
        self.feedback_request = create_model(
            "FeedbackRequestIn",
            __base__=_RequestBase,
            items=(
                list[self.feedback_item],
                Field(..., description="Corrected annotations (or one, bare).", json_schema_extra=NOT_EMPTY),
            ),
        )

    def parse_tag(self, body: Any, limits: Limits) -> TagRequest:
        """``{"id", "text", ...}`` or ``{"items": [...], "candidates": bool, "dropped": bool}``."""
        single = isinstance(body, dict) and "items" not in body
        parsed = _validate(self.tag_request, body, {"limits": limits}, single)
        items = [
            Item(
                id=raw.id if raw.id is not None else f"item-{index}",
                text=raw.text,
                tags=None,
                extra={f: getattr(raw, f) for f in self.text_fields if getattr(raw, f) is not None},
            )
            for index, raw in enumerate(parsed.items)
        ]
        _no_duplicate_ids(items)
        unnamed = frozenset(item.id for item, raw in zip(items, parsed.items, strict=True) if raw.id is None)
        return TagRequest(items, parsed.candidates, parsed.dropped, single, unnamed)

    def parse_feedback(self, body: Any, vocabulary: Collection[str], limits: Limits) -> FeedbackRequest:
        """Corrected annotations: ``{"id", "text", "tags": [correct...], "incorrect": [wrong...]}`` or a
        list under ``items``. Every tag must be in the vocabulary; ids are required (they key the graph)."""
        single = isinstance(body, dict) and "items" not in body
        parsed = _validate(self.feedback_request, body, {"limits": limits, "vocabulary": vocabulary}, single)
        items, incorrect = [], []
        for index, raw in enumerate(parsed.items):
            where = "body" if single else f"items[{index}]"
            if not raw.tags and not raw.incorrect:
                raise RequestError(
                    "feedback needs correct tags ('tags') or wrong ones ('incorrect')", f"{where}.tags"
                )
            both = sorted(set(raw.tags) & set(raw.incorrect))
            if both:
                raise RequestError(
                    f"names tag(s) also given as correct: {', '.join(both)}", f"{where}.incorrect"
                )
            extra = {f: getattr(raw, f) for f in self.text_fields if getattr(raw, f) is not None}
            items.append(Item(id=raw.id, text=raw.text, tags=tuple(raw.tags), extra=extra))
            incorrect.append(list(raw.incorrect))
        _no_duplicate_ids(items)
        return FeedbackRequest(items, incorrect)

    @staticmethod
    def body(model: type[BaseModel], media_type: str = "application/json") -> dict:
        """The OpenAPI request body of a route that reads its body itself (to bound its size). Pydantic
        puts nested models under the schema's own ``$defs`` and refers to them as ``#/$defs/...``; inside
        an OpenAPI document such a pointer resolves against the document's root, where they are not (a
        client generator or a fuzzer cannot follow it), so they are inlined: these models nest, they
        never recurse."""
        schema = model.model_json_schema()
        defs = schema.pop("$defs", {})

        def inline(node):
            if isinstance(node, dict):
                ref = node.get("$ref")
                if isinstance(ref, str) and ref.startswith("#/$defs/"):
                    return inline(defs[ref.removeprefix("#/$defs/")])
                return {key: inline(value) for key, value in node.items()}
            if isinstance(node, list):
                return [inline(value) for value in node]
            return node

        return {"requestBody": {"required": True, "content": {media_type: {"schema": inline(schema)}}}}

    @staticmethod
    def query(model: type[BaseModel], names: Sequence[str]) -> dict:
        """The OpenAPI query parameters ``names`` of a route that reads them itself, as ``model``'s fields
        of those names document them."""
        fields = model.model_json_schema()["properties"]
        return {
            "parameters": [
                {
                    "name": name,
                    "in": "query",
                    "required": False,
                    "description": fields[name].get("description", ""),
                    "schema": {k: v for k, v in fields[name].items() if k not in ("description", "title")},
                }
                for name in names
            ]
        }


@functools.lru_cache(maxsize=16)
def schema_for(text_fields: tuple[str, ...]) -> RequestSchema:
    return RequestSchema(text_fields)


def parse_tag_request(body: Any, text_fields: Sequence[str], limits: Limits) -> TagRequest:
    return schema_for(tuple(text_fields)).parse_tag(body, limits)


def parse_feedback_request(
    body: Any, text_fields: Sequence[str], vocabulary: Collection[str], limits: Limits
) -> FeedbackRequest:
    return schema_for(tuple(text_fields)).parse_feedback(body, vocabulary, limits)


def _validate(model: type[BaseModel], body: Any, context: dict, single: bool) -> Any:
    try:
        return model.model_validate(body, context=context)
    except ValidationError as exc:
        raise request_error(exc, single) from None


def request_error(exc: ValidationError, single: bool = False) -> RequestError:
    """The first problem of a validation error, as a RequestError naming its field (in the wording of
    llm4tag/item_rules.py)."""
    error = exc.errors(include_url=False)[0]
    loc = list(error["loc"])
    if single and loc[:2] == ["items", 0]:
        loc = ["body", *loc[2:]]
    field = loc_to_field(loc) if loc else "body"
    status = 413 if error["type"] == TOO_LARGE else 422
    return RequestError(problem_message(error), field, status)


def loc_to_field(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _no_duplicate_ids(items: Sequence[Item]) -> None:
    seen: dict[str, int] = {}
    for index, item in enumerate(items):
        if item.id in seen:
            raise RequestError(f"'{item.id}' is also the id of items[{seen[item.id]}]", f"items[{index}].id")
        seen[item.id] = index


# An absolute POSIX path inside a string (not the path part of a URL: no ':' or '/' before it).
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/(?:[^\s/'\"]+/)+([^\s/'\"]*)")


def without_paths(value: Any) -> Any:
    """``value`` with every absolute path in its strings cut to its last part: what an unauthenticated
    route (/readyz) shows of a stage, without telling a caller the server's layout."""
    if isinstance(value, str):
        return _ABSOLUTE_PATH.sub(lambda match: match.group(1), value)
    if isinstance(value, dict):
        return {key: without_paths(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [without_paths(item) for item in value]
    return value
