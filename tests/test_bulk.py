"""Bulk tagging on Ray Data (`llm4tag tag --output DIR/`): real local Ray, real encoder, the tiny LLM.

The tiny LLM's answers are noise, so these tests check plumbing: the bulk rows equal the in-process
pipeline's rows for the same items and settings, a killed job resumes without losing or repeating an
item, and a bad input file fails with one line before any work starts.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import IN_SCOPE, OUT_OF_SCOPE

from llm4tag.cli import main

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample" / "banking77"
REPO = Path(__file__).resolve().parents[1]
# Batches of 4 in every stage and in process: the LLM pads and sorts within a batch, so equal rows
# need equal batches. One file per batch makes the resume test's kill land between batches.
SETTINGS = {
    "llm": {"model": "tiny", "batch_size": 4},
    "pipeline": {"batch_size": 4},
    "bulk": {
        "recall": {"batch_size": 4},
        "generate": {"batch_size": 4},
        "calibrate": {"batch_size": 4},
        "rows_per_file": 4,
    },
}


def _queries(n: int) -> list[dict]:
    rows = [json.loads(line) for line in (SAMPLE / "queries.jsonl").read_text().splitlines() if line]
    return rows[:n]


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bulk") / "settings.yaml"
    path.write_text(yaml.safe_dump(SETTINGS))
    return path


@pytest.fixture(scope="module")
def expected(sample_store) -> dict[str, dict]:
    """The in-process pipeline's rows for the first 24 queries (the first 12 are batches 1-3)."""
    from llm4tag.config import settings_from_dict
    from llm4tag.data import read_items
    from llm4tag.pipeline import TaggingPipeline

    items = read_items(SAMPLE / "queries.jsonl").items[:24]
    pipeline = TaggingPipeline.open(sample_store, settings_from_dict(SETTINGS))
    return {row["id"]: row for row in pipeline.tag_rows(items)}


