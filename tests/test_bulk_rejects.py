"""Bulk tagging (`llm4tag tag --output DIR/`) on input with bad rows: every good row is tagged once,
each bad row is listed with its line or row and reason in the output folder's rejects file, the
counts are printed, and the exit status is non-zero only with --strict. Real local Ray, real encoder;
the 10,000-row job runs recall only (the tiny LLM would take far longer than a test on 2 cores),
the CLI test runs every stage with the tiny LLM on a few rows."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from llm4tag.cli import main

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample" / "banking77"
SETTINGS = {
    "llm": {"model": "tiny", "batch_size": 4},
    "bulk": {
        "recall": {"batch_size": 256},
        "generate": {"batch_size": 4},
        "calibrate": {"batch_size": 4},
        "rows_per_file": 500,
    },
}


def _texts() -> list[str]:
    lines = (SAMPLE / "queries.jsonl").read_text().splitlines()
    return [json.loads(line)["text"] for line in lines if line]


def _bad_lines(texts: list[str], good_ids: list[str], rng: random.Random) -> list[tuple[str, str]]:
    """One malformed JSONL line of each kind, as (line, the field the reject must name)."""
    some = rng.choice(texts)
    return [
        (json.dumps({"text": some}), "id"),
        (json.dumps({"id": None, "text": some}), "id"),
        (json.dumps({"id": 17, "text": some}), "id"),
        (json.dumps({"id": "   ", "text": some}), "id"),
        (json.dumps({"id": f"bad-{rng.random()}"}), "text"),
        (json.dumps({"id": f"bad-{rng.random()}", "text": ["a", "list"]}), "text"),
        (json.dumps({"id": f"bad-{rng.random()}", "text": " "}), "text"),
        (json.dumps({"id": rng.choice(good_ids), "text": "another text under an id already used"}), "id"),
        # A valid id and text, yet no valid item: the read tasks must drop these too.
        (json.dumps({"id": f"bad-{rng.random()}", "text": some, "tags": 5}), "tags"),
        (json.dumps({"id": f"bad\u2028{rng.random()}", "text": some}), "id"),
        ('{"id": "broken", "text": ', None),
        ("[1, 2, 3]", None),
    ]


def _malformed_input(path: Path, n: int, bad_every: int) -> tuple[set[str], dict[int, str | None]]:
    """``n`` lines, one in ``bad_every`` malformed; also one exact repeat of a good row (same id and
    text: rejected as a duplicate, its item still tagged once). Returns the good ids and, per bad
    line number, the field its reject names."""
    rng = random.Random(18)
    texts = _texts()
    lines: list[str] = []
    good: list[str] = []
    bad: dict[int, str | None] = {}
    kinds: list[tuple[str, str | None]] = []
    for number in range(1, n + 1):
        if number % bad_every == 0 and good:
            if not kinds:
                kinds = _bad_lines(texts, good, rng)
            line, problem_field = kinds.pop()
            if number == n // 2:  # the exact repeat
                first = json.loads(lines[0])
                line, problem_field = json.dumps(first), "id"
            bad[number] = problem_field
            lines.append(line)
        else:
            item_id = f"q{number:05d}"
            good.append(item_id)
            lines.append(json.dumps({"id": item_id, "text": f"{rng.choice(texts)} (#{number})"}))
    path.write_text("\n".join(lines) + "\n")
    return set(good), bad


def _checked_jsonl(tmp_path: Path, lines: list[str]):
    """The lines as a JSONL input file, and the driver's check of it (cluster.bulk_files.check_input)."""
    from cluster.bulk_files import check_input

    source = tmp_path / "items.jsonl"
    source.write_text("\n".join(lines) + "\n")
    return source, check_input(source, "jsonl", None)


def _output_ids(folder: Path) -> list[str]:
    from cluster.bulk_files import output_files

    return [
        i for f in output_files(folder) for i in pq.read_table(f, columns=["id"]).column("id").to_pylist()
    ]


