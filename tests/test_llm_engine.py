"""The transformers engine with the real tiny model (SmolLM2-135M-Instruct): plumbing, not quality."""

from __future__ import annotations

import math

import pytest

from llm4tag.engines import ChoiceRequest, LLMConfig, YesNo, make_engine, yes_no_confidence
from llm4tag.errors import ModelError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(tiny_llm):
    engine = make_engine(LLMConfig(model="tiny", engine="transformers", batch_size=4))
    yield engine
    engine.close()


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


MESSY = (
    "card arrival",
    "c++",
    "devel::lang:perl",
    "a.b (x)",
    "Clothing > Women's Clothing > Lingerie, Sleep & Swimwear",
)


def test_choose_single_returns_one_candidate(engine):
    requests = [
        ChoiceRequest(ask(f"Which tag fits item {i}? Candidates: {', '.join(MESSY)}"), MESSY, 1)
        for i in range(5)
    ]
    answers = engine.choose(requests)
    assert len(answers) == 5
    for answer in answers:
        assert len(answer) == 1 and answer[0] in MESSY


def test_choose_multi_is_distinct_subset_within_max(engine):
    choices = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta")
    answers = engine.choose(
        [ChoiceRequest(ask(f"List tags for text {i}: {choices}"), choices, 3) for i in range(4)]
    )
    for answer in answers:
        assert 1 <= len(answer) <= 3
        assert len(set(answer)) == len(answer)
        assert set(answer) <= set(choices)


def test_choose_keeps_request_order_across_batches(engine):
    # Prompts of very different lengths are batched by length; answers must come back in order.
    requests = [
        ChoiceRequest(ask("Pick one. " + "filler " * n), ("only-a",) if n % 2 else ("only-b",), 1)
        for n in (1, 60, 3, 30, 5)
    ]
    assert engine.choose(requests) == [["only-a"], ["only-b"], ["only-a"], ["only-b"], ["only-a"]]


def reference_yes_no(engine, messages) -> YesNo:
    import torch

    """The paper's formula computed directly: log-softmax of the next-token logits, by hand."""
    ids = engine.render(messages)
    with torch.inference_mode():
        logits = engine.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
    logp = logits.log_softmax(-1)
    yes = torch.logsumexp(logp[engine.yes_ids], 0).item()
    no = torch.logsumexp(logp[engine.no_ids], 0).item()
    return YesNo(yes, no)


def test_yes_no_tokens_cover_leading_space_variants(engine):
    decoded = {engine.tokenizer.decode([t]) for t in engine.yes_ids + engine.no_ids}
    assert {"Yes", " Yes", "No", " No"} <= decoded


def test_score_matches_direct_computation_and_shared_prefix(engine):
    item = "Item: my new card still has not arrived after two weeks, what should I do?\n"
    prompts = [
        ask(item + f"Tag: {tag}\nIs the tag relevant? Answer Yes or No.")
        for tag in ("card arrival", "refund", "top up")
    ]
    other = ask("Item: how do I change my PIN?\nTag: change pin\nIs the tag relevant? Answer Yes or No.")
    scored = engine.score_yes_no([*prompts, other])
    cached_before = engine.stats.cached_tokens
    assert len(scored) == 4
    for messages, got in zip([*prompts, other], scored, strict=True):
        want = reference_yes_no(engine, messages)
        assert got.yes == pytest.approx(want.yes, abs=2e-3)
        assert got.no == pytest.approx(want.no, abs=2e-3)
        assert 0.0 < got.confidence < 1.0
    engine.score_yes_no(prompts)
    assert engine.stats.cached_tokens > cached_before  # the three tags shared the item's prefix


def test_confidence_formula_against_hand_computed_values():
    # exp(s_yes) / (exp(s_yes) + exp(s_no)) for hand-picked logits.
    assert yes_no_confidence(2.0, 0.0) == pytest.approx(math.exp(2) / (math.exp(2) + 1))
    assert yes_no_confidence(-1.0, -1.0) == pytest.approx(0.5)
    assert yes_no_confidence(0.0, 3.0) == pytest.approx(1 / (1 + math.exp(3)))
    # Stable far out in the tails, where a naive exp overflows.
    assert yes_no_confidence(1000.0, 0.0) == pytest.approx(1.0)
    assert yes_no_confidence(0.0, 1000.0) == pytest.approx(0.0, abs=1e-300)
    assert YesNo(math.log(0.3), math.log(0.1)).confidence == pytest.approx(0.75)


def test_generate_free_text(engine):
    texts = engine.generate([ask("Say hello."), ask("Name a colour.")], max_tokens=8)
    assert len(texts) == 2 and all(isinstance(t, str) and t for t in texts)


def test_stats_count_work(engine):
    before = engine.stats.prompt_tokens
    engine.choose([ChoiceRequest(ask("Pick."), ("x", "y"), 1)])
    assert engine.stats.prompt_tokens > before
    assert engine.stats.calls["choose"] >= 1


def test_overlong_prompt_is_refused(engine):
    with pytest.raises(ModelError, match="max_model_len"):
        engine.score_yes_no([ask("word " * 5000)])


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="unknown model"):
        make_engine(LLMConfig(model=str(tmp_path / "nowhere"), engine="transformers"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"no config\.json"):
        make_engine(LLMConfig(model=str(tmp_path / "empty"), engine="transformers"))
