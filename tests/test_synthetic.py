"""Synthetic example items (`llm4tag augment`, issue 27): their storage, the parsing of the LLM's answer,
the guard that keeps them out of held-out and gold rows, and their way into the learned recall's
training items. Pure logic (no encoder, no LLM): the model test is tests/test_augment.py."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from graph_store import GraphConfig
from llm4tag.augment import TagContext, augment_messages, parse_examples, prompt_version
from llm4tag.errors import DataError, LLM4TagError
from llm4tag.evaluation.predictions import evaluate_predictions
from llm4tag.prompts import AugmentPromptConfig, PromptConfig, Prompts
from llm4tag.ranking import LearnedConfig, held_out_candidates
from llm4tag.ranking.crossfit import fit_learned, fold_parts
from llm4tag.synthetic import (
    SyntheticExamples,
    SyntheticLeakError,
    check_not_synthetic,
    is_synthetic,
    synthetic_id,
)
from tests.test_new_tags import synthetic

LEARNED = LearnedConfig(kind="linear", embeddings=False)


# ------------------------------------------------------------------------------------------ storage
def test_examples_are_appended_with_stable_ids_and_read_back_per_tag(tmp_path):
    store = SyntheticExamples(tmp_path)
    assert store.read() == [] and store.asked() == {}
    first = store.append("card_arrival", ["Where is my card?", "My card has not come"], 2, "tiny", "v1")
    assert [e.id for e in first] == ["syn:card_arrival:0", "syn:card_arrival:1"]
    store.append("card_arrival", ["Still no card"], 3, "tiny", "v1")  # ids continue
    store.append("top_up", [], 2, "tiny", "v1")  # the LLM gave nothing usable: asked, none stored
    by_tag = store.by_tag()
    assert [e.id for e in by_tag["card_arrival"]] == [synthetic_id("card_arrival", n) for n in range(3)]
    assert "top_up" not in by_tag and store.asked() == {"card_arrival": 3, "top_up": 2}
    example = by_tag["card_arrival"][0]
    assert (example.provenance, example.model, example.prompt_version) == ("synthetic", "tiny", "v1")
    assert example.created and is_synthetic(example.id)
    assert store.path == tmp_path / "synthetic" / "examples.jsonl"


def test_a_batch_without_its_commit_record_and_a_torn_line_count_for_nothing_and_go(tmp_path):
    store = SyntheticExamples(tmp_path)
    store.append("a", ["one item"], 1, "tiny", "v1")
    committed = store.path.read_bytes()
    # What a writer killed mid-append could leave: a complete example line of an uncommitted batch and
    # a torn line.
    orphan = {"kind": "example", "id": "syn:b:0", "tag": "b", "text": "x", "model": "tiny"}
    orphan |= {"prompt_version": "v1", "created": "now", "batch": "deadbeef"}
    store.path.write_bytes(committed + (json.dumps(orphan) + "\n").encode() + b'{"kind": "exa')
    assert [e.id for e in store.read()] == ["syn:a:0"] and store.asked() == {"a": 1}
    store.append("b", ["another item"], 1, "tiny", "v1")  # drops both, then reuses the id
    assert [e.id for e in store.read()] == ["syn:a:0", "syn:b:0"]
    lines = [json.loads(line) for line in store.path.read_text().splitlines()]
    assert [r["id"] for r in lines if r["kind"] == "example"] == ["syn:a:0", "syn:b:0"]
    store.path.write_text(store.path.read_text() + "not json\n")
    with pytest.raises(LLM4TagError, match="line 5: not a synthetic-example record"):
        store.read()


def test_removal_rewrites_the_file_whole(tmp_path):
    store = SyntheticExamples(tmp_path)
    store.append("a", ["a one", "a two"], 2, "tiny", "v1")
    store.append("b", ["b one"], 2, "tiny", "v1")
    assert store.remove(["a"]) == 2
    assert list(store.by_tag()) == ["b"] and store.asked() == {"b": 2}
    assert not list(tmp_path.joinpath("synthetic").glob(".*.tmp"))  # no temporary left
    assert store.remove(None) == 1 and store.read() == [] and store.path.read_text() == ""
    assert SyntheticExamples(tmp_path / "nothing").remove(None) == 0


def test_real_annotations_replace_synthetic_examples(tmp_path):
    store = SyntheticExamples(tmp_path)
    store.append("a", [f"a {n}" for n in range(5)], 5, "tiny", "v1")
    store.append("b", ["b 0", "b 1"], 2, "tiny", "v1")
    used = store.for_fitting({"a": 3, "b": 0}, min_annotations=5)
    assert [e.id for e in used] == ["syn:a:0", "syn:a:1", "syn:b:0", "syn:b:1"]
    assert store.for_fitting({"a": 5, "b": 7}, min_annotations=5) == []


# ------------------------------------------------------------------------------------------ parsing
def test_the_answer_is_parsed_one_item_a_line():
    answer = "\n".join(
        [
            "Here are 3 new customer queries:",
            "1. Where is my new card?",
            "",
            '- "I ordered a card last week"',
            "where is my NEW card",  # a repeat (case, punctuation)
            "Card arrival",  # the tag's name alone
            "How do I top up?",  # copied from a style example
            "Already stored text",
            "* Has my card shipped yet?",
            "Fourth one",
        ]
    )
    style = ["How do I top up?"]
    parsed = parse_examples(answer, "card_arrival", style, limit=3, stored=["already stored text"])
    assert parsed == ["Where is my new card?", "I ordered a card last week", "Has my card shipped yet?"]
    assert parse_examples("x" * 50, "t", [], limit=5, max_chars=10) == ["x" * 10]
    assert parse_examples("\n\n", "t", [], limit=5) == []


def test_the_prompt_shows_the_tag_its_knowledge_and_the_style_examples():
    config = AugmentPromptConfig()
    prompts = Prompts(PromptConfig(domain="banking customer support", item_kind="customer query"))
    context = TagContext(
        "card_arrival", "the card has not arrived", ("Cards arrive in 5 days.",), ("How do I top up?",)
    )
    system, user = augment_messages(config, prompts, context, k=3, max_chars=300)
    assert "customer queries" in system["content"] and "banking customer support" in system["content"]
    text = user["content"]
    assert "Tag: card arrival (the card has not arrived)" in text and 'tagged "card arrival"' in text
    assert "- Cards arrive in 5 days." in text and "- How do I top up?" in text and "Write 3 new" in text
    bare = augment_messages(config, prompts, TagContext("x", None, (), ()), k=1, max_chars=300)[1]["content"]
    assert bare.count("- (none)") == 2 and "Tag: x\n" in bare
    assert prompt_version(config) == prompt_version(AugmentPromptConfig())
    assert prompt_version(AugmentPromptConfig(system="Other.")) != prompt_version(config)


# ------------------------------------------------------------------------ never held out, never gold
def test_the_guard_raises_on_a_synthetic_id():
    check_not_synthetic(["item1", "synthetic-looking"], "rows")
    with pytest.raises(SyntheticLeakError, match="1 synthetic example"):
        check_not_synthetic(["item1", "syn:a:0"], "the held-out rows")
    assert issubclass(SyntheticLeakError, LLM4TagError)


def test_a_synthetic_row_planted_among_the_held_out_rows_raises():
    data = synthetic(np.random.default_rng(5))
    planted = dataclasses.replace(data, ids=["syn:tag0:0", *data.ids[1:]])
    with pytest.raises(SyntheticLeakError, match="held-out rows"):
        held_out_candidates(planted, GraphConfig(), LEARNED, folds=3)


def test_an_item_with_a_synthetic_id_is_refused_as_gold_and_as_input(tmp_path):
    gold = tmp_path / "gold.jsonl"
    gold.write_text(
        '{"id": "q1", "text": "a", "tags": ["x"]}\n{"id": "syn:x:0", "text": "b", "tags": ["x"]}\n'
    )
    pred = tmp_path / "pred.jsonl"
    pred.write_text('{"id": "q1", "tags": ["x"]}\n')
    with pytest.raises(DataError, match=r"line 2.*id.*must not start with 'syn:'"):
        evaluate_predictions(gold, pred)


# --------------------------------------------------------------------------- used for fitting
def with_synthetic(data, tag: str, n: int):
    """``data`` with its annotations of ``tag`` removed and ``n`` synthetic examples of it."""
    rows = [i for i, row in enumerate(data.item_tags) if tag in row][:n]
    real = data.without_tags(frozenset({tag}))
    examples = dataclasses.replace(
        data,
        ids=[synthetic_id(tag, k) for k in range(n)],
        texts=[data.texts[i] for i in rows],
        vectors=data.vectors[rows],
        item_tags=[[tag]] * n,
    )
    return dataclasses.replace(real, synthetic=examples)


def test_synthetic_examples_train_every_learned_recall_and_are_never_held_out():
    data = with_synthetic(synthetic(np.random.default_rng(6), second_tags=False), "tag3", 4)
    syn_ids = set(data.synthetic.ids)
    trained = []

    def recording_parts(rest, held_ids, graph, learned):
        store, model = fold_parts(rest, held_ids, graph, learned)
        trained.append((model.trained_ids, set(store.graph.content_pos)))
        return store, model

    held = held_out_candidates(data, GraphConfig(), LEARNED, folds=3, parts=recording_parts)
    assert not syn_ids & set(held.item_ids) and not syn_ids & set(held.groups.tolist())
    assert set(held.item_ids) == set(data.ids)  # every real item held out once
    for model_ids, store_ids in trained:
        # Each fold's learned recall reads the synthetic examples but the fold's own, which it scores.
        assert syn_ids & model_ids
        assert not syn_ids & store_ids  # no graph store holds them
    assert sum(len(syn_ids - model_ids) for model_ids, _ in trained) == len(syn_ids)
    # Their candidates are training-only rows, beside (never among) the held-out rows.
    assert held.synthetic_x.shape[1] == held.x.shape[1] and len(held.synthetic_x) == len(held.synthetic_y)
    assert held.synthetic_y.sum() >= 1  # their own tag among their candidates: a right row
    assert len(held.y) == len(held.groups)
    final = fit_learned(data, LEARNED)
    assert syn_ids <= final.trained_ids
    # With no real annotation left, tag3 is learned from its synthetic examples alone.
    assert final.predict(["word3 filler1"], data.tag_vectors[3:4], k=1)[0][0][0] == "tag3"
    # A tag held out of a fold takes its synthetic examples out of that fold too.
    assert not data.without_tags(frozenset({"tag3"})).synthetic.ids
