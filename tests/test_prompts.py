"""Prompt templates (paper figures 3-5) as data: rendering, clipping, validation."""

import pytest

from llm4tag.config import settings_from_dict
from llm4tag.errors import ConfigError
from llm4tag.prompts import PromptConfig, Prompts, RetrievedSample


def prompts(**overrides) -> Prompts:
    return Prompts(PromptConfig(domain="banking customer support", item_kind="customer query", **overrides))


def test_basic_template_when_no_knowledge():
    system, user = prompts().generation("where is my card?", ["card arrival", "card linking"], 1)
    assert system == {"role": "system", "content": "You are a banking customer support tag bot."}
    assert user["role"] == "user"
    text = user["content"]
    assert text.startswith("Customer query: where is my card?")
    assert "Candidate tags: card arrival, card linking" in text
    assert "Select the most relevant tag" in text
    assert "Domain-specific knowledge" not in text


def test_retrieval_template_shows_samples_with_incorrect_tags_and_snippets():
    samples = [RetrievedSample("my card never came", ("card arrival",), ("card linking",))]
    _, user = prompts().generation(
        "where is my card?",
        ["card arrival"],
        3,
        samples=samples,
        snippets=["card arrival: waiting for a card"],
    )
    text = user["content"]
    assert "(1) Similar customer queries and their tags:" in text
    assert '- "my card never came" -> card arrival; not: card linking' in text
    assert "- card arrival: waiting for a card" in text
    assert "at most 3" in text and "separated by commas" in text


def test_retrieval_template_with_nothing_retrieved_says_none():
    _, user = prompts().generation("x", ["a"], 1, samples=[], snippets=[])
    assert user["content"].count("- (none)") == 2


def test_long_texts_are_clipped():
    p = prompts(max_content_chars=20, max_sample_chars=10)
    _, user = p.generation(
        "word " * 50, ["a"], 1, samples=[RetrievedSample("long " * 50, ("a",))], snippets=[]
    )
    text = user["content"]
    assert "word word word word…" in text
    assert '"long long…"' in text


def test_judgment_puts_content_before_tag_for_prefix_sharing():
    p = prompts()
    a = p.judgment("my card is late", "card arrival", "The card has not arrived")
    b = p.judgment("my card is late", "exchange rate", None)
    assert a[0]["content"] == "You are a banking customer support tag relevance judgment bot."
    assert a[1]["content"].startswith(
        "Customer query: my card is late\n\nTag: card arrival (The card has not arrived)"
    )
    assert b[1]["content"].startswith("Customer query: my card is late\n\nTag: exchange rate\n")
    assert a[1]["content"].endswith('Answer with "Yes" or "No".')


def test_templates_are_editable_per_domain():
    settings = settings_from_dict(
        {"prompts": {"domain": "news", "item_kind": "article", "judgment": "Does {tag} fit {content}?"}}
    )
    _, user = Prompts(settings.prompts).judgment("Rates rise", "economy")
    assert user["content"] == "Does economy fit Rates rise?"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"judgment": "{content} {typo}"}, "unknown placeholder"),
        ({"system": "{domain"}, "not a valid template"),
        ({"bogus": "x"}, "unknown setting"),
    ],
)
def test_bad_templates_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        settings_from_dict({"prompts": overrides})


def test_a_continuation_judgment_extends_the_generation_conversation():
    p = prompts()
    generation = p.generation("my card is late", ["card arrival", "refund"], 1)
    judged = p.judgment(
        "my card is late", "card arrival", "The card has not arrived", (generation, "card arrival")
    )
    # The generation prompt unchanged, then the answer given, then only the question.
    assert judged[: len(generation)] == generation
    assert judged[len(generation)] == {"role": "assistant", "content": "card arrival"}
    assert judged[-1] == {
        "role": "user",
        "content": 'Is the customer query relevant to the tag "card arrival" (The card has not arrived)? '
        'Answer with "Yes" or "No".',
    }


def test_layout_auto_judges_in_context_only_where_the_engine_keeps_prefixes():
    from llm4tag.config import Settings
    from llm4tag.engines import LLMConfig

    def judges_in_context(llm, prompts, calibrate=True):
        settings = Settings(llm=llm, prompts=prompts).with_overrides({"pipeline": {"calibrate": calibrate}})
        assert settings.judges_with_generation == (calibrate and settings.judgments_in_context)
        return settings.judgments_in_context

    auto, paper = PromptConfig(), PromptConfig(layout="paper")
    assert judges_in_context(LLMConfig(engine="llamacpp"), auto)
    assert judges_in_context(LLMConfig(engine="llamacpp"), auto, calibrate=False)
    assert judges_in_context(LLMConfig(engine="vllm"), auto)
    assert not judges_in_context(LLMConfig(engine="vllm", enable_prefix_caching=False), auto)
    assert not judges_in_context(LLMConfig(engine="transformers"), auto)
    assert not judges_in_context(LLMConfig(engine="llamacpp"), paper)
    assert judges_in_context(LLMConfig(engine="transformers"), PromptConfig(layout="continuation"))
    with pytest.raises(ConfigError, match=r"prompts\.layout"):
        PromptConfig.load({"layout": "sideways"})
