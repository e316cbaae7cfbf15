"""Tests of llm4tag.data: round trips, every format, vocabulary checks, splits, the samples (the errors:
tests/test_data_errors.py)."""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_files import (
    FORMATS,
    GOOD,
    ROUND_TRIP_EXTENSIONS,
    SAMPLE,
    SHARED,
    line_of,
    raises_data_error,
    write_raw,
)

from llm4tag.data import Item, ItemsFile, Tag, read_items, read_records, read_tags, write_records
from llm4tag.errors import DataError

# --- happy paths


@pytest.mark.parametrize("fmt", FORMATS)
def test_read_items_every_format(tmp_path, fmt):
    path = write_raw(tmp_path / f"items.{fmt}", GOOD)
    result = read_items(path)
    assert isinstance(result, ItemsFile)
    assert result.path == str(path)
    assert len(result) == 3
    assert [i.id for i in result] == ["a", "b", "c"]
    assert result.items[0] == Item(id="a", text="first item", tags=("x", "y"), extra={"split": "train"})
    assert result.items[2].tags is None
    assert result.unknown_tag_annotations == 0


@pytest.mark.parametrize("ext", ROUND_TRIP_EXTENSIONS)
def test_round_trip(tmp_path, ext):
    rows = [
        {"id": "1", "text": 'héllo, "world"\nsecond line', "tags": ["a", "b|c"], "score": 0.25, "n": 3},
        {"id": "2", "text": "plain", "tags": None, "score": None, "n": 4, "description": "extra field"},
        {"id": "3", "text": "x", "tags": [], "score": 1.5, "n": 5},
    ]
    path = tmp_path / "deep" / "dir" / f"out.{ext}"
    assert write_records(path, rows) == 3
    assert sorted(os.listdir(path.parent)) == [path.name]  # no temp file left behind
    items = read_items(path).items
    assert [i.id for i in items] == ["1", "2", "3"]
    assert items[0].text == rows[0]["text"]
    assert items[0].tags == ("a", "b|c")  # CSV writes lists as JSON, so '|' inside a tag survives
    assert items[1].tags is None
    assert items[2].tags == ()
    assert items[1].extra["description"] == "extra field"
    records = [r for _, r in read_records(path)]
    if ext.startswith("csv"):
        assert records[0]["score"] == "0.25" and records[0]["n"] == "3"
        assert records[1]["score"] is None
        assert json.loads(records[0]["tags"]) == ["a", "b|c"]
    else:
        assert records[0]["score"] == 0.25 and records[0]["n"] == 3
        assert records[1]["score"] is None
        assert records[0]["tags"] == ["a", "b|c"]
    assert "score" not in items[1].extra  # null optional fields are treated as missing


def test_write_records_jsonl_handles_numpy_and_streams_generators(tmp_path):
    np = pytest.importorskip("numpy")
    path = tmp_path / "o.jsonl"
    n = write_records(path, ({"id": str(i), "v": np.float32(i) / 2, "arr": np.arange(2)} for i in range(3)))
    assert n == 3
    got = [r for _, r in read_records(path)]
    assert got[1] == {"id": "1", "v": 0.5, "arr": [0, 1]}


def test_write_parquet_keeps_keys_absent_from_first_row(tmp_path):
    path = tmp_path / "o.parquet"
    write_records(path, [{"id": "a"}, {"id": "b", "late": [1, 2]}])
    assert list(read_records(path)) == [(1, {"id": "a", "late": None}), (2, {"id": "b", "late": [1, 2]})]


def test_write_is_atomic_on_failure(tmp_path):
    path = tmp_path / "out.jsonl"
    write_records(path, [{"id": "old"}])
    before = path.read_bytes()

    def rows():
        yield {"id": "new1"}
        raise RuntimeError("crash in the middle")

    with pytest.raises(RuntimeError):
        write_records(path, rows())
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["out.jsonl"]


def test_write_parquet_bad_rows_is_data_error_and_keeps_old_file(tmp_path):
    path = tmp_path / "out.parquet"
    write_records(path, [{"id": "old"}])
    before = path.read_bytes()
    with pytest.raises(DataError, match="Parquet"):
        write_records(path, [{"id": "a", "v": 1}, {"id": "b", "v": "not a number"}])
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["out.parquet"]


def test_write_unsupported_extension_and_directory(tmp_path):
    with raises_data_error(match=r"unsupported file extension '\.json'"):
        write_records(tmp_path / "out.json", [{"id": "a"}])
    (tmp_path / "d.jsonl").mkdir()
    with raises_data_error(match="directory"):
        write_records(tmp_path / "d.jsonl", [{"id": "a"}])
    assert not (tmp_path / "out.json").exists()


def test_csv_tags_cells(tmp_path):
    path = tmp_path / "i.csv"
    path.write_text(
        'id,text,tags\n1,t1,"[""a"", ""b"", ""a""]"\n2,t2,a | b|c\n3,t3,\n4,t4,single\n', encoding="utf-8"
    )
    items = read_items(path).items
    assert [i.tags for i in items] == [("a", "b"), ("a", "b", "c"), None, ("single",)]
    assert all(isinstance(i.id, str) for i in items)


