"""What makes a valid item (llm4tag/item_rules.py), checked once: an items file, a bulk input, an HTTP
request and an Annif body refuse the same item for the same reason, in the same words (pure logic)."""

from __future__ import annotations

import json

import pytest

from cluster.bulk_files import check_input
from llm4tag.data import read_items
from llm4tag.errors import DataError
from llm4tag.item_rules import ItemProblem, check_id, check_item, check_tags, check_text, json_type
from llm4tag.service.annif import Problem, parse_batch
from llm4tag.service.http_schema import Limits, RequestError, parse_feedback_request, parse_tag_request

LIMITS = Limits()


def test_the_rules():
    assert check_id(7, numbers=True) == "7" and check_id("item 7") == "item 7"
    assert check_text(" a ") == " a "
    assert check_tags(None) is None and check_tags(float("nan")) is None
    assert check_tags(["a", "b", "a"]) == ("a", "b")
    item = check_item({"id": "x", "text": "t", "tags": ["a"], "title": "T", "score": None})
    assert (item.id, item.text, item.tags, dict(item.extra)) == ("x", "t", ("a",), {"title": "T"})
    for value, words in [
        (None, "missing (required)"),
        (float("nan"), "missing (required)"),
        (7, "must be a string, got a number"),
        (True, "must be a string, got a boolean"),
        (["x"], "must be a string, got an array"),
        (" ", "must not be empty"),
        ("a\nb", "must be 1-256 printable characters on one line"),
        ("a\u2028b", "must be 1-256 printable characters on one line"),
        ("x" * 257, "must be 1-256 printable characters on one line"),
        ("syn:card_arrival:0", "must not start with 'syn:' (the ids of synthetic examples)"),
    ]:
        with pytest.raises(ItemProblem, match=f"^id: {words}$".replace("(", r"\(").replace(")", r"\)")):
            check_id(value)
    for value, words in [
        ("a", "must be a list of strings, got a string"),
        ({"a": 1}, "must be a list of strings, got an object"),
        (["a", None], "tag 2 must be a string, got null"),
        (["a", " "], "tag 2 is empty"),
    ]:
        with pytest.raises(ItemProblem) as problem:
            check_tags(value)
        assert (problem.value.field, problem.value.message) == ("tags", words)
    assert [json_type(v) for v in (None, False, 1, 1.5, "s", [], (), {})] == [
        "null",
        "a boolean",
        "a number",
        "a number",
        "a string",
        "an array",
        "an array",
        "an object",
    ]


def _from_file(tmp_path, record: dict) -> tuple[str, str]:
    path = tmp_path / "items.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(DataError) as refused:
        read_items(path)
    return refused.value.field, refused.value.problem


def _from_bulk(tmp_path, record: dict) -> tuple[str, str]:
    path = tmp_path / "bulk.jsonl"
    path.write_text(json.dumps({"id": "ok", "text": "fine"}) + "\n" + json.dumps(record) + "\n")
    (reject,) = check_input(path, "jsonl", None).rejects
    return reject.field, reject.reason


def _from_http(record: dict) -> tuple[str, str]:
    with pytest.raises(RequestError) as refused:
        if "tags" in record:
            parse_feedback_request(record, [], {"a"}, LIMITS)
        else:
            parse_tag_request(record, [], LIMITS)
    return refused.value.field.removeprefix("body."), refused.value.message


@pytest.mark.parametrize(
    ("record", "field", "words"),
    [
        ({"id": "x"}, "text", "missing (required)"),
        ({"id": "x", "text": 5}, "text", "must be a string, got a number"),
        ({"id": "x", "text": " \n"}, "text", "must not be empty"),
        ({"id": 7, "text": "t"}, "id", "must be a string, got a number"),
        ({"id": "  ", "text": "t"}, "id", "must not be empty"),
        ({"id": "a\u2029b", "text": "t"}, "id", "must be 1-256 printable characters on one line"),
        ({"id": "syn:a:0", "text": "t"}, "id", "must not start with 'syn:' (the ids of synthetic examples)"),
        ({"id": "x", "text": "t", "tags": "a"}, "tags", "must be a list of strings, got a string"),
        ({"id": "x", "text": "t", "tags": ["a", 3]}, "tags", "tag 2 must be a string, got a number"),
        ({"id": "x", "text": "t", "tags": ["a", ""]}, "tags", "tag 2 is empty"),
    ],
)
def test_files_bulk_and_http_refuse_an_item_for_one_reason_in_one_wording(tmp_path, record, field, words):
    assert _from_file(tmp_path, record) == (field, words)
    assert _from_bulk(tmp_path, record) == (field, words)
    assert _from_http(record) == (field, words)


def test_annif_bodies_word_their_problems_so_too():
    for document, where, words in [
        ({"text": 5}, "text", "must be a string, got a number"),
        ({}, "text", "missing (required)"),
        ({"text": "t", "document_id": 7}, "document_id", "must be a string, got a number"),
    ]:
        with pytest.raises(Problem) as refused:
            parse_batch({"documents": [document]}, 100)
        assert refused.value.status == 400
        assert refused.value.detail == f"{words} - 'documents.0.{where}'"


def test_the_documented_id_schema_accepts_exactly_what_the_rule_accepts():
    """A client (or Schemathesis) reads the OpenAPI schema: an id it says is valid must be accepted."""
    import re

    from llm4tag.item_rules import ID_SCHEMA

    documented = re.compile(ID_SCHEMA["pattern"])
    for value in [
        "a",
        " a ",
        "item 7",
        "ünïcode-✓",
        "x" * 256,
        "x" * 257,
        "",
        " ",
        "\t",
        "a\nb",
        "a\x85",
        "syn:a:0",
        "a syn:",
    ]:
        within = ID_SCHEMA["minLength"] <= len(value) <= ID_SCHEMA["maxLength"]
        said = within and bool(documented.search(value))
        try:
            check_id(value)
            accepted = True
        except ItemProblem:
            accepted = False
        assert said == accepted, repr(value)
