"""The files of a bulk job: the fixed output schema, the output folder (complete Parquet files only,
written under an exclusive lock through graph_store.durable), and the input (Parquet or JSONL ids and
items)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from graph_store.durable import atomic_file, exclusive_lock
from llm4tag.data import Item, read_records
from llm4tag.errors import DataError, LLM4TagError
from llm4tag.item_rules import ItemProblem, check_id, check_item, check_tags, check_text

LOCK_NAME = ".llm4tag-bulk.lock"
ROUTED_NAME = ".routed"  # the items routed to the LLM, waiting for the job's LLM pass
JSONL_LINE = "__llm4tag_jsonl_line"  # the column that carries a JSONL input line to to_item
REJECTS_NAME = "rejects.jsonl"  # the input rows the last run set aside, one JSON object a line
TMP_SUFFIX = ".tmp"

# --- the output schema: fixed, so that every file of a folder (and of every rerun) has the same one

# A tag of a row (docs/usage.md "Output rows"): its final confidence, who kept it, its provenance, the
# ranker's probability and the LLM's raw Yes where known, graph recall's detail for unranked candidates.
TAG = pa.struct(
    [
        ("tag", pa.string()),
        ("confidence", pa.float64()),  # null: not calibrated
        ("source", pa.string()),
        ("by", pa.string()),
        ("ranker", pa.float64()),
        ("yes", pa.float64()),
        ("recall_score", pa.float64()),
        ("via", pa.list_(pa.string())),
    ]
)
# A candidate of a row (ScoredTag.to_dict): the ranker's probability where one scored it.
SCORED = pa.struct(
    [
        ("tag", pa.string()),
        ("confidence", pa.float64()),
        ("score", pa.float64()),
        ("source", pa.string()),
        ("via", pa.list_(pa.string())),
    ]
)
# A candidate of graph recall (`llm4tag recall`'s rows, Candidate.to_dict).
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
# Keys that the rows (tagged_row, FinalTag/ScoredTag/Candidate.to_dict) leave out when empty are nulls
# in Parquet.
_OPTIONAL = {"recall_score", "via", "c2t_score", "c2c2t_score", "raw", "ranker", "yes", "no_tag"}


def output_schema(stages: str, with_candidates: bool, with_dropped: bool, with_raw: bool) -> pa.Schema:
    """The files' schema: the tag flow's rows (one shape, with or without a ranker), or graph recall's
    candidates (``stages="recall"``)."""
    if stages == "recall":
        return pa.schema([("id", pa.string()), ("candidates", pa.list_(CANDIDATE))])
    fields = [
        ("id", pa.string()),
        ("tags", pa.list_(TAG)),
        ("route", pa.string()),
        ("knowledge", KNOWLEDGE),
        ("generated", pa.list_(pa.string())),
        ("no_tag", pa.string()),  # null unless tags is empty: why no tag was kept
    ]
    if with_dropped:
        fields.append(("dropped", pa.list_(TAG)))
    if with_candidates:
        fields.append(("candidates", pa.list_(SCORED)))
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


@dataclass
class Reject:
    """An input row the job sets aside: where it is (``file``, and its JSONL ``line`` or Parquet
    ``row``, 1-based), its id where it has a usable one, the field at fault and why."""

    file: str
    position: int
    unit: str  # "line" or "row"
    reason: str
    field: str | None = None
    id: str | None = None

    def to_dict(self) -> dict:
        row = {"file": self.file, self.unit: self.position, "id": self.id, "field": self.field}
        return row | {"reason": self.reason}


@dataclass
class InputCheck:
    """What a bulk job will tag: the accepted ids in input order (of the split asked for), the rows
    it sets aside, and, for an id that more than one row carries, the digest of the accepted row's
    text, so that the read tasks (which see rows, not positions) keep that row and drop the others."""

    ids: list[str]
    rejects: list[Reject]
    conflicts: dict[str, str] = field(default_factory=dict)


def text_digest(text: str) -> str:
    # Stable across processes (Python's hash() is salted per process).
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def check_input(path: Path, fmt: str, split: str | None) -> InputCheck:
    """Check every input row before any work starts. A row that is not a valid item
    (llm4tag/item_rules.py: its id, text and tags), repeats an earlier row's id, or lacks the ``split``
    asked for is a reject (named by file and line or row, with the reason); the first row of an id is
    the one tagged. A file that cannot be read at all, or lacks a column, fails as a whole."""
    bad_lines: list[DataError] = []
    records = _parquet_records(path, split) if fmt == "parquet" else _jsonl_records(path, bad_lines)
    unit = "row" if fmt == "parquet" else "line"
    rejects: list[Reject] = []
    ids: list[str] = []
    accepted: dict[str, tuple[int, str]] = {}  # id -> (position, text digest) of the row tagged
    repeated: set[str] = set()
    count = 0
    for file, position, record in records:
        count += 1
        item_id, problem = _problem(record, numbers=fmt == "parquet")
        if problem is None and item_id in accepted:
            problem = ("id", f"duplicate id '{item_id}' (first on {unit} {accepted[item_id][0]})")
        if problem is None and split is not None and record.get("split") is None:
            problem = ("split", f"missing, but split '{split}' was asked for")
        if problem is not None:
            seen = _id_as_read(record.get("id"), numbers=fmt == "parquet")
            text = record.get("text")
            if seen is not None and isinstance(text, str) and text.strip():  # the read tasks pass it
                repeated.add(seen)
            rejects.append(Reject(file, position, unit, problem[1], problem[0], item_id))
            continue
        assert item_id is not None
        accepted[item_id] = (position, text_digest(record["text"]))
        if split is None or record["split"] == split:
            ids.append(item_id)
    rejects += [Reject(str(path), e.line or 0, unit, e.problem, e.field) for e in bad_lines]
    rejects.sort(key=lambda r: (r.file, r.position))
    if not count and not bad_lines:
        raise DataError(str(path), "no items (the file holds no records)")
    # The read tasks see rows, not positions, and check only that id and text are not blank: a rejected
    # row they let through must not pass for the accepted row of its id, nor for an item of its own
    # (its id never accepted; no text has the empty digest).
    conflicts = {i: accepted[i][1] if i in accepted else REJECTED for i in repeated}
    return InputCheck(ids, rejects, conflicts)


REJECTED = ""  # the text digest no row has: every row of the id is dropped


def _id_as_read(value: Any, numbers: bool) -> str | None:
    """The id of a row as the read tasks' filter sees it (select_rows), None where it drops the row."""
    if numbers and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value if isinstance(value, str) and value.strip() else None