def test_tags_deduplicated_keeping_order(tmp_path):
    path = write_raw(tmp_path / "i.jsonl", [{"id": "a", "text": "t", "tags": ["z", "a", "z", "b", "a"]}])
    assert read_items(path).items[0].tags == ("z", "a", "b")


def test_jsonl_blank_lines_skipped_and_lines_counted(tmp_path):
    path = tmp_path / "i.jsonl"
    path.write_text('\n{"id": "a", "text": "t"}\n   \n\n{"id": "a", "text": "u"}\n', encoding="utf-8")
    assert [n for n, _ in read_records(path)] == [2, 5]
    with raises_data_error(line=5, field="id", match=r"duplicate id 'a' \(first on line 2\)"):
        read_items(path)


def test_csv_multiline_cell_reports_start_line(tmp_path):
    path = tmp_path / "i.csv"
    path.write_text('id,text\na,"two\nlines"\n\nb,ok\n', encoding="utf-8")
    assert [(n, r["id"]) for n, r in read_records(path)] == [(2, "a"), (5, "b")]


def test_parquet_integer_ids_become_strings(tmp_path):
    path = tmp_path / "i.parquet"
    pq.write_table(pa.table({"id": [7, 8], "text": ["a", "b"]}), path)
    assert [i.id for i in read_items(path)] == ["7", "8"]


def test_parquet_nan_optional_fields_are_missing(tmp_path):
    path = tmp_path / "i.parquet"
    pq.write_table(pa.table({"id": ["a"], "text": ["t"], "score": [math.nan], "note": [None]}), path)
    item = read_items(path).items[0]
    assert item.extra == {}


def test_items_are_frozen_and_hashable():
    item = Item(id="a", text="t", tags=("x",), extra={"k": 1})
    with pytest.raises(AttributeError):
        item.id = "b"  # type: ignore[misc]
    assert hash(item) == hash(Item(id="a", text="t", tags=("x",), extra={"k": 2}))
    assert Tag(tag="x").description is None


# --- vocabulary


