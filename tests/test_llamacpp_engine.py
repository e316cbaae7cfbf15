"""The llama.cpp engine on the real tiny model's GGUF (SmolLM2-135M-Instruct, Q4_1): plumbing, not quality."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llm4tag.engines import ChoiceRequest, LLMConfig, make_engine
from llm4tag.errors import ModelError
from llm4tag.llm_weights import resolve_llm

pytestmark = pytest.mark.slow  # model: from the tiny_llm fixture (tests/conftest.py)
pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def engine(tiny_llm):
    try:
        resolve_llm("tiny", fmt="gguf")
    except ModelError as exc:
        pytest.skip(f"tiny model's GGUF not installed ({exc}); run `llm4tag models install tiny`")
    engine = make_engine(LLMConfig(model="tiny", engine="llamacpp", threads=1, max_model_len=2048))
    yield engine
    engine.close()


def ask(text: str, system: str | None = None) -> list[dict]:
    messages = [{"role": "system", "content": system}] if system else []
    return [*messages, {"role": "user", "content": text}]


# Regex specials, multi-token spellings, a shared first word ("card ..."), a choice that is a prefix
# of another ("c", "c++").
MESSY = (
    "card arrival",
    "card arrival delay",
    "c",
    "c++",
    "devel::lang:perl",
    "a.b (x)|[y]*",
    "Clothing > Women's Clothing > Lingerie, Sleep & Swimwear",
)


def test_choose_single_returns_one_candidate(engine):
    requests = [
        ChoiceRequest(ask(f"Which tag fits item {i}? Candidates: {', '.join(MESSY)}"), MESSY, 1)
        for i in range(6)
    ]
    for answer in engine.choose(requests):
        assert len(answer) == 1 and answer[0] in MESSY


def test_choose_multi_is_a_distinct_subset_within_max(engine):
    for k in (2, 3, 5):
        answers = engine.choose(
            [ChoiceRequest(ask(f"List up to {k} tags for text {i}: {MESSY}"), MESSY, k) for i in range(4)]
        )
        for answer in answers:
            assert 1 <= len(answer) <= k
            assert len(set(answer)) == len(answer)
            assert set(answer) <= set(MESSY)


def test_choose_answers_follow_the_prompt(engine):
    # One candidate each: the automaton leaves the model nothing to choose, and order is kept.
    requests = [ChoiceRequest(ask("Pick one. " + "filler " * n), (f"only-{n}",), 1) for n in (1, 60, 3)]
    assert engine.choose(requests) == [["only-1"], ["only-60"], ["only-3"]]


def fresh_scores(engine, prompts):
    """Each prompt computed from an empty context: the engine's own full-prompt logits."""
    out = []
    for messages in prompts:
        engine.forget_states()
        out.extend(engine.score_yes_no([messages]))
    engine.forget_states()
    return out


ITEM = "Item: my new card still has not arrived after two weeks, what should I do?\n"
JUDGED = [
    ask(ITEM + f"Tag: {tag}\nIs the tag relevant? Answer Yes or No.")
    for tag in ("card arrival", "refund", "top up")
]


def test_shared_prefix_scoring_equals_separate_full_prompt_scoring(engine):
    reference = fresh_scores(engine, JUDGED)
    cached_before = engine.stats.cached_tokens
    shared = engine.score_yes_no(JUDGED)
    assert engine.stats.cached_tokens - cached_before >= 2 * 20  # tags 2 and 3 reused the item's tokens
    for got, want in zip(shared, reference, strict=True):
        assert got.yes == pytest.approx(want.yes, abs=2e-3)
        assert got.no == pytest.approx(want.no, abs=2e-3)
        assert 0.0 < got.confidence < 1.0