def _problem(record: dict, numbers: bool) -> tuple[str | None, tuple[str, str] | None]:
    """The row's id where it is usable, and what makes the row no valid item (field, reason)."""
    try:
        item_id = check_id(record.get("id"), numbers=numbers)
    except ItemProblem as problem:
        return None, (problem.field, problem.message)
    try:
        check_text(record.get("text"))
        check_tags(record.get("tags"))
    except ItemProblem as problem:
        return item_id, (problem.field, problem.message)
    return item_id, None


def _jsonl_records(path: Path, bad_lines: list[DataError]) -> Iterator[tuple[str, int, dict]]:
    for line, record in read_records(path, bad_lines=bad_lines):
        yield str(path), line, record


def parquet_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*.parquet") if not p.name.startswith((".", "_")))


def _parquet_records(path: Path, split: str | None) -> Iterator[tuple[str, int, dict]]:
    """Rows of the id, text (and split) columns, and tags where the file has them, file by file in
    name order, in batches."""
    required = ["id", "text"] + (["split"] if split is not None else [])
    for file in parquet_files(path):
        try:
            parquet = pq.ParquetFile(file)
            schema = parquet.schema_arrow
            missing = [c for c in required if c not in schema.names]
            if missing:
                raise DataError(str(file), f"no column '{missing[0]}'", field=missing[0])
            columns = required + (["tags"] if "tags" in schema.names else [])
            text_type = schema.field("text").type
            if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)):
                raise DataError(str(file), f"must be strings, got {text_type}", field="text")
            row = 0
            for batch in parquet.iter_batches(batch_size=8192, columns=columns):
                for record in batch.to_pylist():
                    row += 1
                    yield str(file), row, record
        except (pa.ArrowException, OSError) as exc:
            raise DataError(str(file), f"cannot read Parquet: {exc}") from exc


# --- rows on the workers: the same rules as check_input, on Arrow blocks


