"""Reading and writing item and tag-vocabulary files.

The format is chosen by the file name's extension:

- ``.jsonl`` / ``.jsonl.gz``: one JSON object per line (blank lines are skipped), read line by line;
- ``.parquet``: read in record batches with pyarrow;
- ``.csv`` / ``.csv.gz``: a header line, then one record per row; empty cells are missing values.

Every problem with a file or a record raises :class:`~llm4tag.errors.DataError`, whose message names the
file, the line (JSONL, CSV: physical line, header = line 1) or row (Parquet: 1-based) and the field.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import os
import zlib
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from graph_store.durable import atomic_file
from llm4tag.errors import DataError
from llm4tag.item_rules import Item, ItemProblem, check_item, check_string, is_missing, json_type
from llm4tag.vocabulary_entry import Tag  # read by read_tags; imported from here across the code

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "Item",
    "ItemsFile",
    "Tag",
    "detect_format",
    "read_items",
    "read_records",
    "read_tags",
    "write_records",
]

logger = logging.getLogger("llm4tag.data")

SUPPORTED_EXTENSIONS = (".jsonl", ".jsonl.gz", ".parquet", ".csv", ".csv.gz")

_TAG_FIELDS = ("tag", "description")
_MAX_UNKNOWN_EXAMPLES = 5
_PARQUET_BATCH_ROWS = 4096


@dataclass
class ItemsFile:
    """The items read from one file, with what was dropped on the way."""

    path: str
    items: list[Item]
    unknown_tag_annotations: int = 0
    items_with_unknown_tags: int = 0
    unknown_tag_examples: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)


# --- formats


def detect_format(path: str | os.PathLike[str]) -> tuple[str, bool]:
    """Return ``(format, gzipped)`` for a path: format is ``"jsonl"``, ``"parquet"`` or ``"csv"``.

    Raises DataError naming the extension when it is not one of :data:`SUPPORTED_EXTENSIONS`.
    """
    name = Path(path).name.lower()
    if name.endswith(".jsonl.gz"):
        return "jsonl", True
    if name.endswith(".jsonl"):
        return "jsonl", False
    if name.endswith(".parquet"):
        return "parquet", False
    if name.endswith(".csv.gz"):
        return "csv", True
    if name.endswith(".csv"):
        return "csv", False
    suffixes = "".join(Path(path).suffixes)
    shown = f"'{suffixes}'" if suffixes else "(none)"
    raise DataError(
        str(path),
        f"unsupported file extension {shown}; use one of {', '.join(SUPPORTED_EXTENSIONS)}",
    )


def _check_readable(path: str) -> None:
    p = Path(path)
    if p.is_dir():
        raise DataError(path, "is a directory, expected a file")
    if not p.exists():
        raise DataError(path, "file not found")
    if not os.access(p, os.R_OK):
        raise DataError(path, "file is not readable (permission denied)")


# --- reading


def read_records(
    path: str | os.PathLike[str], bad_lines: list[DataError] | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_or_row, record)`` for every record of a file, streaming.

    Numbers are 1-based: JSONL counts physical lines (blank lines are skipped but counted), CSV counts
    physical lines with the header as line 1 (a record spanning lines gets the line it starts on),
    Parquet counts rows. CSV values are strings, ``None`` for an empty cell. The format is checked and the
    file opened lazily on first iteration, except that an unsupported extension, a missing file or a
    directory raise DataError at once.

    With ``bad_lines`` (a list), a JSONL line that is not a JSON object is appended there as its
    DataError and skipped, so that a bulk job can set it aside and read on; a file that cannot be read
    or decoded still raises.
    """
    spath = str(path)
    fmt, gz = detect_format(spath)
    _check_readable(spath)
    if fmt == "jsonl":
        return _read_jsonl(spath, gz, bad_lines)
    if fmt == "csv":
        return _read_csv(spath, gz)
    return _read_parquet(spath)