@pytest.mark.parametrize("fmt", FORMATS)
def test_unknown_tags_dropped_counted_and_warned(tmp_path, fmt, caplog):
    records = [
        {"id": "a", "text": "t", "tags": ["x", "nope1", "y"]},
        {"id": "b", "text": "t", "tags": ["nope2"]},
        {"id": "c", "text": "t", "tags": ["x"]},
    ]
    path = write_raw(tmp_path / f"i.{fmt}", records)
    with caplog.at_level(logging.WARNING, logger="llm4tag.data"):
        result = read_items(path, vocabulary=["x", "y"])
    assert [i.tags for i in result] == [("x", "y"), (), ("x",)]
    assert result.unknown_tag_annotations == 2
    assert result.items_with_unknown_tags == 2
    assert result.unknown_tag_examples == ["nope1", "nope2"]
    warnings = [r for r in caplog.records if r.name == "llm4tag.data" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "2" in warnings[0].getMessage() and "nope1" in warnings[0].getMessage()


@pytest.mark.parametrize("fmt", FORMATS)
def test_unknown_tags_strict(tmp_path, fmt):
    records = [{"id": "a", "text": "t", "tags": ["x"]}, {"id": "b", "text": "t", "tags": ["x", "nope"]}]
    path = write_raw(tmp_path / f"i.{fmt}", records)
    with raises_data_error(line=line_of(fmt, 1), field="tags", match="'nope' is not in the vocabulary"):
        read_items(path, vocabulary={"x"}, strict_tags=True)


def test_unknown_tag_examples_capped_at_five(tmp_path, caplog):
    records = [{"id": str(i), "text": "t", "tags": [f"u{i}", f"u{i}b"]} for i in range(6)]
    path = write_raw(tmp_path / "i.jsonl", records)
    result = read_items(path, vocabulary=set())
    assert result.unknown_tag_annotations == 12
    assert result.items_with_unknown_tags == 6
    assert result.unknown_tag_examples == ["u0", "u0b", "u1", "u1b", "u2"]


def test_no_warning_without_unknown_tags(tmp_path, caplog):
    path = write_raw(tmp_path / "i.jsonl", GOOD)
    with caplog.at_level(logging.WARNING, logger="llm4tag.data"):
        read_items(path, vocabulary={"x", "y"})
    assert not [r for r in caplog.records if r.name == "llm4tag.data"]


# --- split / require_tags


@pytest.mark.parametrize("fmt", FORMATS)
def test_split_filter(tmp_path, fmt):
    path = write_raw(tmp_path / f"i.{fmt}", GOOD)
    assert [i.id for i in read_items(path, split="train")] == ["a", "c"]
    assert [i.id for i in read_items(path, split="test")] == ["b"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_split_missing_field(tmp_path, fmt):
    records = [dict(GOOD[0]), {"id": "z", "text": "no split", "split": None}]
    path = write_raw(tmp_path / f"i.{fmt}", records)
    with raises_data_error(line=line_of(fmt, 1), field="split", match="split 'train' was asked"):
        read_items(path, split="train")


@pytest.mark.parametrize("fmt", FORMATS)
def test_split_without_match(tmp_path, fmt):
    path = write_raw(tmp_path / f"i.{fmt}", GOOD)
    with raises_data_error(
        field="split", match=r"no items with split 'dev' \(splits present: 'train', 'test'\)"
    ):
        read_items(path, split="dev")


@pytest.mark.parametrize("fmt", FORMATS)
def test_require_tags(tmp_path, fmt):
    path = write_raw(tmp_path / f"i.{fmt}", GOOD)
    with raises_data_error(line=line_of(fmt, 2), field="tags", match="missing"):
        read_items(path, require_tags=True)
    # the unannotated item is in the train split only
    assert len(read_items(path, split="test", require_tags=True)) == 1


# --- tag vocabulary


@pytest.mark.parametrize("fmt", FORMATS)
def test_read_tags(tmp_path, fmt):
    records = [
        {"tag": "x", "description": "the x tag", "facet": "f"},
        {"tag": "y", "description": None, "facet": "g"},
    ]
    path = write_raw(tmp_path / f"t.{fmt}", records)
    assert read_tags(path) == [
        Tag(tag="x", description="the x tag", extra={"facet": "f"}),
        Tag(tag="y", description=None, extra={"facet": "g"}),
    ]


@pytest.mark.parametrize("fmt", FORMATS)
def test_read_tags_errors(tmp_path, fmt):
    ok = {"tag": "x", "description": "d"}
    path = write_raw(
        tmp_path / f"t.{fmt}", [ok, {"tag": "y", "description": "d"}, {"tag": "x", "description": "e"}]
    )
    first, dup = line_of(fmt, 0), line_of(fmt, 2)
    with raises_data_error(line=dup, field="tag", match=rf"duplicate tag 'x' \(first on line {first}\)"):
        read_tags(path)
    path = write_raw(tmp_path / f"t2.{fmt}", [ok, {"tag": None, "description": "d"}])
    with raises_data_error(line=line_of(fmt, 1), field="tag", match="missing"):
        read_tags(path)
    path = write_raw(tmp_path / f"t3.{fmt}", [ok, {"tag": "  ", "description": "d"}])
    with raises_data_error(line=line_of(fmt, 1), field="tag", match="must not be empty"):
        read_tags(path)


@pytest.mark.parametrize(("fmt", "value"), [("jsonl", 3), ("jsonl", ["d"]), ("parquet", 3)])
def test_read_tags_bad_description(tmp_path, fmt, value):
    path = write_raw(tmp_path / f"t.{fmt}", [{"tag": "x", "description": value}])
    with raises_data_error(line=1, field="description", match="string or null"):
        read_tags(path)


def test_read_tags_not_string(tmp_path):
    path = write_raw(tmp_path / "t.jsonl", [{"tag": 5}])
    with raises_data_error(line=1, field="tag", match="must be a string"):
        read_tags(path)


# --- shipped samples


def test_sample_banking77():
    tags = read_tags(SAMPLE / "banking77" / "tags.jsonl")
    assert len(tags) == 77
    assert all(t.description is None for t in tags)
    vocab = {t.tag for t in tags}
    train = read_items(
        SAMPLE / "banking77" / "train.jsonl", vocabulary=vocab, strict_tags=True, require_tags=True
    )
    assert len(train) == 400
    per_intent = Counter(i.tags[0] for i in train)
    assert set(per_intent) == vocab and min(per_intent.values()) >= 4
    assert all(len(i.tags) == 1 and not i.extra and i.id.startswith("banking77-train-") for i in train)
    queries = read_items(SAMPLE / "banking77" / "queries.jsonl", vocabulary=vocab, strict_tags=True)
    assert len(queries) == 40
    assert all(q.id.startswith("banking77-test-") for q in queries)
    assert not {q.id for q in queries} & {i.id for i in train}


def test_sample_debtags():
    tags = read_tags(SAMPLE / "debtags" / "tags.jsonl")
    vocab = {t.tag for t in tags}
    train = read_items(
        SAMPLE / "debtags" / "train.jsonl", vocabulary=vocab, strict_tags=True, require_tags=True
    )
    assert len(train) == 300
    assert {t for i in train for t in i.tags} == vocab  # exactly the tags used
    assert sum(t.description is not None for t in tags) >= len(tags) - 5
    assert max(len(i.tags) for i in train) > 1


@pytest.mark.parametrize("name", ["banking77", "debian_debtags", "flipkart_products"])
def test_shared_data_sets_load(name):
    folder = SHARED / name
    if not (folder / "items.jsonl.gz").exists():
        pytest.skip(f"{folder} not available")
    stats = json.loads((folder / "stats.json").read_text())
    tags = read_tags(folder / "tags.jsonl.gz")
    vocab = {t.tag for t in tags}
    items = read_items(folder / "items.jsonl.gz", vocabulary=vocab, strict_tags=True)
    assert len(items) == stats["items"]
    train = read_items(folder / "items.jsonl.gz", split="train", require_tags=True)
    assert len(train) == stats["splits"]["train"]
    assert all(i.extra["split"] == "train" for i in train)
