"""Shared storage for a multi-node cluster: node-local store copies that follow one shared journal,
and the whole-or-nothing copy from a path or URI into a node's cache (real files, real pyarrow)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import build_hand_store, vec

from cluster.storage import MARKER, SyncError, main, sync
from graph_store import GraphStore, StoreError
from graph_store.journal import Journal


def _two_node_copies(tmp_path: Path) -> tuple[Path, Path, Path]:
    build_hand_store().save(tmp_path / "origin")
    node_a, node_b = tmp_path / "node-a" / "store", tmp_path / "node-b" / "store"
    sync(str(tmp_path / "origin"), node_a)
    sync(f"file://{tmp_path / 'origin'}", node_b)  # the URI form goes through pyarrow's filesystem
    return node_a, node_b, tmp_path / "shared" / "journal"


def test_node_copies_follow_one_shared_journal(tmp_path):
    node_a, node_b, journal = _two_node_copies(tmp_path)
    a = GraphStore.load(node_a, journal_dir=journal)
    b = GraphStore.load(node_b, journal_dir=journal)
    assert a.journal.path == b.journal.path == journal / "journal.jsonl"
    v = vec(0, 0, 0, 0, 0.6, 0, 0.8, 0)
    a.record(["new-1"], v[None, :], [["eps"]], ["written on node a"])
    local = node_a / "journal.jsonl"  # the copy's own journal (a header, from the save) stays as it was
    assert len(local.read_bytes().splitlines()) == 1
    assert b.sync() == 1
    pos = b.graph.content_pos["new-1"]
    assert [b.graph.tag_names[t] for t in b.graph.det_tags(pos)] == ["eps"]
    # A replica started later (a replacement on a new node) replays the shared journal on load.
    node_c = tmp_path / "node-c" / "store"
    sync(str(tmp_path / "origin"), node_c)
    c = GraphStore.load(node_c, journal_dir=journal)
    assert "new-1" in c.graph.content_pos
    assert c.stats()["contents"] == a.stats()["contents"] == 8


def test_a_node_copy_of_another_version_refuses_the_shared_journal(tmp_path):
    # A node whose store copy is not the version the shared journal continues must neither answer
    # from a graph that silently misses the journal's writes nor replace the journal (other nodes'
    # acknowledged writes) with one of its own version.
    node_a, node_b, journal = _two_node_copies(tmp_path)
    a = GraphStore.load(node_a, journal_dir=journal)
    a.record(["new-1"], vec(0, 0, 0, 0, 0.6, 0, 0.8, 0)[None, :], [["eps"]], ["written on node a"])
    before = (journal / "journal.jsonl").read_bytes()
    GraphStore.load(node_b).save(node_b)  # node b's copy moves on to a version of its own
    with pytest.raises(StoreError, match="sync the store copy"):
        GraphStore.load(node_b, journal_dir=journal)
    stale = GraphStore.load(node_b)  # loaded without the journal, then pointed at it: writes refused
    stale.journal = Journal(node_b, stale.journal.version, journal_dir=journal)
    with pytest.raises(StoreError, match="sync the store copy"):
        stale.record(["new-2"], vec(0, 0, 0, 0, 0.8, 0, 0.6, 0)[None, :], [["eps"]], ["from node b"])
    assert (journal / "journal.jsonl").read_bytes() == before
    assert "new-1" in GraphStore.load(node_a, journal_dir=journal).graph.content_pos


def test_journal_dir_that_cannot_be_created_is_a_clear_error(tmp_path):
    node_a, _, _ = _two_node_copies(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError, match="cannot create the journal folder"):
        GraphStore.load(node_a, journal_dir=blocker / "journal")


def test_sync_copies_whole_and_skips_unchanged(tmp_path):
    source = tmp_path / "models" / "m"
    (source / "sub").mkdir(parents=True)
    (source / "config.json").write_text('{"a": 1}')
    (source / "sub" / "weights.bin").write_bytes(np.arange(1000, dtype=np.float32).tobytes())
    dest = tmp_path / "cache" / "m"
    first = sync(str(source), dest)
    assert first["copied"] == 2 and first["bytes"] == 4000 + 8
    assert (dest / "sub" / "weights.bin").read_bytes() == (source / "sub" / "weights.bin").read_bytes()
    assert json.loads((dest / MARKER).read_text())["source"] == str(source)
    assert sync(str(source), dest)["skipped"] == "unchanged"
    (source / "config.json").write_text('{"a": 2, "b": 3}')
    assert sync(str(source), dest)["copied"] == 2
    assert (dest / "config.json").read_text() == '{"a": 2, "b": 3}'
    assert sync(str(source), dest, if_missing=True)["skipped"] == "exists"
    assert sorted(p.name for p in dest.parent.iterdir()) == [".m.lock", "m"]  # no temporaries left


def test_a_crash_mid_swap_keeps_the_old_copy(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "f").write_text("x")
    dest = tmp_path / "cache" / "dst"
    sync(str(source), dest)
    # As if a crash came between the two renames of a swap: only the old copy is left, aside.
    shutil.move(dest, dest.parent / ".dst.old-deadbeef")
    (dest.parent / ".dst.tmp-cafecafe").mkdir()  # and a half-written temporary
    assert sync(str(source), dest)["skipped"] == "unchanged"  # the old copy came back, still current
    assert (dest / "f").read_text() == "x"
    assert sorted(p.name for p in dest.parent.iterdir()) == [".dst.lock", "dst"]


def test_bad_sources_are_clear_errors(tmp_path, capsys):
    with pytest.raises(SyncError, match="does not exist"):
        sync(str(tmp_path / "missing"), tmp_path / "d")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SyncError, match="holds no files"):
        sync(str(tmp_path / "empty"), tmp_path / "d")
    assert main(["sync", "nosuchscheme://x/y", str(tmp_path / "d")]) == 2
    assert capsys.readouterr().err.startswith("error: cannot open nosuchscheme://x/y")
    assert not (tmp_path / "d").exists()
