"""The files of a bulk job: the fixed output schema, the output folder (complete Parquet files only,
written under an exclusive lock through graph_store.durable), and the input (Parquet or JSONL ids and
items)."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from graph_store.durable import atomic_file, exclusive_lock
from llm4tag.data import Item, read_records
from llm4tag.errors import DataError, LLM4TagError

LOCK_NAME = ".llm4tag-bulk.lock"
TMP_SUFFIX = ".tmp"

# --- the output schema: fixed, so that every file of a folder (and of every rerun) has the same one

TAG = pa.struct(
    [
        ("tag", pa.string()),
        ("confidence", pa.float64()),  # null: not calibrated
        ("source", pa.string()),
        ("recall_score", pa.float64()),  # null: the LLM named a tag outside the candidates
        ("via", pa.list_(pa.string())),
    ]
)
# A tag of a routed row (a ranker in the store, pipeline.route): who kept it, its ranker probability,
# the LLM's raw Yes-probability (judged tags).
ROUTED_TAG = pa.struct(
    [
        ("tag", pa.string()),
        ("confidence", pa.float64()),
        ("source", pa.string()),
        ("by", pa.string()),
        ("ranker", pa.float64()),
        ("yes", pa.float64()),
    ]
)
# A candidate ranked by the store's ranker (ScoredTag.to_dict).
RANKED = pa.struct(
    [("tag", pa.string()), ("confidence", pa.float64()), ("score", pa.float64()), ("source", pa.string())]
)
CANDIDATE = pa.struct(
    [
        ("tag", pa.string()),
        ("score", pa.float64()),
        ("paths", pa.list_(pa.string())),
        ("c2t_score", pa.float64()),
        ("c2c2t_score", pa.float64()),
        ("via", pa.list_(pa.string())),
    ]
)
KNOWLEDGE = pa.struct([("samples", pa.list_(pa.string())), ("snippets", pa.list_(pa.string()))])
# Keys that result_row / Candidate.to_dict leave out when empty are nulls in Parquet.
_OPTIONAL = {"recall_score", "via", "c2t_score", "c2c2t_score", "raw", "by", "ranker", "yes", "route"}


def output_schema(
    stages: str, with_candidates: bool, with_dropped: bool, with_raw: bool, routed: bool = False
) -> pa.Schema:
    """``routed``: the store has a ranker the items are routed by (a ``route`` column; candidates are
    the ranker's)."""
    if stages == "recall":
        return pa.schema([("id", pa.string()), ("candidates", pa.list_(CANDIDATE))])
    tag = ROUTED_TAG if routed else TAG
    fields = [
        ("id", pa.string()),
        ("tags", pa.list_(tag)),
        ("knowledge", KNOWLEDGE),
        ("generated", pa.list_(pa.string())),
    ]
    if routed:
        fields.append(("route", pa.string()))
    if with_dropped:
        fields.append(("dropped", pa.list_(tag)))
    if with_candidates:
        fields.append(("candidates", pa.list_(RANKED if routed else CANDIDATE)))
    if with_raw:
        fields.append(("raw", pa.string()))
    return pa.schema(fields)


def _strip_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_nulls(v) for k, v in value.items() if not (k in _OPTIONAL and v is None)}
    if isinstance(value, list):
        return [_strip_nulls(v) for v in value]
    return value


def read_output(folder: str | Path) -> list[dict]:
    """The rows of an output folder as ``TaggingPipeline.tag`` returns them (absent keys, not nulls)."""
    return [_strip_nulls(row) for path in output_files(folder) for row in pq.read_table(path).to_pylist()]


def output_files(folder: str | Path) -> list[Path]:
    # Hidden names are files still being written (or left by a crash): never part of the output.
    return sorted(p for p in Path(folder).glob("*.parquet") if not p.name.startswith("."))


# --- input


def input_format(path: Path) -> str:
    name = path.name.lower()
    if path.is_dir():
        if not any(p.suffix == ".parquet" for p in path.iterdir()):
            raise DataError(str(path), "is a folder without .parquet files")
        return "parquet"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith((".jsonl", ".jsonl.gz")):
        return "jsonl"
    raise DataError(str(path), "bulk tagging reads Parquet (a file or a folder of files) or JSONL[.gz]")


