"""Tests of llm4tag.data's errors: every error class in every format where it applies."""

from __future__ import annotations

import gzip

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_files import FORMATS, GOOD, line_of, raises_data_error, write_raw

from llm4tag.data import read_items, read_records, read_tags
from llm4tag.errors import DataError

# --- file-level errors


@pytest.mark.parametrize("name", ["items.json", "items.txt", "items", "items.jsonl.bz2", "items.parquet.gz"])
@pytest.mark.parametrize("reader", [read_items, read_tags, read_records])
def test_unsupported_extension(tmp_path, name, reader):
    path = tmp_path / name
    path.write_text('{"id": "a", "text": "t"}\n')
    with raises_data_error(match="unsupported file extension"):
        reader(path)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("reader", [read_items, read_tags, read_records])
def test_missing_file(tmp_path, fmt, reader):
    with raises_data_error(match="file not found"):
        reader(tmp_path / f"absent.{fmt}")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("reader", [read_items, read_tags])
def test_directory(tmp_path, fmt, reader):
    (tmp_path / f"d.{fmt}").mkdir()
    with raises_data_error(match="is a directory"):
        reader(tmp_path / f"d.{fmt}")


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("e.jsonl", b""),
        ("e.jsonl", b"\n  \n\n"),
        ("e.jsonl.gz", gzip.compress(b"", mtime=0)),
        ("e.csv", b""),
        ("e.csv", b"id,text,tags\n"),
        ("e.csv.gz", gzip.compress(b"id,text\n\n", mtime=0)),
    ],
)
def test_empty_files(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with raises_data_error(match="no items"):
        read_items(path)
    with raises_data_error(match="no tags"):
        read_tags(path)


def test_empty_parquet(tmp_path):
    path = tmp_path / "e.parquet"
    pq.write_table(pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())}), path)
    with raises_data_error(match="no items"):
        read_items(path)
    path2 = tmp_path / "t.parquet"
    pq.write_table(pa.table({"tag": pa.array([], pa.string())}), path2)
    with raises_data_error(match="no tags"):
        read_tags(path2)


@pytest.mark.parametrize(
    "content",
    [b"", b"not a parquet file at all", b"PAR1" + b"\x00" * 50 + b"PAR1"],
    ids=["empty", "garbage", "fake-magic"],
)
def test_corrupt_parquet(tmp_path, content):
    path = tmp_path / "bad.parquet"
    path.write_bytes(content)
    with raises_data_error(match="cannot read Parquet"):
        read_items(path)


def test_truncated_parquet(tmp_path):
    good = write_raw(tmp_path / "good.parquet", GOOD)
    path = tmp_path / "cut.parquet"
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with raises_data_error(match="cannot read Parquet"):
        read_items(path)


