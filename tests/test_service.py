"""Request validation (llm4tag/service/http_schema.py) and vocabulary search of the HTTP service (no Ray)."""

from __future__ import annotations

import pytest

from llm4tag.errors import ConfigError
from llm4tag.service.http_schema import (
    Limits,
    RequestError,
    RequestSchema,
    decode_json,
    parse_adapter_request,
    parse_feedback_request,
    parse_new_tags,
    parse_tag_request,
    require_json,
    without_paths,
)
from llm4tag.service.settings import ServiceConfig
from llm4tag.service.tag_search import TagSearch

LIMITS = Limits(max_items=3, max_text_chars=50, max_tags_per_item=2)
VOCAB = {"card_arrival", "exchange_rate", "top_up_failed"}


def refused(function, *args) -> RequestError:
    with pytest.raises(RequestError) as caught:
        function(*args)
    return caught.value


def test_one_bare_item_or_a_batch():
    one = parse_tag_request({"id": "q1", "text": "card?", "candidates": True}, [], LIMITS)
    assert one.single and one.candidates and not one.dropped
    assert [(i.id, i.text) for i in one.items] == [("q1", "card?")]
    batch = parse_tag_request(
        {"items": [{"text": "a"}, {"id": "x", "text": "b"}], "dropped": True}, [], LIMITS
    )
    assert [i.id for i in batch.items] == ["item-0", "x"] and batch.dropped and not batch.single
    assert batch.unnamed == {"item-0"} and one.unnamed == frozenset()


def test_extra_text_fields_only_when_configured():
    parsed = parse_tag_request({"id": "p", "text": "t", "title": "Title"}, ["title"], LIMITS)
    assert parsed.items[0].extra == {"title": "Title"}
    error = refused(parse_tag_request, {"id": "p", "text": "t", "title": "Title"}, [], LIMITS)
    assert error.field == "body.title" and "unknown field" in error.message


@pytest.mark.parametrize(
    ("body", "field", "status"),
    [
        ([{"text": "a"}], "body", 422),
        ("text", "body", 422),
        ({"items": "a"}, "items", 422),
        ({"items": []}, "items", 422),
        ({"items": [{"text": "a"}] * 4}, "items", 413),
        ({"items": [{"text": "a"}], "colour": 1}, "colour", 422),
        ({"items": [{"id": "a"}]}, "items[0].text", 422),
        ({"items": [{"text": "  \n"}]}, "items[0].text", 422),
        ({"items": [{"text": 5}]}, "items[0].text", 422),
        ({"items": [{"text": "x" * 51}]}, "items[0].text", 413),
        ({"items": [{"id": 7, "text": "a"}]}, "items[0].id", 422),
        ({"items": [{"id": "", "text": "a"}]}, "items[0].id", 422),
        ({"items": [{"id": "a\n", "text": "a"}]}, "items[0].id", 422),
        ({"items": [{"id": "a\x85", "text": "a"}]}, "items[0].id", 422),
        ({"items": [{"id": "a\u2028b", "text": "a"}]}, "items[0].id", 422),
        ({"items": [{"id": "a\x7f", "text": "a"}]}, "items[0].id", 422),
        ({"items": [{"id": "x" * 257, "text": "a"}]}, "items[0].id", 422),
        ({"items": [{"id": "a", "text": "a"}, {"id": "a", "text": "b"}]}, "items[1].id", 422),
        ({"items": ["a"]}, "items[0]", 422),
        ({"text": "a", "candidates": "yes"}, "candidates", 422),
    ],
)
def test_bad_tag_requests_name_the_field(body, field, status):
    error = refused(parse_tag_request, body, [], LIMITS)
    assert (error.field, error.status) == (field, status)
    assert error.body() == {"error": error.message, "field": field}


def test_ids_are_one_line_of_printable_text():
    for good in ("a", "item 7", "ünïcode-✓", "x" * 256):
        assert parse_tag_request({"id": good, "text": "t"}, [], LIMITS).items[0].id == good
    for bad in ("a\n", "\na", "a\r\n", "a\x85", "a\u2029"):
        assert (
            refused(
                parse_feedback_request, {"id": bad, "text": "t", "tags": ["card_arrival"]}, [], VOCAB, LIMITS
            ).field
            == "body.id"
        )


def test_documented_request_bodies_hold_no_pointer_outside_the_openapi_document():
    """Pydantic refers to nested models as #/$defs/...: inside an OpenAPI document that resolves against
    its root, where they are not (schemathesis skipped the items of /v1/tag and /v1/feedback)."""
    schema = RequestSchema(["title"])
    for model in (schema.tag_request, schema.feedback_request):
        body = RequestSchema.body(model)["requestBody"]["content"]["application/json"]["schema"]
        assert "$defs" not in str(body) and "$ref" not in str(body)
        items = body["properties"]["items"]
        assert items["minItems"] == 1 and items["items"]["properties"]["text"]["pattern"] == r"\S"
        assert set(items["items"]["properties"]) >= {"id", "text", "title"}


def test_adapter_requests_are_validated_naming_the_field():
    assert parse_adapter_request({"role": "calibrator"}).path is None
    for body, field in [
        ({"role": "judge"}, "role"),
        ({"role": "generator", "path": ""}, "path"),
        ({"role": "generator", "path": 3}, "path"),
        ({"role": "generator", "path": None, "colour": 1}, "colour"),
        ([], "body"),
    ]:
        assert (refused(parse_adapter_request, body).status, refused(parse_adapter_request, body).field) == (
            422,
            field,
        )


