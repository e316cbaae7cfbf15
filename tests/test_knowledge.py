"""Sample and domain knowledge bases (paper §3.3.2) with the real bundled encoder."""

from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

import llm4tag.knowledge as knowledge
import llm4tag.knowledge.persistence as knowledge_files
from graph_store import StoreError, durable
from llm4tag.data import Item, Tag, read_tags
from llm4tag.errors import DataError
from llm4tag.knowledge import (
    DomainKnowledgeBase,
    EncoderMismatchError,
    KnowledgeError,
    Sample,
    SampleKnowledgeBase,
    Snippet,
    build_knowledge,
    load_knowledge_file,
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BANKING_TAGS = REPO / "data" / "sample" / "banking77" / "tags.jsonl"
BANKING_RULES = REPO / "data" / "sample" / "knowledge" / "banking77_rules.md"

ITEMS = [
    Item("a1", "My new card still hasn't arrived after two weeks.", ("card_arrival",)),
    Item("a2", "How long does it take to deliver a card to the US?", ("card_delivery_estimate",)),
    Item("a3", "The transfer I made yesterday is still showing as pending.", ("pending_transfer",)),
    Item("a4", "My friend says the money I sent him never arrived.", ("transfer_not_received_by_recipient",)),
    Item("a5", "There is a payment on my card that I did not make.", ("card_payment_not_recognised",)),
    Item("a6", "What exchange rate do you use for euros?", ("exchange_rate",)),
    Item("a7", "The ATM swallowed my card and did not give it back.", ("card_swallowed",)),
    Item("a8", "I want a refund for the shoes I bought.", ("request_refund",)),
    Item("u1", "Some item nobody annotated yet.", None),
]

TAGS = [
    Tag("card_arrival", "The ordered card has not arrived yet; tracking a card in the post."),
    Tag("card_delivery_estimate", "How long card delivery takes and where cards can be delivered."),
    Tag("pending_transfer", "An outgoing transfer is still pending."),
    Tag("exchange_rate", "Which currency exchange rate is used."),
    Tag("card_swallowed", "An ATM kept the card."),
    Tag("request_refund", None),
]


@pytest.fixture
def samples(encoder) -> SampleKnowledgeBase:
    return SampleKnowledgeBase.from_items(ITEMS, encoder)


@pytest.fixture
def domain(encoder) -> DomainKnowledgeBase:
    base = DomainKnowledgeBase.from_vocabulary(TAGS, encoder)
    rule = Snippet("rule:one-intent", "Every query has exactly one intent; tag the request.", (), "rules")
    base.add_encoded([rule], encoder)
    return base


def ids(hits) -> list[str]:
    return [h.sample.id if hasattr(h, "sample") else h.snippet.id for h in hits]


# --- samples: retrieval


def test_from_items_skips_unannotated_and_keeps_tags(samples, encoder):
    assert len(samples) == 8 and "u1" not in samples
    assert samples.get("a1") == Sample("a1", ITEMS[0].text, ("card_arrival",), (), "annotation")
    assert samples.encoder_id == encoder.id and samples.dim == 384


def test_top1_is_a_near_paraphrase(samples, encoder):
    queries = encoder.encode(
        ["I'm still waiting for my card to come in the mail", "a cash machine kept my card", "eur rate?"]
    )
    hits = samples.search(queries, n=3)
    assert [h[0].sample.id for h in hits] == ["a1", "a7", "a6"]
    for row in hits:
        assert len(row) == 3
        sims = [h.similarity for h in row]
        assert sims == sorted(sims, reverse=True) and -1.0 <= sims[-1] <= sims[0] <= 1.0001


def test_own_id_is_excluded(samples, encoder):
    vectors = encoder.encode([ITEMS[0].text, ITEMS[2].text])
    plain = samples.search(vectors, n=2)
    assert plain[0][0].sample.id == "a1" and plain[0][0].similarity == pytest.approx(1.0, abs=1e-4)
    hits = samples.search(vectors, n=2, exclude_ids=[{"a1"}, None])
    assert "a1" not in ids(hits[0]) and len(hits[0]) == 2
    assert hits[1][0].sample.id == "a3"
    # Excluding nearly everything still returns what is left.
    everyone_but_a8 = {i.id for i in ITEMS} - {"a8"}
    assert ids(samples.search(vectors[:1], n=3, exclude_ids=[everyone_but_a8])[0]) == ["a8"]
    with pytest.raises(KnowledgeError, match="exclude_ids"):
        samples.search(vectors, exclude_ids=[None])


def test_min_similarity_and_edge_cases(samples, encoder):
    vector = encoder.encode(["The ATM ate my card"])
    hits = samples.search(vector, n=5, min_similarity=0.5)[0]
    assert hits and all(h.similarity >= 0.5 for h in hits) and len(hits) < 5
    assert samples.search(vector, n=0) == [[]]
    assert samples.search(np.zeros((0, 384), np.float32)) == []
    empty = SampleKnowledgeBase(encoder.id, 384)
    assert empty.search(vector) == [[]]
    with pytest.raises(KnowledgeError, match="shape"):
        samples.search(np.zeros((1, 10), np.float32))


def test_appended_sample_is_retrieved_at_once(samples, encoder):
    text = "Can I use my card to pay at a petrol station in Norway?"
    query = encoder.encode(["does the card work at Norwegian gas stations"])
    assert samples.search(query, n=1)[0][0].sample.id != "f1"
    samples.add([Sample("f1", text, ("card_acceptance",), (), "feedback")], encoder.encode([text]))
    assert len(samples) == 9
    hit = samples.search(query, n=1)[0][0]
    assert hit.sample.id == "f1" and hit.sample.source == "feedback"


def test_update_merges_tags_and_replaces_the_vector_when_the_text_changes(samples, encoder):
    text = ITEMS[5].text
    # Feedback: exchange_rate was wrong, exchange_charge is right; a3's text is unchanged.
    samples.add(
        [Sample("a6", text, ("exchange_charge",), ("exchange_rate",), "feedback")], encoder.encode([text])
    )
    merged = samples.get("a6")
    assert merged.correct == ("exchange_charge",) and merged.incorrect == ("exchange_rate",)
    assert merged.source == "feedback" and len(samples) == 8
    # Marking it correct again moves it back, keeping the other marks.
    samples.add_encoded([Sample("a6", text, ("exchange_rate",), (), "feedback")], encoder)
    assert samples.get("a6").correct == ("exchange_charge", "exchange_rate")
    assert samples.get("a6").incorrect == ()

    new_text = "I lost my phone with the banking app on it."
    old_query, new_query = encoder.encode([ITEMS[6].text, new_text])
    samples.add([Sample("a7", new_text, ("lost_or_stolen_phone",), ("card_swallowed",))], new_query[None])
    assert samples.get("a7").correct == ("lost_or_stolen_phone",)
    assert samples.get("a7").incorrect == ("card_swallowed",)
    assert np.allclose(samples.vector("a7"), new_query, atol=1e-6)
    assert samples.search(new_query[None], n=1)[0][0].sample.id == "a7"
    old_hits = samples.search(old_query[None], n=8)[0]
    assert len(old_hits) == 8 and len(set(ids(old_hits))) == 8  # the dead row is never returned
    assert old_hits[0].similarity < 0.99


def test_many_updates_compact_the_index(encoder):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(40, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    base = SampleKnowledgeBase.build(
        [Sample(f"s{i}", f"text {i}", ("t",)) for i in range(40)], vectors, "enc"
    )
    for round_ in range(10):  # 400 text changes: more dead rows than the compaction threshold
        fresh = rng.normal(size=(40, 384)).astype(np.float32)
        fresh /= np.linalg.norm(fresh, axis=1, keepdims=True)
        base.add([Sample(f"s{i}", f"text {i} v{round_}", ("t",)) for i in range(40)], fresh)
    assert len(base) == 40 and base._index.ntotal < 400
    hits = base.search(fresh, n=1)
    assert [h[0].sample.id for h in hits] == [f"s{i}" for i in range(40)]


def test_bad_entries_and_vectors_are_refused(samples, encoder):
    with pytest.raises(ValueError, match="both correct and incorrect"):
        Sample("x", "t", ("a",), ("a",))
    with pytest.raises(ValueError, match="source"):
        Sample("x", "t", ("a",), (), "guess")
    with pytest.raises(KnowledgeError, match="unit length"):
        samples.add([Sample("x", "t", ("a",))], np.ones((1, 384), np.float32))
    with pytest.raises(KnowledgeError, match="shape"):
        samples.add([Sample("x", "t", ("a",))], encoder.encode(["t", "u"]))
    with pytest.raises(KnowledgeError, match="Sample entries"):
        samples.add([Snippet("x", "t")], encoder.encode(["t"]))
    with pytest.raises(KnowledgeError, match="no open log"):
        samples.add([Sample("x", "t", ("a",))], encoder.encode(["t"]), durable=True)
    assert "x" not in samples


# --- domain knowledge


def test_vocabulary_snippets(domain):
    snippet = domain.get("tag:card_arrival")
    assert snippet.text.startswith("card arrival: The ordered card") and snippet.tags == ("card_arrival",)
    assert snippet.source == "vocabulary"
    assert domain.get("tag:request_refund") is None  # no description, no snippet
    trimmed = knowledge.vocabulary_snippets([Tag("x_y", "word " * 200)], max_chars=50)[0]
    assert len(trimmed.text) <= 50 and trimmed.text.startswith("x y: word") and trimmed.text.endswith("…")


def test_domain_search_only_returns_candidate_or_general_snippets(domain, encoder):
    query = encoder.encode(["My card has still not been delivered, can I track it?"])
    # card_arrival's snippet is the most similar of all, but it is not a candidate here.
    best_overall = domain.search(query, [list(domain.tags())], n=1)[0][0]
    assert best_overall.snippet.id == "tag:card_arrival"
    hits = domain.search(query, [["pending_transfer", "exchange_rate", "no_such_tag"]], n=5)[0]
    assert {h.snippet.id for h in hits} == {"tag:pending_transfer", "tag:exchange_rate", "rule:one-intent"}
    for hit in hits:
        assert hit.snippet.general or set(hit.snippet.tags) & {"pending_transfer", "exchange_rate"}
    # n cuts, best first; no candidates leaves the general rules.
    two = domain.search(np.repeat(query, 2, axis=0), [["card_arrival", "card_swallowed"], []], n=1)
    assert ids(two[0]) == ["tag:card_arrival"] and ids(two[1]) == ["rule:one-intent"]
    # Candidates may be recall results with a .tag attribute.
    from graph_store import Candidate

    cands = [Candidate(tag="card_delivery_estimate", score=0.9, paths=("c2t",))]
    assert "tag:card_delivery_estimate" in ids(domain.search(query, [cands], n=3)[0])
    with pytest.raises(KnowledgeError, match="candidates"):
        domain.search(query, [[], []])


def test_added_snippet_is_eligible_at_once_and_updates_replace(domain, encoder):
    query = encoder.encode(["I paid in Turkey and the lira rate was terrible"])
    text = "Card payments abroad at a bad rate are card_payment_wrong_exchange_rate."
    rule = Snippet("r1", text, ("card_payment_wrong_exchange_rate",), "runtime")
    domain.add_encoded([rule], encoder)
    hits = domain.search(query, [["card_payment_wrong_exchange_rate"]], n=3)[0]
    assert ids(hits)[0] == "r1"
    # Re-tagged: now it is about exchange_rate only and no longer eligible for the old tag.
    domain.add_encoded([Snippet("r1", rule.text, ("exchange_rate",), "runtime")], encoder)
    assert "r1" not in ids(domain.search(query, [["card_payment_wrong_exchange_rate"]], n=3)[0])
    assert "r1" in ids(domain.search(query, [["exchange_rate"]], n=3)[0])
    assert "card_payment_wrong_exchange_rate" not in domain.tags()


# --- knowledge files


def test_markdown_headings_link_sections_to_tags(tmp_path, caplog):
    path = tmp_path / "rules.md"
    long_section = "\n\n".join(f"Paragraph {i}: " + "rule text " * 12 for i in range(4))
    path.write_text(
        "<!-- a comment\nspanning lines -->\n"
        "Tag the main request.\n\n"
        "# Card_Arrival\n\nThe card was ordered and is late.\n\n"
        "## Examples\n\nStill waiting for my card.\n\n"
        "# pending transfer / transfer_timing\n\nPending versus how long.\n\n"
        "# When to use `card_swallowed` or `not_a_tag`\n\nAn ATM kept it.\n\n"
        "# Long general rule\n\n" + long_section + "\n\n"
        "# Empty heading\n\n"
        "```\n# not a heading inside a fence\n```\n",
        encoding="utf-8",
    )
    vocab = {"card_arrival", "pending_transfer", "transfer_timing", "card_swallowed"}
    with caplog.at_level(logging.WARNING, logger="llm4tag.knowledge"):
        snippets = load_knowledge_file(path, vocab, max_chars=120)
    assert "not_a_tag" in caplog.text
    by_id = {s.id: s for s in snippets}
    assert (
        by_id["rules.md#preamble"].tags == () and by_id["rules.md#preamble"].text == "Tag the main request."
    )
    assert by_id["rules.md#card-arrival"].tags == ("card_arrival",)
    assert by_id["rules.md#card-arrival"].text == "Card Arrival: The card was ordered and is late."
    assert by_id["rules.md#examples"].tags == ("card_arrival",)  # nested: inherits
    assert by_id["rules.md#pending-transfer-transfer-timing"].tags == ("pending_transfer", "transfer_timing")
    assert by_id["rules.md#when-to-use-card-swallowed-or-not-a-tag"].tags == ("card_swallowed",)
    chunks = [s for s in snippets if s.id.startswith("rules.md#long-general-rule/")]
    assert len(chunks) >= 4 and all(c.tags == () for c in chunks)
    assert all(len(s.text) <= 120 for s in snippets)
    assert all(c.text.startswith("Long general rule: ") for c in chunks)
    assert "".join(c.text for c in chunks).count("Paragraph") == 4
    assert "fence" in by_id["rules.md#empty-heading"].text  # the fenced line is text, not a heading
    assert all(s.source == "rules.md" for s in snippets)
    with pytest.raises(DataError, match="not_a_tag"):
        load_knowledge_file(path, vocab, strict=True)
    # Without a vocabulary no heading names a tag.
    assert all(s.general for s in load_knowledge_file(path))


def test_jsonl_knowledge_file(tmp_path, caplog):
    path = tmp_path / "defs.jsonl"
    rows = [
        {"text": "A top-up adds money to the account.", "tags": ["pending_top_up", "top_up_failed"]},
        {"id": "k2", "title": "SEPA", "text": "A euro bank transfer.", "tags": ["transfer_timing", "bogus"]},
        {"text": "Only unknown tags here.", "tags": ["bogus2"]},
        {"text": "A general definition."},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    vocab = {"pending_top_up", "top_up_failed", "transfer_timing"}
    with caplog.at_level(logging.WARNING, logger="llm4tag.knowledge"):
        snippets = load_knowledge_file(path, vocab)
    assert "bogus" in caplog.text and "skipped 1 row" in caplog.text
    assert [(s.id, s.tags) for s in snippets] == [
        ("defs.jsonl:1", ("pending_top_up", "top_up_failed")),
        ("k2", ("transfer_timing",)),
        ("defs.jsonl:4", ()),
    ]
    assert snippets[1].text == "SEPA: A euro bank transfer."
    with pytest.raises(DataError, match=r"defs\.jsonl, line 2, field 'tags'.*bogus"):
        load_knowledge_file(path, vocab, strict=True)

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": "broken",\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl, line 2: invalid JSON"):
        load_knowledge_file(bad)
    no_text = tmp_path / "no_text.jsonl"
    no_text.write_text('{"tags": ["a"]}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"no_text\.jsonl, line 1, field 'text'"):
        load_knowledge_file(no_text)
    with pytest.raises(DataError, match="unsupported"):
        load_knowledge_file(tmp_path / "rules.txt")


def test_sample_rules_file_links_to_banking77_tags():
    vocab = {t.tag for t in read_tags(BANKING_TAGS)}
    snippets = load_knowledge_file(BANKING_RULES, vocab, strict=True)
    linked = [s for s in snippets if s.tags]
    assert 6 <= len(linked) <= 10 and sum(s.general for s in snippets) >= 1
    assert all(len(s.text) <= knowledge.DEFAULT_MAX_CHARS for s in snippets)
    assert all(set(s.tags) <= vocab for s in snippets)
    assert {"card_arrival", "card_delivery_estimate", "pending_transfer"} <= {
        t for s in linked for t in s.tags
    }


def test_build_knowledge(encoder):
    samples, domain = build_knowledge(ITEMS, TAGS, encoder, [BANKING_RULES])
    assert len(samples) == 8
    assert "tag:card_arrival" in domain and "banking77_rules.md#general-rules" in domain
    query = encoder.encode(["when will my card get here?"])
    rule = "banking77_rules.md#card-arrival-vs-card-delivery-estimate"
    assert rule in ids(domain.search(query, [["card_arrival", "card_delivery_estimate"]], n=4)[0])
    assert rule not in ids(domain.search(query, [["exchange_rate"]], n=10)[0])


# --- persistence


def _same_base(a, b) -> None:
    assert len(a) == len(b) and a.encoder_id == b.encoder_id
    for entry in a:
        assert b.get(entry.id) == entry
        assert np.allclose(a.vector(entry.id), b.vector(entry.id), atol=0)


def test_save_load_round_trip(samples, domain, encoder, tmp_path):
    samples.save(tmp_path / "samples")
    domain.save(tmp_path / "domain")
    layout = sorted(p.name for p in (tmp_path / "samples").iterdir() if not p.name.endswith(".lock"))
    assert layout[0] == "CURRENT" and layout[1] == "appended.jsonl" and layout[2].startswith("snapshot-")
    loaded = SampleKnowledgeBase.load(tmp_path / "samples", expected_encoder_id=encoder.id)
    loaded_domain = DomainKnowledgeBase.load(tmp_path / "domain")
    _same_base(samples, loaded)
    _same_base(domain, loaded_domain)
    query = encoder.encode(["card not here yet"])
    assert samples.search(query) == loaded.search(query)
    assert domain.search(query, [["card_arrival"]]) == loaded_domain.search(query, [["card_arrival"]])
    assert loaded_domain.tags() == domain.tags()
    # Pickling (e.g. to another process) keeps the contents, not the log.
    again = pickle.loads(pickle.dumps(loaded_domain))
    assert again.search(query, [["card_arrival"]]) == loaded_domain.search(query, [["card_arrival"]])
    # Kinds do not mix.
    with pytest.raises(DataError, match="holds a samples knowledge base"):
        DomainKnowledgeBase.load(tmp_path / "samples")
    with pytest.raises(KnowledgeError, match="holds a samples knowledge base"):
        domain.save(tmp_path / "samples")


def test_encoder_mismatch_is_refused(samples, encoder, tmp_path):
    samples.save(tmp_path / "kb")
    with pytest.raises(EncoderMismatchError) as info:
        SampleKnowledgeBase.load(tmp_path / "kb", expected_encoder_id="other-encoder@123/d384")
    assert encoder.id in str(info.value) and "other-encoder@123/d384" in str(info.value)
    assert isinstance(info.value, StoreError)  # the one EncoderMismatchError, graph store's and ours


def test_missing_and_damaged_bases_raise_data_errors(samples, tmp_path):
    with pytest.raises(DataError, match="not found"):
        SampleKnowledgeBase.load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no CURRENT"):
        SampleKnowledgeBase.load(tmp_path / "empty")
    snapshot = samples.save(tmp_path / "kb")
    records = snapshot / "records.jsonl"
    records.write_bytes(records.read_bytes().replace(b"arrived", b"arrivex"))
    with pytest.raises(DataError, match=r"records\.jsonl: damaged"):
        SampleKnowledgeBase.load(tmp_path / "kb")
    snapshot = samples.save(tmp_path / "kb2")
    (snapshot / "vectors.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DataError, match=r"vectors\.npy: damaged"):
        SampleKnowledgeBase.load(tmp_path / "kb2")
    snapshot = samples.save(tmp_path / "kb3")
    (snapshot / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match=r"manifest\.json: damaged"):
        SampleKnowledgeBase.load(tmp_path / "kb3")


def test_durable_appends_are_replayed_after_reload(samples, domain, encoder, tmp_path):
    samples.save(tmp_path / "samples")
    domain.save(tmp_path / "domain")
    live = SampleKnowledgeBase.load(tmp_path / "samples", encoder.id, writable=True)
    live_domain = DomainKnowledgeBase.load(tmp_path / "domain", encoder.id, writable=True)
    text = "Why was I charged twice for one coffee?"
    live.add_encoded([Sample("f1", text, ("transaction_charged_twice",), (), "feedback")], encoder)
    live.add_encoded([Sample("a1", ITEMS[0].text, (), ("card_arrival",), "feedback")], encoder)
    live_domain.add_encoded([Snippet("r9", "Double charges are transaction_charged_twice.", ("x",))], encoder)
    log_lines = (tmp_path / "samples" / "appended.jsonl").read_text().splitlines()
    assert len(log_lines) == 3 and json.loads(log_lines[0])["format"] == "llm4tag-knowledge-log"
    entry = json.loads(log_lines[1])
    assert entry["id"] == "f1" and entry["source"] == "feedback" and len(entry["vector"]) == 384
    # Without a save, a reload replays the log.
    reloaded = SampleKnowledgeBase.load(tmp_path / "samples", encoder.id)
    _same_base(live, reloaded)
    assert reloaded.get("a1").correct == () and reloaded.get("a1").incorrect == ("card_arrival",)
    query = encoder.encode(["I was billed two times for a single purchase"])
    assert reloaded.search(query, n=1)[0][0].sample.id == "f1"
    assert DomainKnowledgeBase.load(tmp_path / "domain").get("r9").tags == ("x",)
    # A save folds the log into a new snapshot and starts an empty log, still open for appends.
    live.save(tmp_path / "samples")
    assert len((tmp_path / "samples" / "appended.jsonl").read_text().splitlines()) == 1
    live.add_encoded(
        [Sample("f2", "Close my account please.", ("terminate_account",), (), "feedback")], encoder
    )
    _same_base(live, SampleKnowledgeBase.load(tmp_path / "samples"))
    snapshots = [p for p in (tmp_path / "samples").iterdir() if p.name.startswith("snapshot-")]
    assert len(snapshots) == 2  # the live one and the one before
    # A read-only load writes nothing and adds are in-memory only.
    reader = SampleKnowledgeBase.load(tmp_path / "samples")
    reader.add_encoded([Sample("f3", "hello", ("greeting",), (), "feedback")], encoder)
    assert "f3" not in SampleKnowledgeBase.load(tmp_path / "samples")


def test_torn_last_log_line_is_ignored(samples, encoder, tmp_path, caplog):
    samples.save(tmp_path / "kb")
    live = SampleKnowledgeBase.load(tmp_path / "kb", writable=True)
    live.add_encoded([Sample("f1", "Is there a fee for topping up?", ("top_up_by_card_charge",))], encoder)
    live.close_log()
    log = tmp_path / "kb" / "appended.jsonl"
    with open(log, "ab") as fh:  # a crash in the middle of the next append
        fh.write(b'{"id": "f2", "text": "half a li')
    with caplog.at_level(logging.WARNING, logger="graph_store.durable"):
        reloaded = SampleKnowledgeBase.load(tmp_path / "kb", writable=True)
    assert "torn last line" in caplog.text
    assert "f1" in reloaded and "f2" not in reloaded
    # The next append cut the torn tail off (under the log's lock), so it starts on a line of its own.
    reloaded.add_encoded([Sample("f3", "Where is my PIN?", ("change_pin",), (), "feedback")], encoder)
    again = SampleKnowledgeBase.load(tmp_path / "kb")
    assert {"f1", "f3"} <= {s.id for s in again} and "f2" not in again
    # A damaged line that is not the last is an error, not silently skipped.
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(lines[0] + b"{broken\n" + b"".join(lines[1:]))
    with pytest.raises(DataError, match=r"appended\.jsonl, line 2: damaged log"):
        SampleKnowledgeBase.load(tmp_path / "kb")


def test_crash_during_save_leaves_the_previous_snapshot(samples, encoder, tmp_path, monkeypatch):
    first = samples.save(tmp_path / "kb")
    samples.add_encoded([Sample("new", "Brand new sample text", ("card_linking",))], encoder)

    def crash(path, array):  # the vectors file is half written, then the process "dies"
        with open(path, "wb") as fh:
            fh.write(b"\x93NUMPY" + b"\0" * 100)
        raise OSError("disk gone")

    monkeypatch.setattr(knowledge_files, "_write_npy", crash)
    with pytest.raises(OSError, match="disk gone"):
        samples.save(tmp_path / "kb")
    assert (tmp_path / "kb" / "CURRENT").read_text().strip() == first.name
    loaded = SampleKnowledgeBase.load(tmp_path / "kb")
    assert len(loaded) == 8 and "new" not in loaded
    monkeypatch.undo()
    # A leftover temporary folder (a crash that skipped the clean-up) is ignored, then removed by a save.
    (tmp_path / "kb" / ".tmp-snapshot-000099-deadbeef").mkdir()
    assert len(SampleKnowledgeBase.load(tmp_path / "kb")) == 8
    samples.save(tmp_path / "kb")
    assert "new" in SampleKnowledgeBase.load(tmp_path / "kb")
    assert not list((tmp_path / "kb").glob(".tmp-*"))


def test_crash_between_switch_and_new_log_keeps_the_log_appended_meanwhile(
    samples, encoder, tmp_path, monkeypatch
):
    samples.save(tmp_path / "kb")
    live = SampleKnowledgeBase.load(tmp_path / "kb", writable=True)
    live.add_encoded([Sample("f1", "Cancel that transfer", ("cancel_transfer",), (), "feedback")], encoder)
    # A later change kept in memory only (not durable): the next save must not lose it.
    change = Sample("f1", "Cancel that transfer", ("transfer_timing",), ("cancel_transfer",), "feedback")
    live.add([change], live.vector("f1"), durable=False)

    def crash(self, data):
        raise OSError("crash before the new log")

    monkeypatch.setattr(durable.AppendLog, "replace", crash)
    with pytest.raises(OSError):
        live.save(tmp_path / "kb")  # the new snapshot is live, its log not started
    monkeypatch.undo()
    # The old log's lines before the point the new snapshot covers are not replayed (that would undo
    # the later, in-memory change); lines appended after it (here by the process that was saving,
    # which still holds the old snapshot) are.
    live.add_encoded([Sample("f2", "x", ("y",), (), "feedback")], encoder)
    loaded = SampleKnowledgeBase.load(tmp_path / "kb", writable=True)
    assert loaded.get("f1").correct == ("transfer_timing",) and "f2" in loaded
    # The next append through the new snapshot finishes the switch: its own log, f2 carried over.
    loaded.add_encoded([Sample("f3", "z", ("y",), (), "feedback")], encoder)
    lines = [json.loads(x) for x in (tmp_path / "kb" / "appended.jsonl").read_text().splitlines()]
    assert lines[0]["snapshot"] == (tmp_path / "kb" / "CURRENT").read_text().strip()
    assert [x["id"] for x in lines[1:]] == ["f2", "f3"]
    assert {"f2", "f3"} <= {x.id for x in SampleKnowledgeBase.load(tmp_path / "kb")}


def test_open_log_requires_the_matching_snapshot(samples, encoder, tmp_path):
    with pytest.raises(KnowledgeError, match="never saved"):
        samples.open_log(tmp_path)
    samples.save(tmp_path / "a")
    other = SampleKnowledgeBase.load(tmp_path / "a")
    other.save(tmp_path / "b")
    with pytest.raises(KnowledgeError, match="not the one"):
        samples.open_log(tmp_path / "b")
    assert samples.open_log(tmp_path / "a") == (tmp_path / "a").resolve() / "appended.jsonl"
    samples.add_encoded([Sample("f1", "x y z", ("t",))], encoder)
    assert "f1" in SampleKnowledgeBase.load(tmp_path / "a")


def test_failed_log_write_changes_nothing(samples, encoder, tmp_path, monkeypatch):
    samples.save(tmp_path / "kb")
    live = SampleKnowledgeBase.load(tmp_path / "kb", writable=True)
    log = tmp_path / "kb" / "appended.jsonl"
    before = log.read_bytes()
    real_fsync, calls = os.fsync, []

    def fsync_fails_once(fd):
        calls.append(fd)
        if len(calls) == 1:
            raise OSError("I/O error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_fails_once)
    with pytest.raises(OSError, match="I/O error"):
        live.add_encoded([Sample("f1", "Top up failed again", ("top_up_failed",), (), "feedback")], encoder)
    monkeypatch.undo()
    assert "f1" not in live and log.read_bytes() == before  # the partial append was cut off again
    live.add_encoded([Sample("f2", "Top up failed again", ("top_up_failed",), (), "feedback")], encoder)
    assert {"f2"} == {s.id for s in SampleKnowledgeBase.load(tmp_path / "kb")} - {i.id for i in ITEMS}


# --- several processes on one folder (the replicas of a deployment)


def test_replicas_follow_each_others_appends_and_a_save(samples, encoder, tmp_path):
    folder = tmp_path / "samples"
    samples.save(folder)
    one = SampleKnowledgeBase.load(folder, writable=True)
    two = SampleKnowledgeBase.load(folder, writable=True)
    text = "Can I use my card to pay at a petrol station in Norway?"
    one.add([Sample("f1", text, ("card_acceptance",), (), "feedback")], encoder.encode([text]))
    assert "f1" not in two and two.refresh() == 1 and two.get("f1").correct == ("card_acceptance",)
    assert two.refresh() == 0
    # The other way round, and an update merges on both sides.
    two.add([Sample("f1", text, (), ("top_up_failed",), "feedback")], encoder.encode([text]))
    one.refresh()
    assert one.get("f1").incorrect == ("top_up_failed",) and one.get("f1").correct == ("card_acceptance",)
    # A save by one starts a new snapshot and an empty log: the other, appending before it refreshed,
    # first loads the new snapshot, so its entry lands in the live log rather than the replaced one.
    one.save(folder)
    other = "How long does a transfer from abroad take?"
    two.add([Sample("f2", other, ("transfer_timing",), (), "feedback")], encoder.encode([other]))
    assert two.get("f1") == one.get("f1")
    assert one.refresh() == 1 and "f2" in one
    assert "f2" in SampleKnowledgeBase.load(folder)