def _rejects(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "rejects.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_one_percent_bad_rows_in_4000_recall_only(ray_cluster, sample_store, tmp_path):
    from cluster.bulk import run_bulk
    from cluster.bulk_files import output_files
    from llm4tag.config import settings_from_dict

    source = tmp_path / "items.jsonl"
    good, bad = _malformed_input(source, 4_000, 100)
    assert len(bad) == 40
    settings = settings_from_dict(SETTINGS)
    out = tmp_path / "out"

    report = run_bulk(source, out, sample_store, settings, stages="recall")
    assert (report.input, report.rejected, report.tagged) == (len(good), 40, len(good))
    ids = _output_ids(out)
    assert len(ids) == len(set(ids)), "a row was tagged twice"
    assert set(ids) == good
    rejects = _rejects(out)
    assert {r["line"]: r["field"] for r in rejects} == bad
    assert all(r["reason"] and r["file"] == str(source) for r in rejects)
    by_line = {r["line"]: r for r in rejects}
    assert by_line[2000]["reason"] == "duplicate id 'q00001' (first on line 1)"

    # Resume: lose some files, rerun; what was written is skipped, nothing is repeated.
    files = output_files(out)
    for lost in files[::3]:
        lost.unlink()
    left = len(_output_ids(out))
    again = run_bulk(source, out, sample_store, settings, stages="recall")
    assert (again.skipped_done, again.tagged, again.rejected) == (left, len(good) - left, 40)
    ids = _output_ids(out)
    assert len(ids) == len(set(ids)) and set(ids) == good
    assert _rejects(out) == rejects


@pytest.mark.slow
def test_parquet_rows_with_nulls_and_duplicates(ray_cluster, sample_store, tmp_path):
    from cluster.bulk import run_bulk
    from cluster.bulk_files import read_output
    from llm4tag.config import settings_from_dict

    texts = _texts()
    source = tmp_path / "items.parquet"
    ids = [1, 2, None, 4, 2, 6, 7]
    rows = [texts[0], texts[1], texts[2], None, texts[4], "  ", texts[6]]
    pq.write_table(pa.table({"id": pa.array(ids, pa.int64()), "text": rows}), source)
    report = run_bulk(source, tmp_path / "out", sample_store, settings_from_dict(SETTINGS), stages="recall")
    assert (report.input, report.rejected, report.tagged) == (3, 4, 3)
    assert sorted(r["id"] for r in read_output(tmp_path / "out")) == ["1", "2", "7"]
    assert [(r["row"], r["field"]) for r in _rejects(tmp_path / "out")] == [
        (3, "id"),
        (4, "text"),
        (5, "id"),
        (6, "text"),
    ]


def test_check_input_names_each_bad_row(tmp_path):
    from cluster.bulk_files import check_input

    source = tmp_path / "items.jsonl"
    source.write_text(
        '{"id": "a", "text": "x"}\n'
        "\n"
        '{"id": "b", "text": 3}\n'
        '{"id": "a", "text": "y"}\n'
        "not json\n"
        '{"id": "c", "text": "z", "split": "test"}\n'
    )
    checked = check_input(source, "jsonl", None)
    assert checked.ids == ["a", "c"]
    assert [r.to_dict() for r in checked.rejects] == [
        {
            "file": str(source),
            "line": 3,
            "id": "b",
            "field": "text",
            "reason": "must be a string, got a number",
        },
        {
            "file": str(source),
            "line": 4,
            "id": "a",
            "field": "id",
            "reason": "duplicate id 'a' (first on line 1)",
        },
        {"file": str(source), "line": 5, "id": None, "field": None, "reason": checked.rejects[2].reason},
    ]
    assert checked.rejects[2].reason.startswith("invalid JSON")
    assert set(checked.conflicts) == {"a"}
    split = check_input(source, "jsonl", "test")
    assert split.ids == ["c"]
    assert [(r.position, r.field) for r in split.rejects] == [
        (1, "split"),
        (3, "text"),
        (4, "split"),
        (5, None),
    ]


def test_select_rows_keeps_what_check_input_accepted(tmp_path):
    from cluster.bulk_files import parse_jsonl_lines, select_rows

    lines = [
        '{"id": "a", "text": "first"}',
        '{"id": 5, "text": "int id"}',
        '{"id": "a", "text": "second"}',
        "[]",
        '{"id": "b", "text": ""}',
        '{"id": "c", "text": "ok", "title": "kept for the prompt"}',
    ]
    _, checked = _checked_jsonl(tmp_path, lines)
    block = parse_jsonl_lines(pa.table({"text": lines}))
    kept = select_rows(block, None, None, checked.conflicts)
    assert kept.column("id").to_pylist() == checked.ids == ["a", "c"]
    assert kept.column("text").to_pylist() == ["first", "ok"]
    only_c = select_rows(block, False, pa.array(["a"]), checked.conflicts)
    assert only_c.column("id").to_pylist() == ["c"]


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(SETTINGS | {"pipeline": {"batch_size": 4}}))
    return path