def _lines(path: str, gz: bool) -> Iterator[str]:
    """Yield the file's lines as text, decoding line by line so that an error names its line."""
    lineno = 0
    try:
        fh: IO[bytes] = gzip.open(path, "rb") if gz else open(path, "rb")  # noqa: SIM115
    except OSError as exc:
        raise DataError(path, f"cannot open: {exc.strerror or exc}") from exc
    with fh:
        try:
            for lineno, raw in enumerate(fh, 1):
                if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]  # UTF-8 byte-order mark
                try:
                    yield raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataError(
                        path, f"not valid UTF-8 text: {exc.reason} at byte {exc.start + 1}", line=lineno
                    ) from exc
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise DataError(path, f"cannot read compressed data: {exc}", line=lineno + 1) from exc
        except OSError as exc:
            raise DataError(path, f"cannot read: {exc.strerror or exc}", line=lineno + 1) from exc


def _read_jsonl(
    path: str, gz: bool, bad_lines: list[DataError] | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    for lineno, line in enumerate(_lines(path, gz), 1):
        if not line.strip():
            continue
        problem = None
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            problem = DataError(path, f"invalid JSON: {exc.msg} (column {exc.colno})", line=lineno)
        except RecursionError:
            problem = DataError(path, "invalid JSON: nested too deeply", line=lineno)
        else:
            if not isinstance(record, dict):
                problem = DataError(path, f"expected a JSON object, got {json_type(record)}", line=lineno)
        if problem is None:
            yield lineno, record
        elif bad_lines is None:
            raise problem
        else:
            bad_lines.append(problem)


def _read_csv(path: str, gz: bool) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.reader(_lines(path, gz))
    header: list[str] | None = None
    previous_line = 0
    try:
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            start = previous_line + 1
            previous_line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue  # blank line
            if header is None:
                header = [h.strip() for h in row]
                seen: set[str] = set()
                for name in header:
                    if not name:
                        raise DataError(path, "empty column name in the header", line=start)
                    if name in seen:
                        raise DataError(path, f"duplicate column '{name}' in the header", line=start)
                    seen.add(name)
                continue
            if len(row) != len(header):
                raise DataError(
                    path,
                    f"row has {len(row)} cells but the header has {len(header)} columns",
                    line=start,
                )
            yield (
                start,
                {name: (cell if cell != "" else None) for name, cell in zip(header, row, strict=True)},
            )
    except csv.Error as exc:
        raise DataError(path, f"malformed CSV: {exc}", line=previous_line + 1) from exc


def _read_parquet(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    row = 0
    try:
        pf = pq.ParquetFile(path)
        for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
            for record in batch.to_pylist():
                row += 1
                yield row, record
    except (pa.ArrowException, OSError, ValueError) as exc:
        where = f" after row {row}" if row else ""
        raise DataError(path, f"cannot read Parquet file{where}: {exc}") from exc


# --- items


def _check_string(path: str, line: int, name: str, value: Any) -> str:
    try:
        return check_string(name, value)
    except ItemProblem as problem:
        raise DataError(path, problem.message, line=line, field=name) from None


def _decoded_tags(path: str, line: int, value: Any, fmt: str) -> Any:
    """A CSV cell's tags as a list (a JSON array, or names separated by ``|``); other formats' as they
    are."""
    if fmt != "csv" or not isinstance(value, str):
        return value
    cell = value.strip()
    if not cell.startswith("["):
        return [part.strip() for part in cell.split("|")]
    try:
        return json.loads(cell)
    except json.JSONDecodeError as exc:
        raise DataError(
            path, f"cell starts with '[' but is not a JSON array: {exc.msg}", line=line, field="tags"
        ) from exc


def read_items(
    path: str | os.PathLike[str],
    *,
    vocabulary: Collection[str] | None = None,
    strict_tags: bool = False,
    split: str | None = None,
    require_tags: bool = False,
    aliases: Mapping[str, str] | None = None,
) -> ItemsFile:
    """Read and validate an items file.

    - ``id`` and ``text`` are required non-empty strings (an integer-typed id column of a CSV or Parquet
      file is converted to a string; JSONL ids must be strings); ids must be unique in the file.
    - ``tags`` is optional: a list of non-empty strings (CSV: a JSON array or a ``|``-separated cell);
      duplicates within an item are dropped keeping the first. Missing or null means "not annotated"
      (``Item.tags is None``), which ``require_tags=True`` turns into an error.
    - With ``vocabulary``, tags outside it are dropped and counted (and a warning is logged), or with
      ``strict_tags=True`` rejected.
    - With ``split``, only records whose ``split`` field equals it are kept; every record must have one.
    - With ``aliases``, a tag given by another name (a SKOS concept's URI or notation) becomes its tag.
    - Every other non-null field goes to ``Item.extra``.
    """
    spath = str(path)
    fmt, _ = detect_format(spath)
    vocab: Collection[str] | None = None
    if vocabulary is not None:
        vocab = vocabulary if isinstance(vocabulary, set | frozenset | dict) else set(vocabulary)

    items: list[Item] = []
    first_line: dict[str, int] = {}
    splits_seen: dict[str, None] = {}
    records = 0
    unknown_annotations = 0
    items_with_unknown = 0
    unknown_examples: dict[str, None] = {}

    for line, record in read_records(spath):
        records += 1
        try:
            # Typed columns (CSV, Parquet) may hold integer ids; a JSON id must be a string.
            item = check_item(
                record, numbers=fmt != "jsonl", tags=_decoded_tags(spath, line, record.get("tags"), fmt)
            )
        except ItemProblem as problem:
            raise DataError(spath, problem.message, line=line, field=problem.field) from None
        item_id, tags = item.id, item.tags
        if item_id in first_line:
            raise DataError(
                spath,
                f"duplicate id '{item_id}' (first on line {first_line[item_id]})",
                line=line,
                field="id",
            )
        first_line[item_id] = line
        if aliases and tags is not None:
            tags = tuple(dict.fromkeys(aliases.get(t, t) for t in tags))

        if split is not None:
            value = record.get("split")
            if is_missing(value):
                raise DataError(
                    spath, f"missing, but split '{split}' was asked for", line=line, field="split"
                )
            splits_seen.setdefault(str(value), None)
            if value != split:
                continue

        if tags is None:
            if require_tags:
                raise DataError(spath, "missing; annotated items are required here", line=line, field="tags")
        elif vocab is not None:
            kept = tuple(t for t in tags if t in vocab)
            if len(kept) != len(tags):
                unknown = [t for t in tags if t not in vocab]
                if strict_tags:
                    raise DataError(
                        spath, f"tag '{unknown[0]}' is not in the vocabulary", line=line, field="tags"
                    )
                unknown_annotations += len(unknown)
                items_with_unknown += 1
                for tag in unknown:
                    if len(unknown_examples) >= _MAX_UNKNOWN_EXAMPLES:
                        break
                    unknown_examples.setdefault(tag, None)
                tags = kept

        items.append(Item(id=item_id, text=item.text, tags=tags, extra=item.extra))

    if records == 0:
        raise DataError(spath, "no items (the file holds no records)")
    if not items:
        present = ", ".join(f"'{s}'" for s in splits_seen) or "none"
        raise DataError(spath, f"no items with split '{split}' (splits present: {present})", field="split")

    if unknown_annotations:
        logger.warning(
            "%s: dropped %d tag annotation(s) on %d item(s) because the tag is not in the vocabulary, "
            "e.g. %s",
            spath,
            unknown_annotations,
            items_with_unknown,
            ", ".join(repr(t) for t in unknown_examples),
        )
    return ItemsFile(
        path=spath,
        items=items,
        unknown_tag_annotations=unknown_annotations,
        items_with_unknown_tags=items_with_unknown,
        unknown_tag_examples=list(unknown_examples),
    )


# --- tags


def read_tags(path: str | os.PathLike[str], language: str | None = None) -> list[Tag]:
    """Read a tag vocabulary: ``tag`` (required, unique, non-empty string), ``description`` (optional);
    or a SKOS file (``.ttl``, ``.rdf``, ...: :func:`llm4tag.skos.read_skos`, labels in ``language``)."""
    from llm4tag.skos import is_skos_path, read_skos

    if is_skos_path(path):
        return read_skos(path, language)
    spath = str(path)
    tags: list[Tag] = []
    first_line: dict[str, int] = {}
    for line, record in read_records(spath):
        name = _check_string(spath, line, "tag", record.get("tag"))
        if name in first_line:
            raise DataError(
                spath, f"duplicate tag '{name}' (first on line {first_line[name]})", line=line, field="tag"
            )
        first_line[name] = line
        description = record.get("description")
        if is_missing(description):
            description = None
        elif not isinstance(description, str):
            raise DataError(
                spath,
                f"must be a string or null, got {json_type(description)}",
                line=line,
                field="description",
            )
        extra = {k: v for k, v in record.items() if k not in _TAG_FIELDS and not is_missing(v)}
        tags.append(Tag(tag=name, description=description, extra=extra))
    if not tags:
        raise DataError(spath, "no tags (the file holds no records)")
    return tags


# --- writing


def _json_default(value: Any) -> Any:
    """Let numpy scalars/arrays, sets and other mappings through json.dumps."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, set | frozenset):
        return sorted(value)
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write a value of type {type(value).__name__}")


def _csv_cell(value: Any) -> str:
    if is_missing(value):
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return json.dumps(value)
    if hasattr(value, "tolist"):  # numpy scalar or array
        return _csv_cell(value.tolist())
    return json.dumps(value, ensure_ascii=False, default=_json_default)


def write_records(path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]]) -> int:
    """Write rows to a file whose format is chosen by extension; return how many rows were written.

    The file is written atomically (graph_store.durable.atomic_file): to a temporary file in the same
    directory, fsynced, then moved over ``path``; a failure leaves any previous file untouched. Parent
    directories are created. JSONL is streamed; CSV and Parquet collect the rows first (CSV columns:
    every key, in order of appearance; lists and dicts as JSON strings; Parquet schema inferred by
    ``pyarrow.Table.from_pylist``).
    """
    spath = str(path)
    fmt, gz = detect_format(spath)
    target = Path(spath)
    if target.is_dir():
        raise DataError(spath, "is a directory, expected a file")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(spath, f"cannot create the parent directory: {exc.strerror or exc}") from exc
    try:
        with atomic_file(target) as raw:
            count = _write_parquet(spath, raw, rows) if fmt == "parquet" else _write_text(raw, rows, fmt, gz)
    except OSError as exc:
        raise DataError(spath, f"cannot write: {exc.strerror or exc}") from exc
    return count


def _write_text(raw: IO[bytes], rows: Iterable[Mapping[str, Any]], fmt: str, gz: bool) -> int:
    gzf = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if gz else None
    binary: IO[bytes] = gzf if gzf is not None else raw  # type: ignore[assignment]
    text = io.TextIOWrapper(binary, encoding="utf-8", newline="" if fmt == "csv" else "\n")
    count = 0
    try:
        if fmt == "jsonl":
            for row in rows:
                text.write(json.dumps(dict(row), ensure_ascii=False, default=_json_default))
                text.write("\n")
                count += 1
        else:
            materialised = [dict(row) for row in rows]
            columns: dict[str, None] = {}
            for row in materialised:
                for key in row:
                    columns.setdefault(str(key), None)
            writer = csv.writer(text, lineterminator="\n")
            if columns:
                writer.writerow(list(columns))
            for row in materialised:
                writer.writerow([_csv_cell(row.get(col)) for col in columns])
                count += 1
        text.flush()
    finally:
        text.detach()  # keep raw open: the caller fsyncs and closes it
        if gzf is not None:
            gzf.close()
    return count


def _write_parquet(path: str, raw: IO[bytes], rows: Iterable[Mapping[str, Any]]) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    materialised = [dict(row) for row in rows]
    columns: dict[str, None] = {}
    for row in materialised:
        for key in row:
            columns.setdefault(key, None)
    # Column by column, so that every key of every row becomes a column and each column's type is
    # inferred from all its values (Table.from_pylist infers the schema from the first row only).
    try:
        table = pa.Table.from_pydict({key: [row.get(key) for row in materialised] for key in columns})
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise DataError(path, f"cannot build a Parquet table from these rows: {exc}") from exc
    pq.write_table(table, raw)
    return len(materialised)