def test_a_saved_state_restores_to_the_same_scores(engine):
    # A long generation-like prompt, then other work that replaces the live context, then judgments
    # that share the first prompt's beginning: they start from its saved state.
    system = "You are a content tag bot."
    head = "Content: " + "the quick brown fox jumps over the lazy dog " * 12
    engine.forget_states()
    engine.choose(
        [ChoiceRequest(ask(head + "\nCandidate tags: fox, dog\nPick one.", system), ("fox", "dog"))]
    )
    engine.score_yes_no([ask("Something else entirely, long enough to replace the context. " * 4)])
    judged = [ask(head + f"\nTag: {tag}\nRelevant? Answer Yes or No.", system) for tag in ("fox", "dog")]
    hits = engine.states.hits
    restored = engine.score_yes_no(judged)
    assert engine.states.hits == hits + 1
    for got, want in zip(restored, fresh_scores(engine, judged), strict=True):
        assert got.yes == pytest.approx(want.yes, abs=2e-3)
        assert got.no == pytest.approx(want.no, abs=2e-3)


def test_an_items_confidence_does_not_depend_on_the_batch_it_shared(sample_store):
    # Judgments continue the generation conversation: judged right after the item's own generation
    # (live context) or after other items' (a restored state), they start from the same computed
    # state. Served items are batched by arrival, so served and in-process rows agree only so.
    from llm4tag.config import load_settings
    from llm4tag.data import read_items
    from llm4tag.pipeline import TaggingPipeline

    repo = Path(__file__).resolve().parents[1]
    settings = load_settings(repo / "configs" / "banking77.yaml").with_overrides(
        {"llm": {"model": "tiny", "engine": "llamacpp", "threads": 1, "batch_size": 4}}
    )
    items = read_items(repo / "data" / "sample" / "banking77" / "queries.jsonl").items[3:6]
    pipeline = TaggingPipeline.open(sample_store, settings)
    batched = pipeline.tag(items)
    alone = [row for item in items for row in pipeline.tag([item])]
    for a, b in zip(batched, alone, strict=True):
        assert [(t["tag"], t["confidence"]) for t in a["tags"]] == [
            (t["tag"], t["confidence"]) for t in b["tags"]
        ]
        assert a["generated"] == b["generated"]


def test_state_cache_stays_within_its_budget():
    from llm4tag.engines.llamacpp_engine import PrefixStates

    states = PrefixStates(capacity=100)
    for i in range(10):
        states.add("", np.arange(i, i + 5, dtype=np.intc), bytes(30))
    assert states.size <= 100 and len(states.entries) == 3
    best, shared = states.best("", np.arange(9, 20, dtype=np.intc))
    assert shared == 5 and best is not None
    assert states.best("other-adapter", np.arange(9, 20, dtype=np.intc)) == (None, 0)


def test_yes_no_variants_are_single_tokens(engine):
    pieces = {engine.llm.detokenize([t]).decode() for t in engine.yes_ids + engine.no_ids}
    assert {"Yes", "No"} <= {p.strip() for p in pieces}


def test_generate_free_text_and_stats(engine):
    before = engine.stats.prompt_tokens
    texts = engine.generate([ask("Say hello."), ask("Name a colour.")], max_tokens=8)
    assert len(texts) == 2 and all(isinstance(t, str) and t for t in texts)
    assert engine.stats.prompt_tokens > before and engine.stats.calls["generate"] >= 2


def test_diverse_beams_are_refused_with_a_clear_error(engine):
    with pytest.raises(ModelError, match=r"no diverse beam search.*transformers"):
        engine.generate_diverse([ask("Tags?")])


def test_overlong_prompt_is_refused(engine):
    with pytest.raises(ModelError, match="max_model_len"):
        engine.score_yes_no([ask("word " * 5000)])


