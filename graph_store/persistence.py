"""A store folder on disk: versions of the graph and its indexes, read and written.

    STORE/CURRENT            "v000002"
    STORE/v000002/manifest.json, vertices.parquet, edges.parquet, contents.faiss, tags.faiss
    STORE/journal.jsonl      writes since v000002 (graph_store/journal.py)

The versions are a :class:`graph_store.durable.VersionedFolder`: a save writes a complete new version
beside the old one and then replaces CURRENT atomically; a crash at any point leaves the previous
version readable. The manifest goes last, so a folder without one is never mistaken for a version.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from graph_store.ann import VectorIndex
from graph_store.config import GraphConfig
from graph_store.durable import (
    CURRENT,
    Carry,
    NewVersion,
    VersionedFolder,
    VersionMoved,
    durable_file,
    file_digest,
    fsync_file,
    write_file,
)
from graph_store.errors import StoreError
from graph_store.graph import CONTENT, DETERMINISTIC, TAG, ContentTagGraph
from graph_store.journal import Journal

FORMAT_VERSION = 1
KEEP_VERSIONS = 2
VERSION_FILES = ("vertices.parquet", "edges.parquet", "contents.faiss", "tags.faiss")
_VERSION_RE = re.compile(r"^v(\d{6,})$")


def store_folder(root: str | Path) -> VersionedFolder:
    return VersionedFolder(root, lambda n: f"v{n:06d}", _VERSION_RE.pattern, keep=KEEP_VERSIONS)


def current_version(root: Path) -> Path:
    pointer = root / CURRENT
    if not root.is_dir():
        raise StoreError(f"store {root} does not exist")
    if not pointer.is_file():
        raise StoreError(f"{root} is not a graph store (no {CURRENT} file); build one with `llm4tag build`")
    name = pointer.read_text().strip()
    folder = root / name
    if not name or not folder.is_dir():
        raise StoreError(f"store {root} is damaged: {CURRENT} names '{name}', which does not exist")
    return folder


def read_manifest(folder: Path) -> dict:
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StoreError(f"store version {folder} has no readable manifest.json: {exc}") from exc
    if not isinstance(manifest, dict):
        raise StoreError(f"store version {folder} is damaged: manifest.json is not a JSON object")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise StoreError(
            f"store {folder.parent} has format version {version}; this llm4tag reads version {FORMAT_VERSION}"
        )
    required = ("encoder_id", "shard", "content_index", "tag_index", "config")
    missing = [key for key in required if key not in manifest]
    if missing:
        raise StoreError(f"store version {folder} is damaged: manifest.json lacks {', '.join(missing)}")
    return manifest


def _write_parquet(table: pa.Table, path: Path) -> None:
    with durable_file(path) as fh:
        pq.write_table(table, fh)


def write_version(
    folder: Path,
    graph: ContentTagGraph,
    content_index: VectorIndex,
    tag_index: VectorIndex,
    manifest: dict[str, Any],
) -> None:
    """The files of one version, each fsynced, the manifest last."""
    graph.flush()
    graph.compact()
    n_vertices = len(graph.vertex_kind)
    keys, texts = [None] * n_vertices, [None] * n_vertices
    for pos, vid in enumerate(graph.tag_vid):
        keys[vid], texts[vid] = graph.tag_names[pos], graph.tag_descriptions[pos]
    for pos, vid in enumerate(graph.content_vid):
        keys[vid], texts[vid] = graph.content_ids[pos], graph.content_texts[pos]
    vertices = pa.table(
        {
            "vid": pa.array(np.arange(n_vertices), pa.int64()),
            "kind": pa.array(np.asarray(graph.vertex_kind, np.int8), pa.int8()),
            "key": pa.array(keys, pa.string()),
            "text": pa.array(texts, pa.string()),
        }
    )
    src, dst, kind, weight = graph.edges.arrays()
    edges = pa.table({"src": src, "dst": dst, "kind": kind, "weight": weight})
    _write_parquet(vertices, folder / "vertices.parquet")
    _write_parquet(edges, folder / "edges.parquet")
    content_index.save(str(folder / "contents.faiss"))
    tag_index.save(str(folder / "tags.faiss"))
    for name in ("contents.faiss", "tags.faiss"):
        fsync_file(folder / name)
    manifest = {
        "format_version": FORMAT_VERSION,
        **manifest,
        "files": {name: file_digest(folder / name) for name in VERSION_FILES},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_file(folder / "manifest.json", json.dumps(manifest, indent=2).encode())


def read_version(
    root: Path, folder: Path, manifest: dict, config: GraphConfig
) -> tuple[ContentTagGraph, VectorIndex, VectorIndex]:
    """The graph and the two indexes of one version; a file missing, cut short or changed since the
    save is refused, naming it, before anything is read."""
    check_files(root, folder, manifest)
    try:
        vertices = pq.read_table(folder / "vertices.parquet").to_pydict()
        edges = pq.read_table(folder / "edges.parquet")
    except (OSError, pa.ArrowInvalid) as exc:
        raise StoreError(f"store {root} is damaged: {exc}") from exc
    graph = ContentTagGraph(flush_every=config.flush_every)
    kinds = vertices["kind"]
    if vertices["vid"] != list(range(len(kinds))):
        raise StoreError(f"store {root} is damaged: vertex ids are not dense")
    # Vertices are re-added in vid order, a run of one kind at a time, so that the saved edge
    # endpoints stay valid.
    start = 0
    while start < len(kinds):
        end = start
        while end < len(kinds) and kinds[end] == kinds[start]:
            end += 1
        add = graph.add_tags if kinds[start] == TAG else graph.add_contents
        add(vertices["key"][start:end], vertices["text"][start:end])
        start = end
    src = edges.column("src").to_numpy()
    dst = edges.column("dst").to_numpy()
    kind = edges.column("kind").to_numpy()
    weight = edges.column("weight").to_numpy()
    det = kind == DETERMINISTIC
    vertex_pos = np.asarray(graph.vertex_pos, np.int64)
    vertex_kind = np.asarray(graph.vertex_kind, np.int8)
    # Deterministic edges were written content -> tag; normalise in case of either order.
    c_vid = np.where(vertex_kind[src[det]] == CONTENT, src[det], dst[det])
    t_vid = np.where(vertex_kind[src[det]] == CONTENT, dst[det], src[det])
    graph.add_deterministic_bulk(vertex_pos[c_vid], vertex_pos[t_vid])
    graph.edges = type(graph.edges)()
    graph.edges.append(src, dst, kind, weight)
    graph.flush()
    content_index = VectorIndex.load(str(folder / "contents.faiss"), manifest["content_index"])
    tag_index = VectorIndex.load(str(folder / "tags.faiss"), manifest["tag_index"])
    content_index.configure(config.content_index)
    tag_index.configure(config.tag_index)
    return graph, content_index, tag_index


def check_files(root: Path, folder: Path, manifest: dict) -> None:
    # Versions saved before the manifest listed its files carry no digests: those are only
    # checked for presence (and by the readers, which refuse what they cannot parse).
    recorded = manifest.get("files") or {}
    for name in VERSION_FILES:
        path = folder / name
        where = f"store {root} is damaged: {folder.name}/{name}"
        if not path.is_file():
            raise StoreError(f"{where}: file missing")
        if name not in recorded:
            continue
        try:
            actual = file_digest(path)
        except OSError as exc:
            raise StoreError(f"{where}: cannot read it: {exc.strerror or exc}") from exc
        if actual != recorded[name]:
            raise StoreError(f"{where}: its size or checksum differs from the manifest's")


class StoreSave:
    """One save of a store into a folder (inside :meth:`graph_store.store.GraphStore.saving`): write
    the version, then make it live."""

    def __init__(self, store: Any, folder: VersionedFolder):
        self.store = store
        self.folder = folder
        # Saving to the folder the store continues: its journal moves on to the new version.
        self.own = (
            store.journal is not None
            and store.folder is not None
            and store.folder.resolve() == folder.root.resolve()
        )
        self.version: NewVersion | None = None
        self.covered: tuple[int | None, int] = (None, 0)

    def write(self) -> Path:
        store = self.store
        with store._write_lock:
            manifest = store.manifest()
            if self.own:
                try:
                    store.journal.ensure_own()
                except VersionMoved as exc:
                    if store._unjournaled:
                        raise StoreError(
                            f"another process saved {self.folder.root} since this one loaded it, and this "
                            "store holds changes made in memory only (insert, write_back); they would be "
                            "lost: write them with record() instead"
                        ) from exc
                    store.reload()  # everything this process wrote is in the journal, hence in there
                store.sync()
                self.covered = store.journal.followed
                manifest["journal_carry"] = Carry(store.journal.version, self.covered[1]).to_dict()
            with self.folder.new_version() as version:
                write_version(version.path, store.graph, store.content_index, store.tag_index, manifest)
        self.version = version
        return version.path

    def activate(self) -> None:
        store, name = self.store, self.version.name
        if self.own:
            try:
                store.journal.switch(name, self.covered, lambda: self.folder.activate(name))
            except VersionMoved as exc:
                shutil.rmtree(self.version.path, ignore_errors=True)
                raise StoreError(
                    f"another process saved {self.folder.root} while this save ran; reload and save again"
                ) from exc
            store.sync()  # what other processes appended while the version was written
            return
        journal = Journal(self.folder.root, name)
        journal.start(name, lambda: self.folder.activate(name))
        if store.journal is None:
            # A store built in memory continues the folder it was first saved to.
            store.journal, store.folder = journal, self.folder.root