def read_ids(path: Path, fmt: str, split: str | None) -> list[str]:
    """The ids to tag, in input order, checked (as ``read_items`` does) before any work starts: ids
    present, strings (or integers), unique; texts present and not empty."""
    columns = ["id"] + (["split"] if split is not None else [])
    records: Iterable[tuple[int, dict]]
    if fmt == "parquet":
        try:
            schema = pq.read_schema(path) if path.is_file() else pq.ParquetDataset(path).schema
            missing = [c for c in (*columns, "text") if c not in schema.names]
            if missing:
                raise DataError(str(path), f"no column '{missing[0]}'", field=missing[0])
            table = pq.read_table(path, columns=[*columns, "text"])
        except (pa.ArrowException, OSError) as exc:
            raise DataError(str(path), f"cannot read Parquet: {exc}") from exc
        check_texts(path, table.column("text"))
        records = enumerate(table.select(columns).to_pylist(), 1)
    else:
        records = read_records(path)
    ids: list[str] = []
    seen: set[str] = set()
    for line, record in records:
        if fmt == "jsonl":
            text = record.get("text")
            if not isinstance(text, str) or not text.strip():
                raise DataError(str(path), "missing or not a non-empty string", line=line, field="text")
        value = record.get("id")
        if isinstance(value, int) and not isinstance(value, bool) and fmt == "parquet":
            value = str(value)
        if not isinstance(value, str) or not value.strip():
            raise DataError(str(path), "missing or not a non-empty string", line=line, field="id")
        if value in seen:
            raise DataError(str(path), f"duplicate id '{value}'", line=line, field="id")
        seen.add(value)
        if split is not None:
            if record.get("split") is None:
                raise DataError(str(path), f"missing, but split '{split}' was asked for", line=line)
            if record["split"] != split:
                continue
        ids.append(value)
    if not seen:
        raise DataError(str(path), "no items (the file holds no records)")
    return ids


def check_texts(path: Path, texts: pa.ChunkedArray) -> None:

    if not pa.types.is_string(texts.type) and not pa.types.is_large_string(texts.type):
        raise DataError(str(path), f"must be strings, got {texts.type}", field="text")
    bad = pc.or_kleene(pc.is_null(texts), pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(texts)), 0))
    if pc.any(bad).as_py():
        row = pc.index(bad, True).as_py() + 1
        raise DataError(str(path), "missing or empty", line=row, field="text")


def to_item(record: dict, source: str) -> Item:
    item_id = record.get("id")
    if isinstance(item_id, int) and not isinstance(item_id, bool):
        item_id = str(item_id)
    text = record.get("text")
    if not isinstance(text, str) or not text.strip():
        raise DataError(source, f"item '{item_id}': missing or empty", field="text")
    tags = record.get("tags")
    extra = {k: v for k, v in record.items() if k not in ("id", "text", "tags") and v is not None}
    return Item(id=item_id, text=text, tags=tuple(tags) if tags else None, extra=extra)


class OutputFolder:
    """Complete Parquet files only: each is written hidden, fsynced, then renamed into place.

    An exclusive lock (released by the OS when the process dies, even by SIGKILL) keeps two jobs
    from writing the same folder, which also makes it safe to delete temporary files a crash left.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise DataError(str(path), "is a file; bulk output needs a folder")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(str(path), f"cannot create the output folder: {exc.strerror or exc}") from exc
        self._stack = contextlib.ExitStack()  # the lock, held for the job's lifetime
        try:
            self._stack.enter_context(exclusive_lock(self.path / LOCK_NAME, wait=False))
        except BlockingIOError as exc:
            raise LLM4TagError(f"another bulk job is writing to {path}") from exc
        except OSError as exc:
            raise DataError(str(path), f"cannot lock the output folder: {exc.strerror or exc}") from exc
        for stale in self.path.glob(f".*{TMP_SUFFIX}"):
            stale.unlink()
        self.run = uuid.uuid4().hex[:8]
        self.files = 0

    def done_ids(self) -> set[str]:
        done: set[str] = set()
        for path in output_files(self.path):
            try:
                done.update(pq.read_table(path, columns=["id"]).column("id").to_pylist())
            except (pa.ArrowException, OSError, KeyError) as exc:
                raise DataError(str(path), f"not a readable output file of this job: {exc}") from exc
        return done

    def write(self, table: pa.Table) -> None:
        name = f"part-{time.strftime('%Y%m%dT%H%M%S')}-{self.run}-{self.files:05d}.parquet"
        with atomic_file(self.path / name) as fh:
            pq.write_table(table, fh)
        self.files += 1

    def close(self) -> None:
        self._stack.close()