def _same(a, b) -> bool:
    """Equal up to float representation (the confidences are rounded to 6 places on both sides)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, abs_tol=1e-5)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _check_rows(folder: Path, expected: dict[str, dict], n: int) -> None:
    from cluster.bulk_files import read_output

    rows = read_output(folder)
    ids = [row["id"] for row in rows]
    assert sorted(ids) == sorted(set(ids)), "an item was written twice"
    assert set(ids) == {q["id"] for q in _queries(n)}
    for row in rows:
        assert _same(row, expected[row["id"]]), (row, expected[row["id"]])


@pytest.mark.slow
def test_bulk_rows_equal_the_in_process_pipeline(ray_cluster, sample_store, expected, tmp_path):
    from cluster.bulk import run_bulk
    from cluster.bulk_files import output_files
    from llm4tag.config import settings_from_dict

    source = tmp_path / "items.parquet"
    pq.write_table(pa.Table.from_pylist(_queries(12)), source)
    report = run_bulk(source, tmp_path / "out", sample_store, settings_from_dict(SETTINGS))
    assert (report.input, report.skipped_done, report.tagged) == (12, 0, 12)
    _check_rows(tmp_path / "out", expected, 12)
    schema = pq.read_schema(output_files(tmp_path / "out")[0])
    # One row shape with or without a ranker (docs/usage.md "Output rows").
    assert schema.names == ["id", "tags", "route", "knowledge", "generated", "no_tag"]
    assert schema.field("tags").type.value_type.names == [
        "tag",
        "confidence",
        "source",
        "by",
        "ranker",
        "yes",
        "recall_score",
        "via",
    ]


def _tree(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.mark.slow
def test_killed_job_resumes_without_losing_or_repeating_items(
    ray_cluster, sample_store, expected, config, tmp_path, capsys
):
    import psutil

    from cluster.bulk_files import output_files

    source = tmp_path / "items.parquet"
    pq.write_table(pa.Table.from_pylist(_queries(24)), source)
    out = tmp_path / "out"
    argv = ["tag", "--store", str(sample_store), "--input", str(source), "--output", f"{out}/"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local cluster
    job = subprocess.Popen(
        [sys.executable, "-m", "llm4tag", *argv, "--config", str(config)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    children: dict[int, psutil.Process] = {}
    try:
        deadline = time.monotonic() + 240
        while not (out.is_dir() and output_files(out)):
            assert job.poll() is None, "the job ended before writing its first file"
            assert time.monotonic() < deadline, "no output file within 240 s"
            children.update((p.pid, p) for p in _tree(job.pid))
            time.sleep(0.2)
        children.update((p.pid, p) for p in _tree(job.pid))
        assert job.poll() is None, "the job finished before it could be interrupted"
        job.send_signal(signal.SIGKILL)
        job.wait(30)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait(30)
        # The Ray cluster the job started (GCS, raylet, workers) dies with its driver; anything that
        # outlived it is killed here, by pid: the session's own cluster is not among them.
        _, alive = psutil.wait_procs(list(children.values()), timeout=15)
        for proc in alive:
            proc.kill()
        psutil.wait_procs(alive, timeout=15)
    written = {row["id"] for path in output_files(out) for row in pq.read_table(path).to_pylist()}
    assert 0 < len(written) < 24

    capsys.readouterr()
    assert main([*argv, "--config", str(config)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["input"] == 24
    assert report["skipped_done"] == len(written)
    assert report["tagged"] == 24 - len(written)
    assert not list(out.glob(".*.tmp")), "a temporary file of the killed job was left behind"
    _check_rows(out, expected, 24)

    files = output_files(out)
    assert main([*argv, "--config", str(config)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (report["skipped_done"], report["tagged"]) == (24, 0)
    assert output_files(out) == files


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_bad_bulk_input_fails_with_one_line(tmp_path, capsys):
    store = tmp_path / "store"
    store.mkdir()
    base = ["tag", "--store", str(store), "--bulk"]
    good = tmp_path / "items.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["x", "y"]}), good)

    message = _error(
        capsys, [*base, "--input", str(tmp_path / "missing.parquet"), "--output", f"{tmp_path}/o/"]
    )
    assert "missing.parquet" in message and "does not exist" in message

    csv = tmp_path / "items.csv"
    csv.write_text("id,text\na,x\n")
    assert "Parquet" in _error(capsys, [*base, "--input", str(csv), "--output", str(tmp_path / "o")])

    not_parquet = tmp_path / "broken.parquet"
    not_parquet.write_text("not parquet")
    assert "cannot read Parquet" in _error(
        capsys, [*base, "--input", str(not_parquet), "--output", f"{tmp_path}/o/"]
    )

    a_file = tmp_path / "out.txt"
    a_file.write_text("")
    assert "is a file" in _error(capsys, [*base, "--input", str(good), "--output", str(a_file)])

    wrong_type = tmp_path / "wrong_type.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "text": [1, 2]}), wrong_type)
    message = _error(capsys, [*base, "--input", str(wrong_type), "--output", str(tmp_path / "o2")])
    assert "wrong_type.parquet" in message and "'text'" in message and "int64" in message
    assert not (tmp_path / "o2").exists(), "a bad file must fail before the output folder is made"

    # Bad rows are set aside (tests/test_bulk_rejects.py); with none left the job fails at once.
    no_text = tmp_path / "no_text.jsonl"
    no_text.write_text('{"id": "a"}\n{"id": "b", "text": ""}\n')
    message = _error(capsys, [*base, "--input", str(no_text), "--output", str(tmp_path / "o3")])
    assert "every row was rejected (2)" in message and "rejects.jsonl" in message
    assert sorted(p.name for p in (tmp_path / "o3").iterdir() if not p.name.startswith(".")) == [
        "rejects.jsonl"
    ]


def test_an_item_no_tag_fits_is_written_with_no_tag_and_not_tagged_again(ranked_store, ray_cluster, tmp_path):
    from cluster.bulk import run_bulk
    from cluster.bulk_files import output_files, read_output
    from llm4tag.config import load_settings

    source = tmp_path / "items.parquet"
    pq.write_table(pa.Table.from_pylist([*OUT_OF_SCOPE, IN_SCOPE]), source)
    settings = load_settings(REPO / "configs" / "banking77.yaml").with_overrides(SETTINGS)
    report = run_bulk(source, tmp_path / "out", ranked_store[0], settings)
    assert (report.tagged, report.sent_to_llm) == (3, 0)
    written = pa.concat_tables([pq.read_table(f) for f in output_files(tmp_path / "out")]).to_pylist()
    rows = {row["id"]: row for row in written}
    for off in OUT_OF_SCOPE:
        assert rows[off["id"]]["tags"] == [] and rows[off["id"]]["no_tag"].startswith(
            "no tag reaches the cut"
        )
    assert rows[IN_SCOPE["id"]]["tags"] and rows[IN_SCOPE["id"]]["no_tag"] is None
    assert {r["id"]: r["tags"] for r in read_output(tmp_path / "out")}[OUT_OF_SCOPE[0]["id"]] == []
    again = run_bulk(source, tmp_path / "out", ranked_store[0], settings)
    assert (again.skipped_done, again.tagged) == (3, 0)  # the empty answers are answers: not redone