def test_bad_model_paths_are_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="unknown model"):
        make_engine(LLMConfig(model=str(tmp_path / "nowhere.gguf"), engine="llamacpp"))
    (tmp_path / "folder").mkdir()
    with pytest.raises(ModelError, match=r"reads a \.gguf file"):
        make_engine(LLMConfig(model=str(tmp_path / "folder"), engine="llamacpp"))
    (tmp_path / "fake.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(ModelError, match="not a GGUF file"):
        make_engine(LLMConfig(model=str(tmp_path / "fake.gguf"), engine="llamacpp"))
    (tmp_path / "torn.gguf").write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(ModelError, match="cannot load"):
        make_engine(LLMConfig(model=str(tmp_path / "torn.gguf"), engine="llamacpp"))


# -- adapters ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def random_adapter(tmp_path_factory):
    """A LoRA adapter on every projection of the tiny model with random, large B weights, so that its
    effect dwarfs the difference between llama.cpp's quantised kernels and transformers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(resolve_llm("tiny"), dtype=torch.float32)
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    torch.manual_seed(0)  # PEFT draws lora_A at random
    model = get_peft_model(base, config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape) * 0.3)
    out = tmp_path_factory.mktemp("adapter") / "generator"
    model.save_pretrained(out)
    (out / "training_manifest.json").write_text(json.dumps({"role": "generator"}))
    return out, model


def next_token_logprobs_hf(model, tokens: list[int]) -> np.ndarray:
    import torch

    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([tokens])).logits[0, -1].float()
    return logits.log_softmax(-1).numpy()


def next_token_logprobs_llama(engine, tokens: list[int]) -> np.ndarray:
    engine.forget_states()
    logits = engine._prefill(tokens).astype(np.float64)
    return logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()


def test_a_peft_adapter_is_converted_once_and_changes_llamacpp_as_it_changes_transformers(
    engine, random_adapter
):
    out, peft_model = random_adapter
    tokens = engine.render(ask("Which tag fits: my card has not arrived? Answer with one word."))
    base_llama = next_token_logprobs_llama(engine, tokens)
    with peft_model.disable_adapter():
        base_hf = next_token_logprobs_hf(peft_model, tokens)
    tuned_hf = next_token_logprobs_hf(peft_model, tokens)

    info = engine.adapters.load("generator", out)
    converted = list(out.glob("adapter_model.*.gguf"))
    assert len(converted) == 1 and info.path == str(out)
    with engine.adapters.use("generator"):
        tuned_llama = next_token_logprobs_llama(engine, tokens)
    # The adapter moves the two engines' next-token distributions the same way and as far (measured:
    # correlation 0.995; without the query/key permutation 0.83, and about 0 for a q/k-only adapter).
    delta_hf, delta_llama = tuned_hf - base_hf, tuned_llama - base_llama
    top = np.argsort(-base_hf)[:2000]
    assert np.corrcoef(delta_hf[top], delta_llama[top])[0, 1] > 0.97
    assert 0.8 < np.abs(delta_llama[top]).mean() / np.abs(delta_hf[top]).mean() < 1.25

    # Loaded again: the cached conversion is reused, not rewritten.
    mtime = converted[0].stat().st_mtime_ns
    engine.adapters.load("generator", out)
    assert converted[0].stat().st_mtime_ns == mtime
    # The calibrator role runs the base model; dropping the adapter brings the base back.
    with engine.adapters.use("calibrator"):
        assert next_token_logprobs_llama(engine, tokens) == pytest.approx(base_llama, abs=2e-3)
    engine.adapters.load("generator", None)
    with engine.adapters.use("generator"):
        assert next_token_logprobs_llama(engine, tokens) == pytest.approx(base_llama, abs=2e-3)
    with pytest.raises(ModelError, match="generator adapter, not a calibrator"):
        engine.adapters.load("calibrator", out)


def test_a_build_for_a_newer_cpu_is_refused_before_it_can_crash(tmp_path):
    from llm4tag.engines.llamacpp_engine import check_cpu

    info = "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | FMA = 1 | AVX512 = 1 | AVX512_VNNI = 1 | OPENMP = 1 | "
    newer = tmp_path / "cpuinfo-new"
    newer.write_text("processor\t: 0\nflags\t\t: fpu sse3 avx avx2 fma avx512f avx512_vnni\n")
    check_cpu(info, str(newer))
    older = tmp_path / "cpuinfo-old"
    older.write_text("processor\t: 0\nflags\t\t: fpu sse3 avx avx2 fma\n")
    with pytest.raises(ModelError, match=r"AVX512, AVX512_VNNI, which this CPU lacks.*LLAMA_PORTABLE"):
        check_cpu(info, str(older))
