"""The peer taggers: late matching and diverse beam search as pure logic, then every method on a small
real run (real encoder, the store over the BANKING77 sample, the tiny LLM: its answers are noise, so
these tests check behaviour, not quality)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from llm4tag.baselines import late_match, parse_tags
from llm4tag.config import settings_from_dict
from llm4tag.engines.beams import DiverseBeamSearch
from llm4tag.errors import ConfigError

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample" / "banking77"
VOCAB = ["card arrival", "top up", "exchange rate", "refund"]


def test_late_match_keeps_every_tag_a_phrase_reaches():
    phrases = ["card delivery", "late card", "fees"]
    sims = np.array(
        [
            [0.82, 0.10, 0.05, 0.20],
            [0.64, 0.12, 0.02, 0.49],
            [0.10, 0.30, 0.45, 0.51],
        ]
    )
    matches = late_match(sims, VOCAB, phrases, threshold=0.5, max_tags=5)
    assert [(m.tag, m.phrase) for m in matches] == [("card arrival", "card delivery"), ("refund", "fees")]
    assert matches[0].score == pytest.approx(0.82)
    assert late_match(sims, VOCAB, phrases, threshold=0.5, max_tags=1)[0].tag == "card arrival"
    assert late_match(sims, VOCAB, phrases, threshold=0.9, max_tags=5) == []
    assert late_match(np.zeros((0, 4)), VOCAB, [], 0.5, 5) == []


def test_late_match_ranks_by_agreement_across_beams():
    # Three answers (beams): "refund" is named by two of them, "card arrival" by one, more closely.
    phrases = ["card arrival", "money back", "refund please"]
    sims = np.array(
        [
            [0.95, 0.0, 0.0, 0.1],
            [0.0, 0.0, 0.0, 0.7],
            [0.0, 0.0, 0.0, 0.8],
        ]
    )
    matches = late_match(sims, VOCAB, phrases, 0.5, 5, answer_of=[0, 1, 2])
    assert [(m.tag, m.votes) for m in matches] == [("refund", 2), ("card arrival", 1)]
    assert matches[0].phrase == "refund please"


def test_generated_phrases_are_parsed_before_matching():
    assert parse_tags("Tags: card delivery, Late card.\nI hope these tags help you with the query.") == [
        "card delivery",
        "late card",
    ]


def _logprobs(rows):
    out = np.full((len(rows), 6), -20.0)
    for r, values in enumerate(rows):
        for token, p in values.items():
            out[r, token] = math.log(p)
    return out


def test_diverse_beam_search_penalises_what_earlier_groups_chose():
    end = 5
    # Two groups of one beam. The prompt's distribution favours token 1; with the penalty the second
    # group takes token 2 instead, without it both groups would say the same.
    first = _logprobs([{1: 0.6, 2: 0.3, 3: 0.1}])
    search = DiverseBeamSearch(2, 2, [end], diversity_penalty=2.0)
    sources, tokens = search.step(first)
    assert tokens == [1, 2] and sources == [0, 0]
    plain = DiverseBeamSearch(2, 2, [end], diversity_penalty=0.0)
    assert plain.step(first)[1] == [1, 1]
    # Next step: both rows end; the hypotheses keep their true (unpenalised) log-probabilities.
    sources, tokens = search.step(_logprobs([{end: 0.9, 3: 0.1}, {end: 0.9, 3: 0.1}]))
    assert search.done
    (g0,), (g1,) = search.results()
    assert g0 == [1] and g1 == [2]
    # Normalised by the length (2 tokens, the end included), as transformers does.
    assert search.groups[1].finished[0][0] == pytest.approx((math.log(0.3) + math.log(0.9)) / 2)


def test_diverse_beam_search_keeps_beams_per_group_and_reorders_rows():
    end = 5
    search = DiverseBeamSearch(4, 2, [end], diversity_penalty=1.0)
    sources, tokens = search.step(_logprobs([{1: 0.5, 2: 0.3, 3: 0.15, 4: 0.05}]))
    assert len(tokens) == 4 and sources == [0, 0, 0, 0]
    assert tokens[:2] == [1, 2]  # group 0: the two best
    assert tokens[2:] == [1, 3]  # group 1: token 2 penalised below token 3
    # Row 1 (group 0, second beam) is much likelier to continue than row 0: the rows are reordered.
    step = _logprobs([{end: 0.01, 3: 0.01}, {3: 0.9, 4: 0.09}, {3: 0.5, 4: 0.5}, {3: 0.5, 4: 0.5}])
    sources, tokens = search.step(step)
    assert sources[0] == 1
    with pytest.raises(ValueError, match="multiple"):
        DiverseBeamSearch(5, 2, [end])


def test_peer_config_is_data_and_typos_are_errors():
    settings = settings_from_dict({"peers": {"match_threshold": 0.6, "num_beams": 4, "num_beam_groups": 2}})
    assert settings.peers.match_threshold == 0.6
    assert "{content}" in settings.peers.prompts.generative  # defaults from prompts/peers.yaml
    for bad in (
        {"peers": {"beams": 4}},
        {"peers": {"num_beams": 5}},
        {"peers": {"prompts": {"generative": "{text}"}}},
        {"peers": {"prompts": {"tone": "x"}}},
        {"vocab": {"min_count": 0}},
        {"vocab": {"merge": 0.8}},
    ):
        with pytest.raises(ConfigError):
            settings_from_dict(bad)


# --- small real runs


@pytest.fixture(scope="module")
def tiny_engine(tiny_llm):
    from llm4tag.engines import LLMConfig, make_engine
    from llm4tag.errors import ModelError

    try:
        # One thread: with two, a tiny-model call ran 20x slower whenever other work shared the cores.
        engine = make_engine(LLMConfig(model="tiny", engine="transformers", batch_size=4, threads=1))
    except ModelError as exc:
        pytest.skip(f"tiny model not installed ({exc})")
    yield engine
    engine.close()


def _settings():
    return settings_from_dict(
        {
            "llm": {"model": "tiny"},
            "prompts": {"domain": "banking customer support", "item_kind": "customer query"},
            "pipeline": {"mode": "multi", "max_tags": 3},
            # Low enough that the tiny model's phrases reach some tag now and then.
            "peers": {"max_new_tokens": 12, "num_beams": 4, "num_beam_groups": 2, "match_threshold": 0.3},
        }
    )


def _queries(n: int):
    from llm4tag.data import read_items

    return read_items(SAMPLE / "queries.jsonl").items[:n]


@pytest.mark.slow
def test_diverse_beams_on_the_tiny_model(tiny_engine):
    messages = [{"role": "user", "content": "Name three fruits, separated by commas."}]
    answers = tiny_engine.generate_diverse([messages, messages], 6, num_beams=4, num_beam_groups=2)
    assert len(answers) == 2 and all(len(a) == 4 for a in answers)
    assert answers[0] == answers[1]  # deterministic
    assert all(isinstance(t, str) for t in answers[0])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["match", "taggpt-selective", "taggpt-generative", "betag"])
def test_each_peer_tags_the_sample(method, sample_store, tiny_engine):
    from llm4tag.baselines import open_baseline, tag_rows
    from llm4tag.evaluation.tagging import evaluate_tagging

    settings = _settings()
    tagger = open_baseline(method, settings, store_dir=sample_store, engine=tiny_engine)
    assert tagger.name == method and tagger.max_tags == 3
    items = _queries(2)
    rows = list(tag_rows(tagger, items, batch_size=2))
    assert [r["id"] for r in rows] == [i.id for i in items]
    vocabulary = {json.loads(x)["tag"] for x in (SAMPLE / "tags.jsonl").read_text().splitlines()}
    for row in rows:
        assert len(row["tags"]) <= 3
        assert len({t["tag"] for t in row["tags"]}) == len(row["tags"])
        for tag in row["tags"]:
            assert tag["tag"] in vocabulary
            assert 0.0 <= tag["confidence"] <= 1.0
        if method == "match":
            assert len(row["tags"]) == 3
            assert [t["confidence"] for t in row["tags"]] == sorted(
                (t["confidence"] for t in row["tags"]), reverse=True
            )
        if method in ("taggpt-generative", "betag"):
            assert all(t["source"] == "late-match" and t["confidence"] >= 0.3 for t in row["tags"])
            # The best matches under the threshold come along for accuracy-coverage curves.
            assert all(t["confidence"] < 0.3 for t in row["dropped"])
            if row["generated"]:
                assert len(row["dropped"]) == 3
            assert isinstance(row["generated"], list)
        if method == "betag":
            assert len(row["raw"]) == 4  # one answer per beam
    # The same metrics as our pipeline's rows.
    report = evaluate_tagging(
        {i.id: set(i.tags) for i in items}, {r["id"]: r["tags"] for r in rows}, task="multi"
    )
    assert report["items"] == 2


@pytest.mark.slow
def test_tag_cli_runs_peers_from_a_store_or_a_vocabulary_file(sample_store, tmp_path):
    from llm4tag.cli import main

    queries = SAMPLE / "queries.jsonl"
    out = tmp_path / "match.jsonl"
    argv = ["tag", "--method", "match", "--input", str(queries), "--output", str(out), "--limit", "3"]
    assert main([*argv, "--store", str(sample_store)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 3 and all(r["tags"] for r in rows)
    assert main(["eval", "--gold", str(queries), "--pred", str(out)]) == 0
    # A bare vocabulary (e.g. one `llm4tag vocab build` wrote): the same rows, encoded on the fly.
    out2 = tmp_path / "match2.jsonl"
    argv2 = [*argv[:5], "--output", str(out2), "--limit", "3", "--tags", str(SAMPLE / "tags.jsonl")]
    assert main([*argv2, "--config", str(_write_mode(tmp_path))]) == 0
    rows2 = [json.loads(x) for x in out2.read_text().splitlines()]
    assert [r["tags"][0]["tag"] for r in rows2] == [r["tags"][0]["tag"] for r in rows]
    # Usage errors: one line, exit code 2.
    assert main([*argv, "--store", str(sample_store), "--tags", str(SAMPLE / "tags.jsonl")]) == 2
    assert main(["tag", "--input", str(queries), "--output", str(out)]) == 2  # llm4tag needs a store
    assert main([*argv, "--tags", str(SAMPLE / "tags.jsonl"), "--bulk"]) == 2


def _write_mode(tmp_path: Path) -> Path:
    path = tmp_path / "single.yaml"
    path.write_text("pipeline: {mode: single}\n")
    return path
