"""SKOS vocabularies: reading (labels by language, notes, hierarchy, homonyms), aliases, writing back, and
a store built from the shipped debtags SKOS file that keeps every URI and the hierarchy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import rdflib
from rdflib.namespace import SKOS

from llm4tag.data import read_items, read_tags
from llm4tag.errors import DataError
from llm4tag.skos import aliases, hierarchy, read_skos, tag_uri, tags_from_meta, vocabulary_meta, write_skos

REPO = Path(__file__).resolve().parents[1]
DEBTAGS = REPO / "data" / "sample" / "debtags"

HAND = """
@prefix skos: <http://www.w3.org/2004/02/skos/core#> .
@prefix owl: <http://www.w3.org/2002/07/owl#> .
@prefix ex: <http://example.org/v/> .

ex:money a skos:Concept ; skos:prefLabel "Money"@en, "Raha"@fi ;
    skos:narrower ex:cards, ex:transfers .
ex:cards a skos:Concept ; skos:prefLabel "Cards"@en, "Kortit"@fi ;
    skos:altLabel "debit card"@en, "plastic"@en ;
    skos:definition "Payment cards and their delivery."@en ; skos:notation "C1" .
ex:transfers a skos:Concept ; skos:prefLabel "Transfers"@en ; skos:prefLabel "Siirrot"@fi ;
    skos:scopeNote "Money sent between accounts."@en ; skos:broader ex:money .
