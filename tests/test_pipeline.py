"""The tagging pipeline end to end on the shipped BANKING77 sample, with the real encoder, graph store,
knowledge bases and the tiny LLM (its answers are noise: these tests check behaviour, not quality)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm4tag.cli import main
from llm4tag.config import Settings, settings_from_dict
from llm4tag.data import read_items
from llm4tag.pipeline import TaggingPipeline

pytestmark = pytest.mark.slow

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample" / "banking77"
RULES = SAMPLE.parent / "knowledge" / "banking77_rules.md"


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_llm, encoder) -> Path:
    folder = tmp_path_factory.mktemp("pipeline") / "store"
    argv = ["build", "--items", str(SAMPLE / "train.jsonl"), "--tags", str(SAMPLE / "tags.jsonl")]
    assert main([*argv, "--store", str(folder), "--knowledge", str(RULES)]) == 0
    return folder


@pytest.fixture(scope="module")
def pipeline(store) -> TaggingPipeline:
    settings = settings_from_dict({"llm": {"model": "tiny", "batch_size": 4}, "pipeline": {"batch_size": 4}})
    return TaggingPipeline.open(store, settings)


def queries(n: int):
    return read_items(SAMPLE / "queries.jsonl").items[:n]


def test_build_writes_knowledge_bases(store):
    assert (store / "knowledge" / "samples" / "CURRENT").exists()
    assert (store / "knowledge" / "domain" / "CURRENT").exists()


def test_rows_carry_tags_from_candidates_with_confidence_and_provenance(pipeline):
    items = queries(4)
    rows = pipeline.tag(items, with_candidates=True, with_dropped=True)
    assert [r["id"] for r in rows] == [i.id for i in items]
    assert pipeline.mode == "single"  # BANKING77: one intent per query
    for row in rows:
        candidates = {c["tag"] for c in row["candidates"]}
        assert len(row["candidates"]) == 20
        judged = row["tags"] + row["dropped"]
        assert len(judged) == 1  # single-tag mode: the generator picked exactly one candidate
        assert row["generated"] == [judged[0]["tag"]]
        for tag in judged:
            assert tag["tag"] in candidates
            assert 0.0 <= tag["confidence"] <= 1.0
            assert tag["source"] in {"c2t", "c2c2t", "c2t+c2c2t", "fill"}
        for tag in row["tags"]:
            assert tag["confidence"] >= 0.5
        for tag in row["dropped"]:
            assert tag["confidence"] < 0.5
        # Retrieved knowledge: up to 3 samples (never the item itself) and up to 3 snippets.
        assert 1 <= len(row["knowledge"]["samples"]) <= 3
        assert row["id"] not in row["knowledge"]["samples"]
        assert len(row["knowledge"]["snippets"]) <= 3
    assert set(pipeline.times.seconds) >= {"encode", "recall", "generate", "calibrate"}


def test_prompts_hold_retrieved_knowledge(pipeline):
    items = queries(2)
    vectors = pipeline.recaller.encode(items)
    candidates = [[c.tag for c in cands] for cands in pipeline.recaller.store.recall(vectors)]
    messages, sample_ids, snippet_ids = pipeline.generator.prompts_for(
        [i.id for i in items], [i.text for i in items], vectors, candidates, 1
    )
    text = messages[0][1]["content"]
    assert "Similar contents and their tags" in text
    assert all(s.replace("_", " ") in text for s in [pipeline.samples.get(sample_ids[0][0]).correct[0]])
    assert sample_ids[0] and snippet_ids[0] is not None


def test_appended_sample_is_retrieved_at_once(pipeline):
    from llm4tag.knowledge import Sample

    item = queries(1)[0]
    vector = pipeline.recaller.encode([item])
    fresh = Sample(
        id="feedback-1",
        text=item.text,
        correct=("card_arrival",),
        incorrect=("card_linking",),
        source="feedback",
    )
    pipeline.samples.add([fresh], vector, durable=False)
    [hits] = pipeline.samples.search(vector, n=3, exclude_ids=[{item.id}])
    assert hits[0].sample.id == "feedback-1"


def test_without_calibration_keeps_every_generated_tag(store):
    settings = settings_from_dict(
        {"llm": {"model": "tiny"}, "pipeline": {"calibrate": False, "mode": "multi", "max_tags": 3}}
    )
    pipeline = TaggingPipeline.open(store, settings)
    rows = pipeline.tag(queries(2))
    for row in rows:
        assert 1 <= len(row["tags"]) <= 3
        assert [t["tag"] for t in row["tags"]] == row["generated"]
        assert all(t["confidence"] is None for t in row["tags"])


def test_unconstrained_generation_is_matched_to_candidates(store):
    settings = settings_from_dict(
        {"llm": {"model": "tiny"}, "pipeline": {"constrained": False, "num_samples": 0}}
    )
    pipeline = TaggingPipeline.open(store, settings)
    rows = pipeline.tag(queries(2), with_candidates=True)
    for row in rows:
        assert isinstance(row["raw"], str)
        candidates = {c["tag"] for c in row["candidates"]}
        assert set(row["generated"]) <= candidates


def test_cli_tag_eval_and_write_back(store, tmp_path, capsys):
    out = tmp_path / "tagged.jsonl"
    copy = tmp_path / "store"
    import shutil

    shutil.copytree(store, copy)
    argv = ["tag", "--store", str(copy), "--input", str(SAMPLE / "queries.jsonl"), "--output", str(out)]
    assert main([*argv, "--model", "tiny", "--limit", "3", "--dropped", "--write-back"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["items"] == 3 and summary["mode"] == "single"
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3
    # Written back: the tagged items are now contents of the saved store.
    from llm4tag.recaller import Recaller

    recaller = Recaller.open(copy)
    assert all(r["id"] in recaller.store.graph.content_pos for r in rows)
    plots = tmp_path / "plots"
    assert (
        main(
            [
                "eval",
                "--gold",
                str(SAMPLE / "queries.jsonl"),
                "--pred",
                str(out),
                "--plots",
                str(plots),
                "--output",
                str(tmp_path / "m.json"),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "task: single" in printed and "precision" in printed
    assert (plots / "accuracy_coverage.png").read_bytes()[:4] == b"\x89PNG"
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["items"] == 40 and 0.0 <= report["coverage@1"] <= 3 / 40


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_tag_bad_inputs_exit_2(store, tmp_path, capsys, monkeypatch):
    base = ["tag", "--store", str(store), "--output", str(tmp_path / "o.jsonl")]
    good = str(SAMPLE / "queries.jsonl")
    assert "unknown model" in _error(capsys, [*base, "--input", good, "--model", str(tmp_path / "none")])
    with monkeypatch.context() as patch:
        patch.setenv("LLM4TAG_HOME", str(tmp_path / "no-models"))
        assert "is not installed: run `llm4tag models install" in _error(capsys, [*base, "--input", good])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert "empty" in _error(capsys, [*base, "--input", str(empty), "--model", "tiny"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "1", "text": ""}\n')
    assert "text" in _error(capsys, [*base, "--input", str(bad), "--model", "tiny"])
    config = tmp_path / "c.yaml"
    config.write_text("pipeline:\n  threshold: 2\n")
    assert "threshold" in _error(capsys, [*base, "--input", good, "--config", str(config)])
    assert "--limit" in _error(capsys, [*base, "--input", good, "--limit", "0"])
    missing = _error(
        capsys,
        [
            "tag",
            "--store",
            str(tmp_path / "nostore"),
            "--input",
            good,
            "--output",
            str(tmp_path / "o.jsonl"),
            "--model",
            "tiny",
        ],
    )
    assert "nostore" in missing


def test_default_settings_have_paper_defaults():
    s = Settings()
    assert (s.pipeline.num_samples, s.pipeline.num_snippets, s.pipeline.threshold) == (3, 3, 0.5)
    assert s.graph.recall.num_candidates == 20


def test_feedback_is_durable_retrievable_and_in_the_graph(store, tmp_path, capsys):
    import shutil

    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    corrections = tmp_path / "fb.jsonl"
    corrections.write_text(
        json.dumps(
            {
                "id": "fb-1",
                "text": "my replacement card still has not shown up",
                "tags": ["card_arrival"],
                "incorrect_tags": ["card_delivery_estimate"],
            }
        )
        + "\n"
    )
    assert main(["feedback", "--store", str(copy), "--input", str(corrections)]) == 0
    assert json.loads(capsys.readouterr().out)["feedback_items"] == 1
    # A fresh process view: reload everything from disk.
    settings = settings_from_dict({"llm": {"model": "tiny"}})
    reopened = TaggingPipeline.open(copy, settings, load_engine=False)
    sample = reopened.samples.get("fb-1")
    assert sample.correct == ("card_arrival",) and sample.incorrect == ("card_delivery_estimate",)
    assert "fb-1" in reopened.recaller.store.graph.content_pos
    from llm4tag.data import Item

    probe = Item(id="probe", text="my replacement card still has not shown up", tags=None)
    [hits] = reopened.samples.search(reopened.recaller.encode([probe]), n=1, exclude_ids=[{"probe"}])
    assert hits[0].sample.id == "fb-1"

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "fb-2", "text": "x", "tags": ["no_such_intent"]}) + "\n")
    assert "unknown tag" in _error(capsys, ["feedback", "--store", str(copy), "--input", str(bad)])
