"""Copy a store or a model folder from shared storage into a node-local cache, before anything loads it.

    python -m cluster.storage sync gs://bucket/llm4tag/models /cache/llm4tag/models
    python -m cluster.storage sync s3://bucket/stores/prod /mnt/llm4tag/stores/prod --if-missing

The source is a local path or any URI pyarrow's filesystems open (s3://, gs://, hdfs://, file://).
Cluster nodes run it before Ray starts (an init container in cluster/rayservice.yaml, setup commands
in cluster/ray-cluster.yaml), so replicas read local files and the Serve config names local paths.

The destination is replaced whole or not at all: the copy goes to a hidden sibling folder, is fsynced,
and is renamed into place; a marker file lists what was copied (path, size, mtime), so a rerun with an
unchanged source copies nothing. A crash leaves the old copy (or none) and a temporary that the next
run removes: a loader never sees a half-copied folder.

Models and stores built offline are read-only here. The graph journal and the feedback samples are
written while serving, so they need storage that every node shares and that has appends, locks and
fsync (a ReadWriteMany volume: NFSv4, EFS, Filestore); object stores have none of the three.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from graph_store.durable import atomic_folder, exclusive_lock, recover_folder

MARKER = ".llm4tag-synced.json"


class SyncError(Exception):
    pass


def open_source(source: str):
    """(pyarrow filesystem, path inside it) of a local path or a URI."""
    from pyarrow import fs

    if "://" not in source:
        return fs.LocalFileSystem(), str(Path(source).expanduser().resolve())
    try:
        return fs.FileSystem.from_uri(source)
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError/ValueError depending on the scheme
        raise SyncError(f"cannot open {source}: {exc}") from exc


def listing(filesystem, root: str) -> dict[str, list[int]]:
    """Relative path -> [size, mtime in ns] of every file under root (what the marker records)."""
    from pyarrow import fs

    info = filesystem.get_file_info(root)
    if info.type == fs.FileType.NotFound:
        raise SyncError(f"{root} does not exist")
    if info.type != fs.FileType.Directory:
        raise SyncError(f"{root} is not a folder")
    files = {}
    for entry in filesystem.get_file_info(fs.FileSelector(root, recursive=True)):
        if entry.type == fs.FileType.File:
            relative = entry.path[len(root.rstrip("/")) + 1 :]
            files[relative] = [int(entry.size or 0), int(entry.mtime_ns or 0)]
    if not files:
        raise SyncError(f"{root} holds no files")
    return files


def sync(source: str, destination: str | os.PathLike, *, if_missing: bool = False) -> dict:
    """Make ``destination`` a complete copy of ``source``; returns what was done."""
    started = time.perf_counter()
    dest = Path(destination).expanduser().resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Two syncs of one destination on a node (two init containers, a retry) must not interleave.
    with exclusive_lock(dest.parent / f".{dest.name}.lock"):
        recover_folder(dest)
        if if_missing and dest.exists():
            return {"source": source, "destination": str(dest), "copied": 0, "skipped": "exists"}
        filesystem, root = open_source(source)
        files = listing(filesystem, root)
        if _marker(dest) == {"source": source, "files": files}:
            return {"source": source, "destination": str(dest), "copied": 0, "skipped": "unchanged"}
        with atomic_folder(dest) as tmp:
            _copy(filesystem, root, files, tmp)
            (tmp / MARKER).write_text(json.dumps({"source": source, "files": files}))
    size = sum(v[0] for v in files.values())
    return {
        "source": source,
        "destination": str(dest),
        "copied": len(files),
        "bytes": size,
        "seconds": round(time.perf_counter() - started, 2),
    }


def _copy(filesystem, root: str, files: dict[str, list[int]], tmp: Path) -> None:
    for relative in sorted(files):
        target = tmp / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        with filesystem.open_input_stream(f"{root.rstrip('/')}/{relative}") as src, open(target, "wb") as out:
            while chunk := src.read(1 << 22):
                out.write(chunk)
        if os.path.getsize(target) != files[relative][0]:
            raise SyncError(f"{relative} changed while it was copied; run the sync again")


def _marker(dest: Path) -> dict | None:
    try:
        return json.loads((dest / MARKER).read_text())
    except (OSError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.storage", description=__doc__.split("\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    cmd = verbs.add_parser("sync", help="copy SOURCE (path or URI) to the local folder DEST, whole")
    cmd.add_argument("source")
    cmd.add_argument("dest")
    cmd.add_argument("--if-missing", action="store_true", help="do nothing when DEST exists")
    args = parser.parse_args(argv)
    try:
        report = sync(args.source, args.dest, if_missing=args.if_missing)
    except (SyncError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