ex:old a skos:Concept ; skos:prefLabel "Old"@en, "Vanha"@fi ; owl:deprecated true .
ex:bank1 a skos:Concept ; skos:prefLabel "Bank"@en, "Pankki"@fi ; skos:broader ex:money .
ex:bank2 a skos:Concept ; skos:prefLabel "Bank"@en, "Penkki"@fi ; skos:broader ex:transfers .
"""


@pytest.fixture
def hand(tmp_path) -> Path:
    path = tmp_path / "hand.ttl"
    path.write_text(HAND)
    return path


def by_uri(tags):
    return {t.extra["uri"]: t for t in tags}


def test_concepts_become_tags_with_labels_notes_and_hierarchy(hand):
    tags = by_uri(read_skos(hand, "en"))
    ex = "http://example.org/v/"
    assert set(tags) == {
        ex + n for n in ("money", "cards", "transfers", "bank1", "bank2")
    }  # deprecated left out
    cards = tags[ex + "cards"]
    assert cards.tag == "Cards" and cards.extra["notation"] == "C1"
    assert cards.extra["alt_labels"] == ["debit card", "plastic"]
    # Alternative labels first: they survive the description's cut before the encoder and the prompts.
    assert cards.description == "(also: debit card; plastic) Payment cards and their delivery."
    assert tags[ex + "transfers"].description == "Money sent between accounts."
    # broader stated on either side (narrower from the parent, broader from the child).
    assert cards.extra["broader"] == ["Money"] and tags[ex + "transfers"].extra["broader"] == ["Money"]
    # Homonyms are told apart by their broader concept's label.
    assert {tags[ex + "bank1"].tag, tags[ex + "bank2"].tag} == {"Bank (Money)", "Bank (Transfers)"}
    assert sorted(hierarchy(tags.values())) == sorted(
        [
            ("Cards", "Money"),
            ("Transfers", "Money"),
            ("Bank (Money)", "Money"),
            ("Bank (Transfers)", "Transfers"),
        ]
    )


def test_the_language_is_chosen_and_required_when_labels_have_several(hand):
    fi = {t.extra["uri"].rsplit("/", 1)[1]: t.tag for t in read_skos(hand, "fi")}
    assert fi["cards"] == "Kortit" and fi["bank1"] == "Pankki"
    assert read_skos(hand, "fi")[0].extra["alt_labels"] == []  # no Finnish altLabels: none taken from English
    with pytest.raises(DataError, match=r"2 languages.*--language"):
        read_skos(hand)
    with pytest.raises(DataError, match="no skos:prefLabel in language 'sv'"):
        read_skos(hand, "sv")


def test_bad_files_get_a_clear_error(tmp_path):
    broken = tmp_path / "broken.ttl"
    broken.write_text("@prefix skos: <http://www.w3.org/2004/02/skos/core#> . <a> skos:prefLabel ")
    with pytest.raises(DataError, match=r"broken\.ttl: is not a readable SKOS file"):
        read_tags(broken)
    empty = tmp_path / "empty.ttl"
    empty.write_text("@prefix skos: <http://www.w3.org/2004/02/skos/core#> .\n")
    with pytest.raises(DataError, match="holds no skos:Concept"):
        read_tags(empty)
    with pytest.raises(DataError, match="does not exist"):
        read_tags(tmp_path / "missing.ttl")


def test_items_may_name_tags_by_uri_notation_or_label(hand, tmp_path):
    tags = read_skos(hand, "en")
    items = tmp_path / "items.jsonl"
    items.write_text(
        json.dumps({"id": "a", "text": "x", "tags": ["http://example.org/v/cards", "Money"]})
        + "\n"
        + json.dumps({"id": "b", "text": "y", "tags": ["C1", "Bank (Money)", "nope"]})
        + "\n"
    )
    read = read_items(items, vocabulary={t.tag for t in tags}, aliases=aliases(tags))
    assert [i.tags for i in read.items] == [("Cards", "Money"), ("Cards", "Bank (Money)")]
    assert read.unknown_tag_annotations == 1


def test_written_skos_reads_back_with_the_same_uris_labels_notes_and_hierarchy(hand):
    tags = read_skos(hand, "en")
    again = read_skos(_write(write_skos(tags, language="en", scheme="http://example.org/v/")), "en")
    assert [(t.tag, t.description, t.extra) for t in again] == [(t.tag, t.description, t.extra) for t in tags]


def test_tags_without_uris_get_stable_derived_ones():
    assert tag_uri("card arrival/late", None) == "urn:llm4tag:tag:card%20arrival%2Flate"
    assert tag_uri("x", {"uri": "http://e/x"}) == "http://e/x"
    graph = rdflib.Graph().parse(
        data=write_skos(read_tags(REPO / "data/sample/banking77/tags.jsonl")), format="turtle"
    )
    assert (
        rdflib.URIRef("urn:llm4tag:tag:card_arrival"),
        SKOS.prefLabel,
        rdflib.Literal("card_arrival", lang="en"),
    ) in graph


def _write(text: str) -> Path:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".ttl", delete=False) as handle:
        handle.write(text)
    return Path(handle.name)


# --- the shipped debtags vocabulary, built into a store


def test_the_shipped_debtags_vocabulary_names_every_tag_of_the_sample():
    tags = read_tags(DEBTAGS / "vocabulary.ttl", "en")
    sample = [json.loads(line)["tag"] for line in (DEBTAGS / "tags.jsonl").read_text().splitlines()]
    notations = {t.extra["notation"]: t for t in tags}
    assert set(sample) <= set(notations)
    facets = {t.tag for t in tags if not t.extra["broader"]}
    assert len(facets) == 28 and len(tags) == 232 + 28
    assert all(len(notations[s].extra["broader"]) == 1 for s in sample)
    assert notations["admin::backup"].tag == "Backup and Restoration"
    items = read_items(DEBTAGS / "train.jsonl", vocabulary={t.tag for t in tags}, aliases=aliases(tags))
    assert items.unknown_tag_annotations == 0


def test_a_store_built_from_skos_keeps_every_uri_and_the_hierarchy(tmp_path, encoder):
    """llm4tag build --tags vocabulary.ttl: the store's vocabulary written back as SKOS has the URIs,
    labels, notations, notes and hierarchy of the input (URIs out equal URIs in)."""
    from graph_store import GraphStore, read_vocabulary
    from llm4tag.cli import main

    store = tmp_path / "store"
    source = DEBTAGS / "vocabulary.ttl"
    assert (
        main(
            [
                "build",
                "--items",
                str(DEBTAGS / "train.jsonl"),
                "--tags",
                str(source),
                "--language",
                "en",
                "--store",
                str(store),
            ]
        )
        == 0
    )
    vocabulary = read_vocabulary(store)
    tags_in = read_tags(source, "en")
    assert sorted(vocabulary.broader) == sorted(hierarchy(tags_in))
    assert GraphStore.load(store).stats()["broader_edges"] == 232
    tags_out = tags_from_meta(
        vocabulary.tags, vocabulary.descriptions, vocabulary.meta["vocabulary"], vocabulary.broader
    )
    assert vocabulary.meta["vocabulary"] == vocabulary_meta(tags_in)
    again = read_skos(_write(write_skos(tags_out, language="en")), "en")
    assert {t.extra["uri"] for t in again} == {t.extra["uri"] for t in tags_in}
    assert sorted((t.tag, t.description, t.extra) for t in again) == sorted(
        (t.tag, t.description, t.extra) for t in tags_in
    )
    rdf_in = rdflib.Graph().parse(source)
    uris_in = {str(c) for c in rdf_in.subjects(rdflib.RDF.type, SKOS.Concept)}
    assert {t.extra["uri"] for t in again} == uris_in


def test_a_jsonl_vocabulary_may_carry_its_uris(tmp_path):
    vocabulary = tmp_path / "tags.jsonl"
    vocabulary.write_text(
        json.dumps({"tag": "card_arrival", "description": "d", "uri": "http://e/arrival", "notation": "A1"})
        + "\n"
        + json.dumps({"tag": "top_up"})
        + "\n"
    )
    tags = read_tags(vocabulary)
    meta = vocabulary_meta(tags)
    assert meta == {"language": None, "tags": {"card_arrival": {"uri": "http://e/arrival", "notation": "A1"}}}
    assert [tag_uri(t.tag, meta["tags"].get(t.tag)) for t in tags] == [
        "http://e/arrival",
        "urn:llm4tag:tag:top_up",
    ]
