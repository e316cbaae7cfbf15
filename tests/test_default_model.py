"""Opt-in checks with the default model (Qwen2.5-Coder-1.5B-Instruct, ~6 GB in fp32, slow on CPU).

Run with LLM4TAG_TEST_DEFAULT_MODEL=1 once `llm4tag models install default` is done; CI runs the
tiny-model tests instead. These check that the Yes/No signal and the constrained choice are
meaningful on a real model, which the tiny model (noise) cannot show.
"""

from __future__ import annotations

import os

import pytest

from llm4tag.engines import ChoiceRequest, LLMConfig, make_engine
from llm4tag.prompts import PromptConfig, Prompts

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("LLM4TAG_TEST_DEFAULT_MODEL") != "1", reason="set LLM4TAG_TEST_DEFAULT_MODEL=1 to run"
    ),
]


@pytest.fixture(scope="module")
def engine(default_llm):
    engine = make_engine(LLMConfig(model="default", engine="transformers", batch_size=4))
    yield engine
    engine.close()


PROMPTS = Prompts(PromptConfig(domain="banking customer support", item_kind="customer query"))


def test_yes_no_separates_relevant_from_irrelevant_tags(engine):
    query = "I ordered a new card two weeks ago and it still has not arrived."
    pairs = [
        ("card arrival", True),
        ("exchange rate", False),
        ("lost or stolen card", False),
        ("top up failed", False),
    ]
    scores = engine.score_yes_no([PROMPTS.judgment(query, tag) for tag, _ in pairs])
    relevant = [s.confidence for s, (_, ok) in zip(scores, pairs, strict=True) if ok]
    irrelevant = [s.confidence for s, (_, ok) in zip(scores, pairs, strict=True) if not ok]
    assert min(relevant) > 0.5 > max(irrelevant)


def test_constrained_choice_picks_the_obvious_tag(engine):
    candidates = ["exchange rate", "card arrival", "top up failed", "change pin"]
    messages = PROMPTS.generation("How do I change the PIN of my card?", candidates, 1)
    assert engine.choose([ChoiceRequest(messages, tuple(candidates), 1)]) == [["change pin"]]