@pytest.mark.parametrize("fmt", ["jsonl.gz", "csv.gz"])
def test_corrupt_gzip(tmp_path, fmt):
    path = tmp_path / f"bad.{fmt}"
    path.write_bytes(b"this is not gzip data")
    with raises_data_error(line=1, match="compressed data"):
        read_items(path)
    good = gzip.compress(
        b"".join(b'{"id": "%d", "text": "t"}\n' % i for i in range(1000))
        if fmt == "jsonl.gz"
        else b"id,text\n" + b"a,t\n"
    )
    path.write_bytes(good[: len(good) // 2])  # truncated stream
    with pytest.raises(DataError, match="compressed data"):
        read_items(path)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_invalid_utf8(tmp_path, fmt):
    path = tmp_path / f"bad.{fmt}"
    if fmt == "jsonl":
        path.write_bytes(b'{"id": "a", "text": "ok"}\n{"id": "b", "text": "\xff\xfe"}\n')
    else:
        path.write_bytes(b"id,text\na,ok\nb,\xff\xfe\n")
    with raises_data_error(line=2 if fmt == "jsonl" else 3, match="UTF-8"):
        read_items(path)


# --- record-level errors


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz"])
def test_invalid_json_line(tmp_path, fmt):
    text = '{"id": "a", "text": "t"}\n{"id": "b", "text": \n'
    path = tmp_path / f"i.{fmt}"
    path.write_bytes(gzip.compress(text.encode()) if fmt.endswith("gz") else text.encode())
    with raises_data_error(line=2, match="invalid JSON"):
        read_items(path)


@pytest.mark.parametrize("line", ['["a", "b"]', '"just a string"', "42", "null"])
def test_record_not_an_object(tmp_path, line):
    path = tmp_path / "i.jsonl"
    path.write_text('{"id": "a", "text": "t"}\n' + line + "\n")
    with raises_data_error(line=2, match="expected a JSON object"):
        read_items(path)
    with raises_data_error(line=2, match="expected a JSON object"):
        list(read_records(path))


@pytest.mark.parametrize("fmt", ["csv", "csv.gz"])
def test_csv_wrong_cell_count(tmp_path, fmt):
    text = b"id,text\na,t\nb,t,extra\n"
    path = tmp_path / f"i.{fmt}"
    path.write_bytes(gzip.compress(text) if fmt.endswith("gz") else text)
    with raises_data_error(line=3, match="3 cells but the header has 2"):
        read_items(path)
    short = b"id,text,tags\na\n"
    path.write_bytes(gzip.compress(short) if fmt.endswith("gz") else short)
    with raises_data_error(line=2, match="cells but the header"):
        read_items(path)


def test_csv_bad_header(tmp_path):
    path = tmp_path / "i.csv"
    path.write_text("id,text,id\na,t,b\n")
    with raises_data_error(line=1, match="duplicate column 'id'"):
        read_items(path)
    path.write_text("id,,text\na,x,t\n")
    with raises_data_error(line=1, match="empty column name"):
        read_items(path)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("field", ["id", "text"])
def test_required_field_missing(tmp_path, fmt, field):
    records = [{"id": "a", "text": "t"}, {"id": "b", "text": "u"}]
    records[1][field] = None
    path = write_raw(tmp_path / f"i.{fmt}", records)
    with raises_data_error(line=line_of(fmt, 1), field=field, match="missing"):
        read_items(path)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
@pytest.mark.parametrize("field", ["id", "text"])
def test_required_field_absent_column(tmp_path, fmt, field):
    record = {"id": "a", "text": "t"}
    del record[field]
    path = write_raw(tmp_path / f"i.{fmt}", [record])
    with raises_data_error(line=line_of(fmt, 0), field=field, match="missing"):
        read_items(path)


def test_required_field_absent_column_parquet(tmp_path):
    path = tmp_path / "i.parquet"
    pq.write_table(pa.table({"id": ["a"], "name": ["t"]}), path)
    with raises_data_error(line=1, field="text", match="missing"):
        read_items(path)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("field", ["id", "text"])
@pytest.mark.parametrize("value", ["", "   "])
def test_required_field_empty(tmp_path, fmt, field, value):
    records = [{"id": "a", "text": "t"}, {"id": "b", "text": "u"}]
    records[1][field] = value
    path = write_raw(tmp_path / f"i.{fmt}", records)
    # an empty CSV cell is a missing value; a blank one is an empty string
    match = "missing" if fmt.startswith("csv") and value == "" else "must not be empty"
    with raises_data_error(line=line_of(fmt, 1), field=field, match=match):
        read_items(path)


@pytest.mark.parametrize("value", [12, 1.5, True, ["a"], {"x": 1}])
def test_jsonl_id_must_be_string(tmp_path, value):
    path = write_raw(tmp_path / "i.jsonl", [{"id": "a", "text": "t"}, {"id": value, "text": "u"}])
    with raises_data_error(line=2, field="id", match="must be a string"):
        read_items(path)


@pytest.mark.parametrize("value", [12, ["a"]])
def test_jsonl_text_must_be_string(tmp_path, value):
    path = write_raw(tmp_path / "i.jsonl", [{"id": "a", "text": value}])
    with raises_data_error(line=1, field="text", match="must be a string"):
        read_items(path)


@pytest.mark.parametrize(("column", "values"), [("id", [1.5, 2.5]), ("id", [True, False]), ("text", [1, 2])])
def test_parquet_wrong_types(tmp_path, column, values):
    data = {"id": ["a", "b"], "text": ["t", "u"]}
    data[column] = values
    path = tmp_path / "i.parquet"
    pq.write_table(pa.table(data), path)
    with raises_data_error(line=1, field=column, match="must be a string"):
        read_items(path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_duplicate_ids(tmp_path, fmt):
    records = [{"id": "a", "text": "t"}, {"id": "b", "text": "t"}, {"id": "a", "text": "t"}]
    path = write_raw(tmp_path / f"i.{fmt}", records)
    first, dup = line_of(fmt, 0), line_of(fmt, 2)
    with raises_data_error(line=dup, field="id", match=rf"duplicate id 'a' \(first on line {first}\)"):
        read_items(path)


@pytest.mark.parametrize(
    ("fmt", "tags", "match"),
    [
        ("jsonl", "a", "must be a list of strings, got a string"),
        ("jsonl", {"a": 1}, "must be a list of strings"),
        ("jsonl", 3, "must be a list of strings, got a number"),
        ("jsonl", ["a", 1], "tag 2 must be a string"),
        ("jsonl", ["a", ""], "tag 2 is empty"),
        ("jsonl", [" "], "tag 1 is empty"),
        ("jsonl.gz", ["a", None], "tag 2 must be a string, got null"),
        ("parquet", "a|b", "must be a list of strings, got a string"),
        ("parquet", [1, 2], "tag 1 must be a string"),
        ("parquet", ["a", ""], "tag 2 is empty"),
        ("csv", "a||b", "tag 2 is empty"),
        ("csv", "a|", "tag 2 is empty"),
        ("csv", '["a", 2]', "tag 2 must be a string"),
        ("csv", '["a", "b"', "not a JSON array"),
        ("csv", '{"a": 1}', None),  # not '[': a single tag named '{"a": 1}' (documented pipe rule)
        ("csv.gz", "[1]", "tag 1 must be a string"),
    ],
)
def test_bad_tags(tmp_path, fmt, tags, match):
    path = tmp_path / f"i.{fmt}"
    if fmt == "parquet":
        pq.write_table(pa.table({"id": ["a", "b"], "text": ["t", "u"], "tags": [tags, tags]}), path)
    elif fmt.startswith("csv"):
        text = "id,text,tags\n" + "a,t,x\n" + "b,u," + '"' + tags.replace('"', '""') + '"\n'
        path.write_bytes(gzip.compress(text.encode()) if fmt.endswith("gz") else text.encode())
    else:
        write_raw(path, [{"id": "a", "text": "t", "tags": ["x"]}, {"id": "b", "text": "u", "tags": tags}])
    if match is None:
        assert read_items(path).items[1].tags == (tags,)
        return
    expected_line = {"parquet": 1}.get(fmt, 3 if fmt.startswith("csv") else 2)
    with raises_data_error(line=expected_line, field="tags", match=match):
        read_items(path)