def parse_jsonl_lines(block: pa.Table) -> pa.Table:
    """Lines of a JSONL file (Ray Data's read_text) -> ``id``, ``text`` (null where the line has no
    string there) and the line itself (``JSONL_LINE``), which ``to_item`` reads. Parsed here rather than by
    Ray Data's JSON reader, which fails a whole file on one line that is not JSON or whose value
    changes type."""
    ids, texts, lines = [], [], []
    for line in block.column("text").to_pylist():
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if not isinstance(record, dict):
            continue
        item_id, text = record.get("id"), record.get("text")
        ids.append(item_id if isinstance(item_id, str) else None)
        texts.append(text if isinstance(text, str) else None)
        lines.append(line)
    return pa.table(
        {"id": ids, "text": texts, JSONL_LINE: lines},
        schema=pa.schema([("id", pa.string()), ("text", pa.string()), (JSONL_LINE, pa.string())]),
    )


def select_rows(
    block: pa.Table, keep: bool | None, ids: pa.Array | None, conflicts: dict[str, str]
) -> pa.Table:
    """The rows ``check_input`` accepted: a usable id and text, the accepted row of a repeated id, and
    with ``keep`` (True/False) ids in (or not in) ``ids``; runs in the read tasks, before batching,
    so that a resumed job batches the remaining items as an uninterrupted one would."""
    column = block.column("id")
    if pa.types.is_integer(column.type):
        column = pc.cast(column, pa.string())
    elif not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return block.slice(0, 0)
    texts = block.column("text")
    usable = pc.and_(_nonempty(column), _nonempty(texts))
    if keep is not None:
        member = pc.fill_null(pc.is_in(column, value_set=ids), False)
        usable = pc.and_(usable, member if keep else pc.invert(member))
    if conflicts:
        # Rows of a repeated id: only the one whose text is the accepted row's.
        digests = [
            conflicts.get(i) == text_digest(t) if i in conflicts else True
            for i, t in zip(column.to_pylist(), texts.to_pylist(), strict=True)
        ]
        usable = pc.and_(usable, pa.array(digests, pa.bool_()))
    return block.filter(usable)


def _nonempty(column: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.fill_null(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(column)), 0), False)


def to_item(record: dict, source: str) -> Item:
    """The item of a row ``check_input`` accepted (checked again: a worker must never tag what the
    rules refuse)."""
    if record.get(JSONL_LINE) is not None:
        record = json.loads(record[JSONL_LINE])  # parse_jsonl_lines
    try:
        return check_item(record, numbers=True)
    except ItemProblem as problem:
        raise DataError(
            source, f"item {record.get('id')!r}: {problem.message}", field=problem.field
        ) from None


def _ids(folder: Path) -> set[str]:
    ids: set[str] = set()
    for path in output_files(folder):
        try:
            ids.update(pq.read_table(path, columns=["id"]).column("id").to_pylist())
        except (pa.ArrowException, OSError, KeyError) as exc:
            raise DataError(str(path), f"not a readable output file of this job: {exc}") from exc
    return ids


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
        self.routed = self.path / ROUTED_NAME
        for stale in [*self.path.glob(f".*{TMP_SUFFIX}"), *self.routed.glob(f".*{TMP_SUFFIX}")]:
            stale.unlink()
        self.run = uuid.uuid4().hex[:8]
        self.files = 0
        self.routed_files = 0

    def done_ids(self) -> set[str]:
        return _ids(self.path)

    def routed_ids(self) -> set[str]:
        """The items an earlier pass routed to the LLM (in complete files)."""
        return _ids(self.routed) if self.routed.is_dir() else set()

    def write_rejects(self, rejects: list[Reject]) -> Path:
        """Replaced whole on every run: the rejects are a property of the input, not of a run."""
        path = self.path / REJECTS_NAME
        with atomic_file(path) as fh:
            for reject in rejects:
                fh.write(json.dumps(reject.to_dict(), ensure_ascii=False).encode() + b"\n")
        return path

    def write(self, table: pa.Table) -> None:
        name = f"part-{time.strftime('%Y%m%dT%H%M%S')}-{self.run}-{self.files:05d}.parquet"
        with atomic_file(self.path / name) as fh:
            pq.write_table(table, fh)
        self.files += 1

    def write_routed(self, table: pa.Table) -> None:
        """Items routed to the LLM, kept until the LLM pass has written their rows (same durability)."""
        self.routed.mkdir(exist_ok=True)
        name = f"routed-{self.run}-{self.routed_files:05d}.parquet"
        with atomic_file(self.routed / name) as fh:
            pq.write_table(table, fh)
        self.routed_files += 1

    def drop_routed(self) -> None:
        """Once every routed item's row is in the output."""
        if self.routed.is_dir():
            for path in self.routed.iterdir():
                path.unlink()
            self.routed.rmdir()

    def close(self) -> None:
        self._stack.close()
