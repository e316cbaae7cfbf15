"""Helpers of the data tests (tests/test_data.py, tests/test_data_errors.py): files written raw in every
format, and the expected errors."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llm4tag.errors import DataError

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE = REPO_ROOT / "data" / "sample"
SHARED = REPO_ROOT.parent / "shared" / "data"

FORMATS = ["jsonl", "jsonl.gz", "csv", "csv.gz", "parquet"]
ROUND_TRIP_EXTENSIONS = ["jsonl", "jsonl.gz", "parquet", "csv", "csv.gz"]


def write_raw(path: Path, records: list[dict]) -> Path:
    """Write records as they are (no validation, no write_records) in the format of path's extension."""
    name = path.name
    if name.endswith((".jsonl", ".jsonl.gz")):
        text = "".join(json.dumps(r) + "\n" for r in records)
        if name.endswith(".gz"):
            path.write_bytes(gzip.compress(text.encode()))
        else:
            path.write_text(text, encoding="utf-8")
    elif name.endswith((".csv", ".csv.gz")):
        columns = list(dict.fromkeys(k for r in records for k in r))
        lines = []
        for r in records:
            cells = []
            for col in columns:
                v = r.get(col)
                cells.append("" if v is None else v if isinstance(v, str) else json.dumps(v))
            lines.append(cells)
        import io

        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(lines)
        if name.endswith(".gz"):
            path.write_bytes(gzip.compress(buf.getvalue().encode()))
        else:
            path.write_text(buf.getvalue(), encoding="utf-8")
    elif name.endswith(".parquet"):
        columns = list(dict.fromkeys(k for r in records for k in r))
        pq.write_table(pa.table({c: [r.get(c) for r in records] for c in columns}), path)
    else:
        raise AssertionError(name)
    return path


def line_of(fmt: str, index: int) -> int:
    """The line/row number read_records reports for the record at 0-based index in a write_raw file."""
    return index + (2 if fmt.startswith("csv") else 1)


def raises_data_error(line: int | None = None, field: str | None = None, match: str | None = None):
    class _Checker:
        def __enter__(self):
            self.ctx = pytest.raises(DataError, match=match)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            result = self.ctx.__exit__(*exc)
            err = self.info.value
            assert err.line == line, f"line {err.line} != {line}: {err}"
            assert err.field == field, f"field {err.field} != {field}: {err}"
            assert err.path in str(err)
            if line is not None:
                assert f"line {line}" in str(err)
            if field is not None:
                assert f"field '{field}'" in str(err)
            return result

    return _Checker()


GOOD = [
    {"id": "a", "text": "first item", "tags": ["x", "y"], "split": "train"},
    {"id": "b", "text": "second item", "tags": ["y"], "split": "test"},
    {"id": "c", "text": "third item", "tags": None, "split": "train"},
]
