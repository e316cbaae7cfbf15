"""A knowledge base on disk: snapshots, and the log of additions since the live one.

    FOLDER/CURRENT                       "snapshot-000002-1a2b3c4d"  (the live snapshot, replaced atomically)
    FOLDER/snapshot-000002-1a2b3c4d/     records.jsonl, vectors.npy, manifest.json (written last)
    FOLDER/appended.jsonl                the log of additions since that snapshot (first line: a header
                                         naming the snapshot; then one entry with its vector a line)

The snapshots are a :class:`graph_store.durable.VersionedFolder` and the log a
:class:`graph_store.durable.VersionLog`, as the graph store's versions and journal are: a save writes a
complete snapshot beside the live one and switches to it under the log's lock, carrying over what other
processes appended while it was written; appends are fsynced before they return; a torn last line is
cut off by the next append, under the lock.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from graph_store.durable import (
    CURRENT,
    AppendLog,
    Carry,
    VersionedFolder,
    VersionLog,
    durable_file,
    file_digest,
    write_file,
)
from llm4tag.errors import DataError
from llm4tag.knowledge.entries import KnowledgeError, Sample, Snippet

FORMAT = "llm4tag-knowledge"
FORMAT_VERSION = 1
LOG_NAME = "appended.jsonl"
RECORDS_NAME = "records.jsonl"
VECTORS_NAME = "vectors.npy"
MANIFEST_NAME = "manifest.json"
KEEP_SNAPSHOTS = 2
_SNAPSHOT_RE = re.compile(r"^snapshot-(\d{6,})-[0-9a-f]{8}$")


def snapshot_folder(root: str | Path) -> VersionedFolder:
    name_of = lambda n: f"snapshot-{n:06d}-{uuid.uuid4().hex[:8]}"  # noqa: E731
    return VersionedFolder(root, name_of, _SNAPSHOT_RE.pattern, keep=KEEP_SNAPSHOTS)


def open_log(root: Path, kind: str, snapshot: str, encoder_id: str, carry: Carry | None) -> VersionLog:
    """The log of ``snapshot`` in ``root``, to append to and follow."""
    path = root / LOG_NAME
    return VersionLog(
        AppendLog(path),
        fields={"format": f"{FORMAT}-log", "kind": kind, "encoder_id": encoder_id},
        version_key="snapshot",
        version=snapshot,
        live=snapshot_folder(root).live,
        carry=carry,
        error=lambda problem, line: DataError(str(path), problem, line=line),
        what="log",
    )


def log_line(entry: Sample | Snippet, vector: np.ndarray) -> bytes:
    record = entry.to_record()
    # float32 -> float is exact, and JSON writes the shortest repr that reads back to it.
    record["vector"] = [float(x) for x in vector]
    return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")


def _write_npy(path: Path, array: np.ndarray) -> None:
    with durable_file(path) as fh:
        np.save(fh, array, allow_pickle=False)


def check_kind(root: Path, kind: str) -> None:
    """Refuse to save over another kind of base (or something else) in the same folder."""
    if root.exists() and not root.is_dir():
        raise KnowledgeError(f"cannot save a knowledge base to {root}: it is a file")
    if (root / CURRENT).exists():
        live_kind = read_manifest(current_snapshot(root), None)["kind"]
        if live_kind != kind:
            raise KnowledgeError(f"{root} holds a {live_kind} knowledge base; save the {kind} base elsewhere")


def write_snapshot(
    folder: Path,
    *,
    kind: str,
    encoder_id: str,
    dim: int,
    records: list[dict],
    vectors: np.ndarray,
    carry: Carry | None,
) -> None:
    """The files of one snapshot, each fsynced, the manifest last."""
    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in records]
    write_file(folder / RECORDS_NAME, "".join(lines).encode("utf-8"))
    _write_npy(folder / VECTORS_NAME, np.ascontiguousarray(vectors, dtype=np.float32))
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "encoder_id": encoder_id,
        "dim": dim,
        "count": len(records),
        "files": {n: file_digest(folder / n) for n in (RECORDS_NAME, VECTORS_NAME)},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if carry is not None:
        manifest["log_carry"] = carry.to_dict()
    # The manifest goes last: a folder without one is never taken for a snapshot.
    write_file(folder / MANIFEST_NAME, json.dumps(manifest, indent=2).encode("utf-8"))


def current_snapshot(root: Path) -> Path:
    if not root.exists():
        raise DataError(str(root), "knowledge base folder not found")
    if not root.is_dir():
        raise DataError(str(root), "is a file, expected a knowledge base folder")
    pointer = root / CURRENT
    if not pointer.is_file():
        raise DataError(
            str(root), f"not a knowledge base folder (no {CURRENT} file); build and save one first"
        )
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(str(pointer), f"damaged: cannot read it: {exc}") from exc
    folder = root / name
    if not _SNAPSHOT_RE.match(name) or not folder.is_dir():
        raise DataError(str(pointer), f"damaged: names snapshot '{name}', which does not exist")
    return folder


def read_manifest(snapshot: Path, kind: str | None) -> dict[str, Any]:
    path = snapshot / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(str(path), "damaged snapshot: manifest missing") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(str(path), f"damaged snapshot: unreadable manifest: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(str(path), f"not a manifest of an {FORMAT} snapshot")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(
            str(path),
            f"format version {manifest.get('format_version')}; this llm4tag reads version {FORMAT_VERSION}",
        )
    for key, types in (("kind", str), ("encoder_id", str), ("dim", int), ("count", int), ("files", dict)):
        if not isinstance(manifest.get(key), types):
            raise DataError(str(path), f"damaged snapshot: '{key}' is missing or invalid")
    if kind is not None and manifest["kind"] != kind:
        raise DataError(str(path), f"holds a {manifest['kind']} knowledge base, not a {kind} knowledge base")
    return manifest


def read_snapshot(snapshot: Path, manifest: dict[str, Any]) -> tuple[list[tuple[int, dict]], np.ndarray]:
    for name in (RECORDS_NAME, VECTORS_NAME):
        path = snapshot / name
        expected = manifest["files"].get(name)
        if not path.is_file():
            raise DataError(str(path), "damaged snapshot: file missing")
        try:
            actual = file_digest(path)
        except OSError as exc:
            raise DataError(str(path), f"cannot read: {exc.strerror or exc}") from exc
        if actual != expected:
            raise DataError(str(path), "damaged: its size or checksum differs from the manifest's")
    records: list[tuple[int, dict]] = []
    path = snapshot / RECORDS_NAME
    with open(path, "rb") as fh:
        for line, raw in enumerate(fh, 1):
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise DataError(str(path), f"damaged: invalid JSON: {exc}", line=line) from exc
            if not isinstance(record, dict):
                raise DataError(str(path), "damaged: expected a JSON object", line=line)
            records.append((line, record))
    path = snapshot / VECTORS_NAME
    try:
        vectors = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(str(path), f"damaged: cannot read the vectors: {exc}") from exc
    shape = (manifest["count"], manifest["dim"])
    if len(records) != manifest["count"] or vectors.dtype != np.float32 or vectors.shape != shape:
        raise DataError(
            str(snapshot),
            f"damaged: {len(records)} records and vectors of shape {vectors.shape} ({vectors.dtype}), "
            f"but the manifest says {shape} float32",
        )
    return records, vectors