@pytest.mark.slow
def test_cli_tags_good_rows_and_exits_non_zero_only_with_strict(
    ray_cluster, sample_store, config, tmp_path, capsys
):
    texts = _texts()
    source = tmp_path / "items.jsonl"
    good = [{"id": f"g{i}", "text": texts[i]} for i in range(5)]
    bad = ['{"id": "g0", "text": "dup"}', '{"id": "x"}', "{oops"]
    source.write_text("\n".join([json.dumps(good[0]), *bad, *map(json.dumps, good[1:])]) + "\n")
    out = tmp_path / "out"
    base = ["tag", "--store", str(sample_store), "--input", str(source), "--config", str(config)]

    assert main([*base, "--output", f"{out}/"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out.strip().splitlines()[-1])
    assert (report["input"], report["rejected"], report["tagged"]) == (5, 3, 5)
    assert "3 input row(s) rejected" in captured.err and str(out / "rejects.jsonl") in captured.err
    assert [(r["line"], r["field"]) for r in _rejects(out)] == [(2, "id"), (3, "text"), (4, None)]
    assert sorted(_output_ids(out)) == [g["id"] for g in good]

    # --strict: the same job (resumed: nothing left to tag) exits 3, the rejects listed again.
    assert main([*base, "--output", f"{out}/", "--strict"]) == 3
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (report["skipped_done"], report["tagged"], report["rejected"]) == (5, 0, 3)


def test_rows_that_are_no_valid_item_are_set_aside_before_the_workers_see_them(tmp_path):
    """The item rules (llm4tag/item_rules.py) hold for bulk input as for items files: a row whose
    tags are no list of strings, or whose id is no one line of printable text, is a reject, and the
    read tasks' filter drops it (a worker used to fail the whole job on ``"tags": 5``)."""
    from cluster.bulk_files import parse_jsonl_lines, select_rows, to_item

    lines = [
        '{"id": "a", "text": "first", "tags": ["x", "x", "y"]}',
        '{"id": "b", "text": "tags not a list", "tags": 5}',
        '{"id": "c", "text": "an empty tag", "tags": ["x", " "]}',
        '{"id": "d\\u2028e", "text": "a line separator in the id"}',
        '{"id": "f", "text": "ok"}',
    ]
    source, checked = _checked_jsonl(tmp_path, lines)
    assert checked.ids == ["a", "f"]
    assert [(r.position, r.id, r.field, r.reason) for r in checked.rejects] == [
        (2, "b", "tags", "must be a list of strings, got a number"),
        (3, "c", "tags", "tag 2 is empty"),
        (4, None, "id", "must be 1-256 printable characters on one line"),
    ]
    kept = select_rows(parse_jsonl_lines(pa.table({"text": lines})), None, None, checked.conflicts)
    assert kept.column("id").to_pylist() == ["a", "f"]
    assert [to_item(r, str(source)).tags for r in kept.to_pylist()] == [("x", "y"), None]
