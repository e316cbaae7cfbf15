"""What makes a valid item (its id, text, tags and other fields), said once, and one wording for every
problem with one: items files (llm4tag/data.py), bulk input (cluster/bulk_files.py), the HTTP request
bodies (llm4tag/service/http_schema.py) and Annif's (llm4tag/service/annif.py) all check through here.

The rules, as plain functions that raise :class:`ItemProblem` (field, message):

* ``id``: a string (or, where a file format has typed columns, an integer, read as its decimal string)
  of 1-256 printable characters on one line, not blank: ids key graph vertices and lines of the
  journals and sample logs, which a control character or a line separator would cut; not starting
  with ``syn:``, the ids of the LLM's synthetic examples (llm4tag/synthetic.py), which a refit tells
  from real items by that prefix alone;
* ``text``: a string with a non-space character;
* ``tags``: missing (not annotated) or a list of non-empty strings, repeats dropped (first kept);
* any other field that is not missing: kept beside them (:attr:`Item.extra`).

The same rules as pydantic field types (:data:`ItemId`, :data:`ItemText`, :data:`ItemTags`) for the
request models, and :func:`problem_message` words a pydantic error as the functions word theirs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, StrictStr
from pydantic_core import ErrorDetails, PydanticCustomError

# One line of printable text: no C0/C1 controls and no Unicode line or paragraph separators (a reader
# that splits lines with str.splitlines() would cut a journal or sample-log line at \x85 or \u2028).
# Anchored for pydantic's (Rust) engine, where $ is the end of the text; Python code uses fullmatch.
ID_CHARS = r"[^\x00-\x1f\x7f-\x9f\u2028\u2029]{1,256}"
ID_PATTERN = re.compile(f"^{ID_CHARS}$")
SYNTHETIC_ID_PREFIX = "syn:"
ITEM_FIELDS = ("id", "text", "tags")
TOO_LARGE = "too_large"  # the error type of a size limit: answered with 413, not 400 or 422
ITEM_ERROR = "item"  # the error type of a rule below, inside a pydantic model


@dataclass(frozen=True)
class Item:
    """One item to tag: its id, its text, its annotation (``None``: not annotated) and every other field."""

    id: str
    text: str
    tags: tuple[str, ...] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)


class ItemProblem(ValueError):
    """What is wrong with one field of an item."""

    def __init__(self, name: str, message: str):
        super().__init__(f"{name}: {message}")
        self.field, self.message = name, message


def json_type(value: Any) -> str:
    """What a value is, in JSON's words: the one wording of "must be X, got Y"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    return "an object" if isinstance(value, dict) else type(value).__name__


def is_missing(value: Any) -> bool:
    """None, or NaN (a missing cell of a typed column)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def check_id(value: Any, *, numbers: bool = False) -> str:
    """``numbers``: an integer is read as its decimal string (CSV and Parquet columns are typed)."""
    if numbers and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    value = check_string("id", value)
    if not ID_PATTERN.fullmatch(value):
        raise ItemProblem("id", "must be 1-256 printable characters on one line")
    if value.startswith(SYNTHETIC_ID_PREFIX):
        raise ItemProblem(
            "id", f"must not start with '{SYNTHETIC_ID_PREFIX}' (the ids of synthetic examples)"
        )
    return value


def check_text(value: Any) -> str:
    return check_string("text", value)


def check_tags(value: Any) -> tuple[str, ...] | None:
    """None when missing (the item is not annotated)."""
    return None if is_missing(value) else check_tag_list(value)


def check_tag_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise ItemProblem("tags", f"must be a list of strings, got {json_type(value)}")
    out: dict[str, None] = {}
    for position, tag in enumerate(value, 1):
        if not isinstance(tag, str):
            raise ItemProblem("tags", f"tag {position} must be a string, got {json_type(tag)}")
        if not tag.strip():
            raise ItemProblem("tags", f"tag {position} is empty")
        out.setdefault(tag, None)
    return tuple(out)


def check_item(record: Mapping[str, Any], *, numbers: bool = False, tags: Any = None) -> Item:
    """The item a record (a JSON object, a row) holds. ``tags``: the record's tags as the file format
    decoded them, if it had to (a CSV cell), else read from the record."""
    return Item(
        id=check_id(record.get("id"), numbers=numbers),
        text=check_text(record.get("text")),
        tags=check_tags(record.get("tags") if tags is None else tags),
        extra={k: v for k, v in record.items() if k not in ITEM_FIELDS and not is_missing(v)},
    )


def check_string(name: str, value: Any) -> str:
    """A required string with a non-space character (an item's text, a vocabulary's tag name)."""
    if is_missing(value):
        raise ItemProblem(name, "missing (required)")
    if not isinstance(value, str):
        raise ItemProblem(name, f"must be a string, got {json_type(value)}")
    if not value.strip():
        raise ItemProblem(name, "must not be empty")
    return value


# --- the same rules inside pydantic models (the HTTP and Annif request bodies)


def _in_models(check):
    def validate(value: Any) -> Any:
        try:
            return check(value)
        except ItemProblem as problem:
            raise PydanticCustomError(ITEM_ERROR, "{message}", {"message": problem.message}) from None

    return BeforeValidator(validate)


# What the checks say, in the OpenAPI schema too, so that a client (or a fuzzer) knows it; the checks
# answer (the schema's patterns are for the client's engine, none of them runs here).
NOT_BLANK = {"minLength": 1, "pattern": r"\S"}
_PRINTABLE = r"[^\x00-\x1f\x7f-\x9f\u2028\u2029]"
_PRINTABLE_NOT_SPACE = r"[^\s\x00-\x1f\x7f-\x9f\u2028\u2029]"
ID_SCHEMA = {
    "minLength": 1,
    "maxLength": 256,
    "pattern": f"^(?!{SYNTHETIC_ID_PREFIX}){_PRINTABLE}*{_PRINTABLE_NOT_SPACE}{_PRINTABLE}*$",
}
ItemId = Annotated[StrictStr, Field(json_schema_extra=ID_SCHEMA), _in_models(check_id)]
ItemText = Annotated[StrictStr, Field(json_schema_extra=NOT_BLANK), _in_models(check_text)]
TagName = Annotated[
    StrictStr, Field(json_schema_extra=NOT_BLANK), _in_models(lambda v: check_string("tag", v))
]
ItemTags = Annotated[
    list[StrictStr],
    Field(json_schema_extra={"items": {"type": "string", **NOT_BLANK}}),
    _in_models(lambda value: list(check_tag_list(value))),
]

# JSON's name for what pydantic's type errors expected.
_EXPECTED = {
    "string_type": "a string",
    "list_type": "an array",
    "tuple_type": "an array",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "bool_type": "a boolean",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
}


def problem_message(error: ErrorDetails) -> str:
    """A pydantic error in the wording of the rules above (their own errors pass as they are)."""
    kind = error["type"]
    if kind == "missing":
        return "missing (required)"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind in _EXPECTED:
        return f"must be {_EXPECTED[kind]}, got {json_type(error.get('input'))}"
    if kind == "greater_than_equal":
        return f"must be at least {error['ctx']['ge']:g}"
    if kind == "less_than_equal":
        return f"must be at most {error['ctx']['le']:g}"
    if kind == "finite_number":
        return "must be a finite number"
    return error["msg"]