def test_new_tags_are_validated_naming_the_tag_at_fault():
    tags = parse_new_tags([{"tag": "a", "description": "about a"}, {"tag": "b"}], LIMITS)
    assert [(t.tag, t.description) for t in tags] == [("a", "about a"), ("b", None)]
    for body, field in [
        ([], "body"),
        ({"tag": "a"}, "body"),
        ([{"tag": " "}], "[0].tag"),
        ([{"description": "no name"}], "[0].tag"),
        ([{"tag": "a"}, {"tag": "a"}], "[1].tag"),
        ([{"tag": "a", "colour": 1}], "[0].colour"),
    ]:
        assert (
            refused(parse_new_tags, body, LIMITS).status,
            refused(parse_new_tags, body, LIMITS).field,
        ) == (
            422,
            field,
        )
    assert (
        refused(parse_new_tags, [{"tag": str(i)} for i in range(LIMITS.max_items + 1)], LIMITS).status == 413
    )


def test_writes_take_json_only():
    for good in (
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/problem+json",
    ):
        require_json(good)
    for bad in (
        None,
        "",
        "text/plain",
        "text/plain; charset=utf-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ):
        error = refused(require_json, bad)
        assert (error.status, error.field) == (415, "content-type"), bad


def test_bodies_that_are_not_json_are_400_naming_the_body():
    assert decode_json(b'{"a": [1]}') == {"a": [1]}
    for raw in (b"", b"  ", b'{"a": ', b"\xff\xfe", b"[" * 100_000, b'{"a":' * 50_000):
        error = refused(decode_json, raw)
        assert (error.status, error.field) == (400, "body"), raw[:10]
    assert "nested too deeply" in refused(decode_json, b"[" * 100_000).message


def test_feedback_needs_an_id_and_known_tags():
    parsed = parse_feedback_request(
        {
            "items": [
                {
                    "id": "f1",
                    "text": "where is my card",
                    "tags": ["card_arrival"],
                    "incorrect": ["exchange_rate"],
                }
            ]
        },
        [],
        VOCAB,
        LIMITS,
    )
    assert parsed.items[0].tags == ("card_arrival",) and parsed.incorrect == [["exchange_rate"]]
    cases = [
        ({"text": "t", "tags": ["card_arrival"]}, "body.id"),
        ({"id": "f", "text": "t", "tags": ["nope"]}, "body.tags"),
        ({"id": "f", "text": "t", "tags": "card_arrival"}, "body.tags"),
        ({"id": "f", "text": "t"}, "body.tags"),
        ({"id": "f", "text": "t", "tags": ["card_arrival"], "incorrect": ["card_arrival"]}, "body.incorrect"),
        ({"id": "f", "text": "t", "tags": ["card_arrival", "exchange_rate", "top_up_failed"]}, "body.tags"),
        ({"id": "f", "text": "t", "tags": ["card_arrival"], "score": 1}, "body.score"),
    ]
    for body, field in cases:
        assert refused(parse_feedback_request, body, [], VOCAB, LIMITS).field == field, body
    assert "nope" in refused(parse_feedback_request, cases[1][0], [], VOCAB, LIMITS).message


def test_service_config_rejects_unknown_settings():
    config = ServiceConfig.load({"limits": {"max_items": 5}, "generator": {"max_batch_size": 4}})
    assert config.limits.max_items == 5 and config.generator.max_batch_size == 4
    for bad in ({"limit": {}}, {"limits": {"max_item": 1}}, {"limits": {"max_items": 0}}, {"encoder": 3}):
        with pytest.raises(ConfigError):
            ServiceConfig.load(bad)


def test_search_ranks_whole_names_then_name_words_then_descriptions():
    tags = ["card_arrival", "card", "lost_or_stolen_card", "exchange_rate"]
    descriptions = [None, "a payment card", None, "the rate a card payment is converted at"]
    assert [t["tag"] for t in TagSearch(tags, descriptions).search("card")] == [
        "card",
        "card_arrival",
        "lost_or_stolen_card",
        "exchange_rate",
    ]
    assert [t["tag"] for t in TagSearch(tags, descriptions).search("card rate")] == ["exchange_rate"]
    assert TagSearch(tags, descriptions).search("", limit=2) == [
        {"tag": "card_arrival", "description": None},
        {"tag": "card", "description": "a payment card"},
    ]
    assert TagSearch(tags, descriptions).search("zzz") == []


def test_search_queries_are_capped_and_repeated_words_count_once():
    tags = [f"tag_{n}" for n in range(1000)] + ["card_arrival"]
    search = TagSearch(tags, [None] * len(tags), max_query_chars=50)
    assert [t["tag"] for t in search.search("card card card arrival")] == ["card_arrival"]
    error = refused(search.search, "card " * 11)
    assert (error.status, error.field) == (422, "q") and "50" in error.message


def test_readiness_answers_show_no_server_paths():
    described = {
        "journal": "/srv/llm4tag/stores/prod/journal.jsonl",
        "adapter": "/home/ops/adapters/generator-v3",
        "error": "cannot read '/var/lib/llm4tag/x/adapters.json': denied",
        "model": "llamacpp:smollm2-135m-instruct",
        "links": ["http://host:8000/v1/tags", "a/relative/path", None, 3],
    }
    assert without_paths(described) == {
        "journal": "journal.jsonl",
        "adapter": "generator-v3",
        "error": "cannot read 'adapters.json': denied",
        "model": "llamacpp:smollm2-135m-instruct",
        "links": ["http://host:8000/v1/tags", "a/relative/path", None, 3],
    }
