"""Annif's API mapped onto llm4tag (pure logic): subjects, suggestions, request parsing, problems."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from llm4tag.service.annif import (
    AnnifSettings,
    Problem,
    Subjects,
    item_id,
    output_rule,
    parse_batch,
    parse_form,
    parse_learn,
    parse_params,
    parse_suggest,
    project,
    suggestions,
)

META = {"Cards": {"uri": "http://e/cards", "label": "Cards", "notation": "C1"}}
SUBJECTS = Subjects.of(["Cards", "card_arrival", "top up"], META, "en")


def test_subjects_keep_vocabulary_uris_and_derive_the_others():
    assert SUBJECTS.uris == ("http://e/cards", "urn:llm4tag:tag:card_arrival", "urn:llm4tag:tag:top%20up")
    assert SUBJECTS.subject("Cards", 0.5) == {
        "uri": "http://e/cards",
        "label": "Cards",
        "notation": "C1",
        "score": 0.5,
    }
    assert SUBJECTS.subject("top up", 0.1)["notation"] is None
    assert SUBJECTS.tag_of("urn:llm4tag:tag:top%20up") == "top up" and SUBJECTS.tag_of("http://nope") is None
    with pytest.raises(ValueError, match="same URI"):
        Subjects.of(["a", "b"], {"a": {"uri": "u"}, "b": {"uri": "u"}}, "en")


def test_suggestions_rank_all_judged_tags_then_limit_then_threshold():
    row = {
        "id": "x",
        "tags": [{"tag": "Cards", "confidence": 0.9}],
        "dropped": [{"tag": "top up", "confidence": 0.3}, {"tag": "card_arrival", "confidence": 0.0}],
    }
    assert [s["label"] for s in suggestions(row, SUBJECTS, 10, 0.0)] == ["Cards", "top up"]  # zero left out
    assert [s["score"] for s in suggestions(row, SUBJECTS, 1, 0.0)] == [0.9]
    assert [s["label"] for s in suggestions(row, SUBJECTS, 10, 0.5)] == ["Cards"]
    assert suggestions(row, SUBJECTS, 0, 0.0) == []
    # Without a threshold: the tags the store keeps (its fitted number and cut), with their scores.
    assert [(s["label"], s["score"]) for s in suggestions(row, SUBJECTS, 10, None)] == [("Cards", 0.9)]
    no_calibration = {"id": "x", "tags": [{"tag": "Cards", "confidence": None, "recall_score": 1.7}]}
    assert suggestions(no_calibration, SUBJECTS, 10, 0.0)[0]["score"] == 1.0


def test_suggest_form_and_parameters_follow_annifs_schema():
    form = parse_form(b"text=my+card%21&limit=3&threshold=0.25&metadata_title=x")
    text, params = parse_suggest(form, SUBJECTS, 100)
    assert text == "my card!" and (params.limit, params.threshold) == (3, 0.25)
    assert parse_params({}, SUBJECTS).limit == 10  # Annif's default
    # A parameter left empty takes its default; an empty text is a text (it has no suggestions).
    text, params = parse_suggest({"text": "", "limit": "", "threshold": "", "language": ""}, SUBJECTS, 100)
    assert text == "" and (params.limit, params.threshold, params.language) == (10, None, None)
    assert parse_params({}, SUBJECTS).threshold is None  # the store's own output
    assert parse_params({"threshold": "0"}, SUBJECTS).threshold == 0.0
    for values, detail in [
        ({"limit": "-1"}, "must be at least 0 - 'limit'"),
        ({"limit": "many"}, "must be an integer, got a string - 'limit'"),
        ({"threshold": "1.5"}, "must be at most 1 - 'threshold'"),
        ({"threshold": "nan"}, "must be a finite number - 'threshold'"),
        ({"language": "fi"}, 'language "fi" not supported'),
    ]:
        with pytest.raises(Problem, match=re.escape(detail)) as problem:
            parse_params(values, SUBJECTS)
        assert problem.value.status == 400
    with pytest.raises(Problem, match=re.escape("missing (required) - 'text'")):
        parse_suggest({}, SUBJECTS, 100)
    with pytest.raises(Problem) as too_long:
        parse_suggest({"text": "x" * 101}, SUBJECTS, 100)
    assert too_long.value.status == 413
    assert too_long.value.body() == {
        "type": "about:blank",
        "title": "Payload Too Large",
        "status": 413,
        "detail": too_long.value.detail,
    }


def test_batches_hold_at_most_32_documents():
    assert parse_batch({"documents": [{"text": "a", "document_id": "d1"}, {"text": "b"}]}, 100) == [
        ("a", "d1"),
        ("b", None),
    ]
    with pytest.raises(Problem, match="too many items"):
        parse_batch({"documents": [{"text": "a"}] * 33}, 100)
    for body, detail in [
        ({}, "missing (required) - 'documents'"),
        ({"documents": "a"}, "must be an array, got a string - 'documents'"),
        ({"documents": [{"id": "x"}]}, "missing (required) - 'documents.0.text'"),
        ({"documents": [{"text": "a", "document_id": 5}]}, "documents.0.document_id"),
    ]:
        with pytest.raises(Problem, match=re.escape(detail)):
            parse_batch(body, 100)


def test_learn_documents_become_feedback_items_by_uri():
    body = [
        {"text": "my card", "subjects": [{"uri": "http://e/cards", "label": "whatever"}]},
        {"text": "my card", "subjects": [{"uri": "urn:llm4tag:tag:top%20up"}]},  # same text: merged
        {"text": "no subjects"},
        {"subjects": [{"uri": "http://e/cards"}]},
        {"text": "  ", "subjects": [{"uri": "http://e/cards"}]},
    ]
    assert parse_learn(body, SUBJECTS, 100, 10) == (
        [{"id": item_id("my card"), "text": "my card", "tags": ["Cards", "top up"]}],
        [],
    )
    # As Annif: a URI outside the vocabulary is left out (and reported), not refused.
    mixed = [{"text": "a", "subjects": [{"uri": "http://e/other"}, {"uri": "http://e/cards"}]}]
    assert parse_learn(mixed, SUBJECTS, 100, 10) == (
        [{"id": item_id("a"), "text": "a", "tags": ["Cards"]}],
        ["http://e/other"],
    )
    assert parse_learn([{"text": "b", "subjects": [{"uri": "http://e/x"}]}], SUBJECTS, 100, 10) == (
        [],
        ["http://e/x"],
    )
    with pytest.raises(Problem, match=re.escape("missing (required) - '0.subjects.0.uri'")):
        parse_learn([{"text": "a", "subjects": [{"label": "x"}]}], SUBJECTS, 100, 10)
    with pytest.raises(Problem) as too_many:
        parse_learn([{"text": "a", "subjects": []}] * 11, SUBJECTS, 100, 10)
    assert too_many.value.status == 413


def test_item_ids_come_from_the_text_so_suggest_and_learn_meet():
    assert item_id("my card") == item_id("my card") != item_id("my card ")
    assert item_id("x").startswith("annif-")


def test_the_project_describes_the_vocabulary():
    described = project(AnnifSettings(project_id="b77"), SUBJECTS, "2026-01-01T00:00:00Z")
    assert described["project_id"] == "b77" and described["vocab"]["size"] == 3
    assert described["language"] == described["vocab_language"] == "en"
    with pytest.raises(ValueError):
        AnnifSettings(project_id="has space")
    assert "output" not in described  # no ranker: nothing fitted to report


def test_the_project_reports_the_fitted_output_rule():
    import math

    from llm4tag.ranking.cascade import RoutePlan

    plan = RoutePlan(
        tau=0.0,
        multi=True,
        emit=3,
        num_candidates=20,
        ranker_cut=0.27,
        llm_cut=0.5,
        reason="fitted",
        min_tags=1,
    )
    described = project(AnnifSettings(), SUBJECTS, None, output_rule(plan))
    assert described["output"] == {"limit": 3, "threshold": 0.27, "min_tags": 1, "rule": "fitted"}
    single = RoutePlan(tau=0.0, multi=False, emit=1, num_candidates=20, ranker_cut=0.5, llm_cut=0.5)
    assert output_rule(single)["limit"] == 1
    unreachable = RoutePlan(tau=0.0, multi=True, emit=5, num_candidates=20, ranker_cut=math.inf, llm_cut=0.5)
    assert (output_rule(unreachable)["limit"], output_rule(unreachable)["threshold"]) == (0, None)
    assert output_rule(RoutePlan.unranked(20, 0.5)) is None  # no ranker: the LLM keeps what it judges


def _refused_where(parse, body) -> str | None:
    """None if the parser accepts the body, else where its 400 says the problem is ('' for the body)."""
    try:
        parse(body)
    except Problem as problem:
        assert problem.status == 400, problem.detail
        return problem.detail.split(" - ")[1].strip("'") if " - " in problem.detail else ""
    return None


def test_the_bodies_are_validated_by_their_models_naming_where():
    doc = {"text": "t"}
    batches = [
        ({"documents": []}, None),
        ({"documents": [doc, {**doc, "document_id": "d", "metadata": {"a": "b"}}]}, None),
        ({"documents": [{**doc, "document_id": None}]}, None),
        ({"documents": [doc] * 33}, "documents"),
        ({"documents": [{**doc, "metadata": {"a": 1}}]}, "documents.0.metadata.a"),
        ({"documents": [{**doc, "metadata": ["a"]}]}, "documents.0.metadata"),
        ({"documents": [{**doc, "document_id": 7}]}, "documents.0.document_id"),
        ({"documents": [{"document_id": "d"}]}, "documents.0.text"),
        ({"documents": [{"text": 3}]}, "documents.0.text"),
        ({"documents": "t"}, "documents"),
        ({}, "documents"),
        ([doc], ""),
    ]
    for body, where in batches:
        assert _refused_where(lambda b: parse_batch(b, 100), body) == where, body
    subject = {"uri": "http://e/cards"}
    learns = [
        ([], None),
        ([{}], None),
        ([{"text": "t", "subjects": [subject, {**subject, "label": "Cards"}], "metadata": {"a": "b"}}], None),
        ([{"text": "t", "subjects": [{**subject, "label": 1}]}], "0.subjects.0.label"),
        ([{"text": "t", "subjects": [{"label": "Cards"}]}], "0.subjects.0.uri"),
        ([{"text": "t", "subjects": {"uri": "x"}}], "0.subjects"),
        ([{"text": "", "metadata": {}, "subjects": {}}], "0.subjects"),  # schemathesis: a blank text
        ([{"text": 1}], "0.text"),
        ([{"subjects": [{"uri": 2}]}], "0.subjects.0.uri"),
        ([{"text": "t", "subjects": [subject], "metadata": {"a": None}}], "0.metadata.a"),
        ([{"text": 1, "subjects": [subject]}], "0.text"),
        (["t"], "0"),
        ({"text": "t"}, ""),
    ]
    for body, where in learns:
        assert _refused_where(lambda b: parse_learn(b, SUBJECTS, 100, 10), body) == where, body


def test_annif_request_bodies_are_documented_as_annif_documents_them():
    import yaml

    from deployments.ingress import app

    paths = app.openapi()["paths"]
    annif = yaml.safe_load((Path(__file__).parent / "annif" / "annif.yaml").read_text())

    def ours(route):
        return paths[f"/v1/projects/{{project_id}}/{route}"]["post"]

    def theirs(route):
        return annif["paths"][f"/projects/{{project_id}}/{route}"]["post"]

    form = "application/x-www-form-urlencoded"
    suggest = ours("suggest")["requestBody"]["content"][form]["schema"]
    expected = theirs("suggest")["requestBody"]["content"][form]["schema"]
    assert suggest["required"] == expected["required"] == ["text"]
    assert set(suggest["properties"]) == set(expected["properties"])
    assert (
        suggest["properties"]["limit"]["minimum"] == 0 and suggest["properties"]["threshold"]["maximum"] == 1
    )

    batch = ours("suggest-batch")
    assert {p["name"] for p in batch["parameters"] if p["in"] == "query"} == {
        p["name"] for p in theirs("suggest-batch")["parameters"] if "name" in p
    }
    documents = batch["requestBody"]["content"]["application/json"]["schema"]["properties"]["documents"]
    assert documents["maxItems"] == 32 and documents["items"]["required"] == ["text"]
    assert set(documents["items"]["properties"]) == set(
        annif["components"]["schemas"]["Document"]["properties"]
    )

    learn = ours("learn")["requestBody"]["content"]["application/json"]["schema"]
    indexed = annif["components"]["schemas"]["IndexedDocument"]
    assert learn["type"] == "array" and set(learn["items"]["properties"]) == set(indexed["properties"])
    assert learn["items"]["properties"]["subjects"]["items"]["required"] == ["uri"]
    # Inlined: a pointer into pydantic's $defs would not resolve inside the OpenAPI document.
    assert "$ref" not in str([suggest, batch["requestBody"], batch["parameters"], learn])
