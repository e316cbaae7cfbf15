"""Vocabulary construction (TagGPT section 2.1): parsing, aggregation, frequency filtering, merging,
the measures, and `llm4tag vocab build` end to end with the real encoder and the tiny LLM."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from llm4tag.baselines import parse_tags
from llm4tag.config import VocabConfig
from llm4tag.vocab import (
    aggregate,
    frequency_filter,
    frequency_thresholds,
    merge_near_duplicates,
    read_answer_cache,
    vocabulary_coverage,
    vocabulary_measures,
)

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample" / "banking77"


def unit(*components: float) -> np.ndarray:
    v = np.array(components, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_parse_tags_reads_what_small_models_write():
    assert parse_tags("Tags: Card Arrival, card_delivery; #late-card") == [
        "card arrival",
        "card delivery",
        "late-card",
    ]
    assert parse_tags('1. "Top up"\n2. Top up\n- Exchange rate.') == ["top up", "exchange rate"]
    # A sentence after the list is an explanation, not a tag.
    text = "refund, card fee\nThese tags describe the query about a refund of a card fee."
    assert parse_tags(text, max_words=5) == ["refund", "card fee"]
    assert parse_tags("", max_words=5) == []
    assert parse_tags("123, ---, ok") == ["ok"]


# A hand-made corpus: 10 items, each with its generated tags (a repeat within an item counts once).
ITEM_TAGS = {
    "i0": ["banking", "card arrival", "card arrival"],
    "i1": ["banking", "card arrival", "delivery"],
    "i2": ["banking", "card arrival"],
    "i3": ["banking", "exchange rate"],
    "i4": ["banking", "exchange rate", "fx fee"],
    "i5": ["banking", "top up"],
    "i6": ["banking", "top up", "odd phrase"],
    "i7": ["banking", "top up"],
    "i8": ["banking", "delivery"],
    "i9": ["banking"],
}


def test_aggregate_counts_items_not_mentions():
    counts = aggregate(ITEM_TAGS)
    assert counts == {
        "banking": 10,
        "card arrival": 3,
        "top up": 3,
        "exchange rate": 2,
        "delivery": 2,
        "fx fee": 1,
        "odd phrase": 1,
    }


def test_frequency_filter_with_explicit_thresholds():
    counts = aggregate(ITEM_TAGS)
    cut = frequency_filter(counts, 10, VocabConfig(min_count=2, max_share=0.5))
    assert (cut.min_count, cut.max_count) == (2, 5)
    assert cut.kept == ["card arrival", "top up", "delivery", "exchange rate"]  # by count, then name
    assert cut.too_rare == ["fx fee", "odd phrase"]
    assert cut.too_common == ["banking"]


def test_default_thresholds_come_from_the_distribution():
    # 1000 items: 40 tags on 10-40 items each, one on 900 (a tag on nearly every item), 20 singletons.
    counts = {f"t{i}": 10 + (i % 31) for i in range(40)}
    counts["everything"] = 900
    counts.update({f"once{i}": 1 for i in range(20)})
    low, high = frequency_thresholds(counts, 1000, VocabConfig())
    assert low == 2  # max(2, ceil(0.002 * 1000))
    logs = np.log([c for c in counts.values() if c >= 2])
    q1, q3 = np.percentile(logs, [25, 75])
    assert high == max(math.floor(math.exp(q3 + 1.5 * (q3 - q1))), 50)
    cut = frequency_filter(counts, 1000, VocabConfig())
    assert cut.too_common == ["everything"]
    assert len(cut.too_rare) == 20 and len(cut.kept) == 40
    # The floor: a tag on fewer than 5% of the items is never "too common".
    assert frequency_thresholds({"a": 3, "b": 3, "c": 3, "d": 4}, 100, VocabConfig())[1] == 5
    # Larger corpora raise the rarity cut with their size.
    assert frequency_thresholds(counts, 10_000, VocabConfig())[0] == 20


def test_merge_near_duplicates_never_chains():
    tags = ["card arrival", "card arrivals", "card delivery", "delivery time", "top up"]
    a = unit(1, 0, 0, 0)
    vectors = np.stack(
        [
            a,
            unit(1, 0.2, 0, 0),  # cos 0.98 with a: merged into it
            unit(1, 0.9, 0, 0),  # cos 0.74 with a: its own tag
            unit(0.6, 1.3, 0, 0),  # cos 0.92 with "card delivery" (0.42 with a): joins it
            unit(0, 0, 0, 1),
        ]
    )
    groups = merge_near_duplicates(tags, vectors, 0.8)
    assert groups == [[0, 1], [2, 3], [4]]
    # At 0.7 "card delivery" joins "card arrival" (0.74); "delivery time" is 0.42 from that leader
    # and leads its own tag although it is 0.92 from "card delivery": leaders decide, never chains.
    assert merge_near_duplicates(tags, vectors, 0.7) == [[0, 1, 2], [3], [4]]
    assert merge_near_duplicates([], np.zeros((0, 4)), 0.8) == []


def test_measures_follow_taggpt():
    vectors = {
        "card arrival": unit(1, 0, 0),
        "card delivery": unit(1, 0.3, 0),  # cos 0.96 with card arrival: a redundant pair
        "top up": unit(0, 1, 0),
        "exchange rate": unit(0, 0, 1),
    }
    items = {
        "a": ["card arrival", "card delivery"],
        "b": ["card arrival", "top up"],
        "c": ["top up"],
        "d": [],
    }
    m = vocabulary_measures(items, vectors, 0.8, vocabulary=list(vectors))
    assert m["items"] == 4 and m["tags"] == 4 and m["items_with_tags"] == 3
    assert m["tags_per_item_mean"] == pytest.approx(5 / 4)
    assert m["tags_per_item_hist"] == {"0": 1, "1": 1, "2": 2}
    assert m["popularity_hist"]["1"] == 1 and m["popularity_hist"]["2"] == 2
    assert m["unused_tags"] == 1  # exchange rate
    assert m["redundant_pairs"] == 1 and m["redundancy_ratio"] == pytest.approx(1 / 6, abs=1e-6)
    assert m["item_redundancy"] == pytest.approx(0.5)  # item a: 1 of 1 pair; item b: 0 of 1
    assert m["popularity_max"] == 2


def test_coverage_of_a_reference_vocabulary():
    ref = ["card arrival", "top up", "exchange rate"]
    ref_v = np.stack([unit(1, 0, 0), unit(0, 1, 0), unit(0, 0, 1)])
    built = ["card delivery", "topping up"]
    built_v = np.stack([unit(1, 0.3, 0), unit(0.1, 1, 0.1)])
    cov = vocabulary_coverage(ref, ref_v, built, built_v, 0.8)
    assert cov["matched"] == 2 and cov["coverage"] == pytest.approx(2 / 3, abs=1e-4)
    assert cov["matches"]["card arrival"][0] == "card delivery"
    assert "exchange rate" not in cov["matches"]


@pytest.mark.slow
def test_build_merges_real_near_duplicates_with_the_encoder(encoder):
    from llm4tag.config import settings_from_dict
    from llm4tag.data import Item
    from llm4tag.vocab import VocabularyBuilder

    settings = settings_from_dict({"vocab": {"min_count": 2, "max_share": 0.9}})
    builder = VocabularyBuilder(None, encoder, settings)
    items = [Item(f"i{i}", "text") for i in range(6)]
    answers = {
        "i0": "Card arrival, exchange rate",
        "i1": "card arrival, top up",
        "i2": "card arrivals, top up",
        "i3": "Card Arrivals, exchange rate",
        "i4": "top up, lonely tag",
        "i5": "card arrival",
    }
    result = builder.build(items, answers)
    by_tag = {r["tag"]: r for r in result.rows}
    assert set(by_tag) == {"card arrival", "top up", "exchange rate"}
    assert by_tag["card arrival"]["aliases"] == ["card arrivals"]
    assert by_tag["card arrival"]["count"] == 5  # items with either spelling
    assert by_tag["card arrival"]["description"] == "also: card arrivals"
    assert by_tag["top up"]["aliases"] == [] and by_tag["top up"]["description"] is None
    assert result.stats["too_rare"] == 1  # lonely tag
    assert result.item_tags["i3"] == ["card arrival", "exchange rate"]
    assert result.measures["redundancy_ratio"] == 0.0  # merged leaders stay below 0.8 pairwise


@pytest.mark.slow
def test_vocab_build_cli_writes_a_vocabulary_the_product_reads_and_resumes(tmp_path, tiny_llm, encoder):
    from llm4tag.baselines import BaselinePrompts
    from llm4tag.cli import main
    from llm4tag.config import load_settings
    from llm4tag.data import read_tags
    from llm4tag.vocab import _cache_key

    lines = [json.loads(x) for x in (SAMPLE / "train.jsonl").read_text().splitlines()[:4]]
    items = tmp_path / "raw.jsonl"  # tags removed
    items.write_text("".join(json.dumps({"id": r["id"], "text": r["text"]}) + "\n" for r in lines))
    out = tmp_path / "vocab.jsonl"
    config = tmp_path / "cfg.yaml"
    config.write_text("vocab: {min_count: 2, max_share: 1.0, max_new_tokens: 8}\nllm: {threads: 1}\n")
    # The tiny model's answers are noise: two items' answers are seeded in the cache (under the key
    # the build computes), so the vocabulary is known; the other two are asked.
    settings = load_settings(config)
    prompts = BaselinePrompts(settings)
    cache_path = tmp_path / "vocab.answers.jsonl"
    seeded = ""
    for row in lines[:2]:
        key = _cache_key("llamacpp:smollm2-135m-instruct", prompts.generative(row["text"]), 8)
        seeded += (
            json.dumps({"id": row["id"], "key": key, "raw": "Card arrival, card arrivals, top up"}) + "\n"
        )
    cache_path.write_text(seeded)
    argv = ["vocab", "build", "--items", str(items), "--out", str(out), "--model", "tiny", "--config"]
    argv += [str(config), "--reference", str(SAMPLE / "tags.jsonl"), "--report", str(tmp_path / "r.json")]
    assert main(argv) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert (report["cached"], report["asked"]) == (2, 2)
    assert set(read_answer_cache(cache_path)) == {r["id"] for r in lines}
    tags = {t.tag: t for t in read_tags(out)}  # the product reads it; aliases and count are extra fields
    assert tags["card arrival"].extra["aliases"] == ["card arrivals"]
    assert tags["card arrival"].extra["count"] >= 2 and "top up" in tags
    assert report["coverage"]["reference_tags"] == 77
    assert report["measures"]["redundancy_ratio"] == 0.0
    # A torn last line (an interrupted build) is asked again; everything else comes from the cache.
    text = cache_path.read_text().splitlines()
    cache_path.write_text("\n".join(text[:-1]) + "\n" + text[-1][:10])
    assert main(argv) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert (report["cached"], report["asked"]) == (3, 1)
    assert len(read_answer_cache(cache_path)) == 4
    assert main([*argv[:-2], "--limit", "0"]) == 2


def test_answers_say_how_far_they_are_and_resume_from_the_cache(tmp_path, caplog):
    """The LLM's answers are a long step: it logs its start (with what a resumed run found done)
    and its end with this run's count, and asks only for what the cache lacks."""
    import logging

    from llm4tag.config import Settings
    from llm4tag.data import Item
    from llm4tag.vocab import VocabularyBuilder

    class Engine:  # the LLM's answers are not what this test is about
        name = "fixed"

        def __init__(self):
            self.asked: list[int] = []

        def generate(self, messages, max_new_tokens):
            self.asked.append(len(messages))
            return ["card arrival, top up"] * len(messages)

    settings = Settings().with_overrides({"vocab": {"chunk": 2}})
    items = [Item(f"i{n}", f"where is my card number {n}") for n in range(5)]
    cache = tmp_path / "answers.jsonl"
    engine = Engine()
    builder = VocabularyBuilder(engine, None, settings)
    builder.answers(items[:2], cache)
    caplog.set_level(logging.INFO, logger="llm4tag.progress")
    caplog.clear()  # the first run's lines, where an earlier test left the logger at INFO
    answers, stats = builder.answers(items, cache)
    assert len(answers) == 5 and (stats["cached"], stats["asked"]) == (2, 3)
    assert engine.asked == [2, 2, 1]
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "vocab: LLM answers: started (5 items), 2 done before"
    assert lines[-1].startswith("vocab: LLM answers: done, 3 items in ")
