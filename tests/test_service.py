"""Request validation (llm4tag/http_schema.py) and vocabulary search of the HTTP service (no Ray)."""

from __future__ import annotations

import pytest

from llm4tag.errors import ConfigError
from llm4tag.http_schema import Limits, RequestError, parse_feedback_request, parse_tag_request
from llm4tag.service import ServiceConfig, search_tags

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
        ({"items": [{"id": "a", "text": "a"}, {"id": "a", "text": "b"}]}, "items[1].id", 422),
        ({"items": ["a"]}, "items[0]", 422),
        ({"text": "a", "candidates": "yes"}, "candidates", 422),
    ],
)
def test_bad_tag_requests_name_the_field(body, field, status):
    error = refused(parse_tag_request, body, [], LIMITS)
    assert (error.field, error.status) == (field, status)
    assert error.body() == {"error": error.message, "field": field}


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
    assert [t["tag"] for t in search_tags("card", tags, descriptions)] == [
        "card",
        "card_arrival",
        "lost_or_stolen_card",
        "exchange_rate",
    ]
    assert [t["tag"] for t in search_tags("card rate", tags, descriptions)] == ["exchange_rate"]
    assert search_tags("", tags, descriptions, limit=2) == [
        {"tag": "card_arrival", "description": None},
        {"tag": "card", "description": "a payment card"},
    ]
    assert search_tags("zzz", tags, descriptions) == []
