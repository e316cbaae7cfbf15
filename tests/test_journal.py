"""The store's write journal: durable upserts that every process holding the folder follows."""

from __future__ import annotations

import json
import logging
import multiprocessing

import numpy as np
import pytest
from conftest import build_hand_store, vec

from graph_store import GraphStore, ShardedStore, StoreError, open_store
from graph_store.journal import JOURNAL

NEW = vec(0, 0, 0.6, 0, 0, 0, 0.8, 0)  # near "gamma"; no hand item is this vector


@pytest.fixture
def folder(tmp_path):
    build_hand_store().save(tmp_path / "s")
    return tmp_path / "s"


def det_tags(store: GraphStore, item_id: str) -> set[str]:
    return {store.graph.tag_names[t] for t in store.graph.det_tags(store.graph.content_pos[item_id])}


def journal_lines(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / JOURNAL).read_text().splitlines()]


def test_a_write_through_one_replica_reaches_the_others_and_new_loads(folder):
    one, two = GraphStore.load(folder), GraphStore.load(folder)
    one.record(["n1"], NEW[None], [["gamma", "zeta"]], ["a new item"])
    assert det_tags(one, "n1") == {"gamma", "zeta"}
    assert "n1" not in two.graph.content_pos  # until it syncs (the deployment syncs before each search)
    assert two.sync() == 1 and det_tags(two, "n1") == {"gamma", "zeta"}
    assert two.graph.content_texts[two.graph.content_pos["n1"]] == "a new item"
    assert two.sync() == 0
    two.record(["a"], vec(1)[None], [["delta"]], [None])  # a known item: its tags become edges
    one.sync()
    assert "delta" in det_tags(one, "a")
    fresh = GraphStore.load(folder)  # a restarted replica replays the journal on load
    assert det_tags(fresh, "n1") == {"gamma", "zeta"} and "delta" in det_tags(fresh, "a")
    assert fresh.graph.num_contents == one.graph.num_contents == two.graph.num_contents
    # The new item is recalled through its edge: a query equal to it finds zeta via C2C2T.
    hits = {c.tag: c for c in fresh.recall(NEW[None])[0]}
    assert "n1" in (hits["zeta"].via or ())


def test_replaying_twice_changes_nothing(folder):
    store = GraphStore.load(folder)
    store.record(["n1"], NEW[None], [["gamma"]], ["x"])
    store.record(["n1"], NEW[None], [["gamma"]], ["x"])
    edges = store.stats()["deterministic_edges"]
    again = GraphStore.load(folder)
    assert again.stats()["deterministic_edges"] == edges
    assert again.graph.num_contents == store.graph.num_contents


def test_a_bad_write_is_refused_before_the_journal(folder):
    store = GraphStore.load(folder)
    before = (folder / JOURNAL).read_bytes()
    with pytest.raises(StoreError, match="nope"):
        store.record(["n1"], NEW[None], [["gamma", "nope"]], ["x"])
    with pytest.raises(StoreError, match="shape"):
        store.record(["n1"], np.zeros((1, 3), np.float32), [["gamma"]], ["x"])
    assert (folder / JOURNAL).read_bytes() == before
    assert "n1" not in GraphStore.load(folder).graph.content_pos


def test_a_torn_last_line_is_ignored_then_cut_off(folder):
    store = GraphStore.load(folder)
    store.record(["n1"], NEW[None], [["gamma"]], ["x"])
    with open(folder / JOURNAL, "ab") as fh:
        fh.write(b'{"id": "torn", "tags": ["ga')  # a crash in the middle of an append
    reader = GraphStore.load(folder)
    assert "n1" in reader.graph.content_pos and "torn" not in reader.graph.content_pos
    store.record(["n2"], vec(0, 0, 0, 0, 0, 0, 0.6, 0.8)[None], [["zeta"]], ["y"])
    assert [r.get("id") for r in journal_lines(folder)[1:]] == ["n1", "n2"]
    assert reader.sync() == 1 and "n2" in reader.graph.content_pos


def test_a_save_folds_the_journal_into_a_new_version(folder):
    store = GraphStore.load(folder)
    store.record(["n1"], NEW[None], [["gamma"]], ["x"])
    version = store.save(folder).name
    assert journal_lines(folder) == [{"format": "llm4tag-graph-journal-1", "version": version}]
    store.record(["n2"], vec(0, 0, 0, 0, 0, 0, 0.6, 0.8)[None], [["zeta"]], ["y"])
    loaded = GraphStore.load(folder)
    assert {"n1", "n2"} <= set(loaded.graph.content_pos)


def test_a_save_cut_short_before_the_new_journal_keeps_what_was_appended_meanwhile(folder):
    # The process died after the new version became live and before its journal was started: the
    # old journal is still there, and a write another replica appended to it (after the point the
    # new version covers) must not be lost. The next load replays it, the next append moves it over.
    store = GraphStore.load(folder)
    store.record(["n1"], NEW[None], [["gamma"]], ["x"])
    old_journal = (folder / JOURNAL).read_bytes()
    store.save(folder)
    late = vec(0, 0, 0, 0, 0, 0, 0.6, 0.8)
    from graph_store.journal import record_line

    (folder / JOURNAL).write_bytes(old_journal + record_line("late", ["zeta"], "y", late))
    loaded = GraphStore.load(folder)
    assert {"n1", "late"} <= set(loaded.graph.content_pos)
    loaded.record(["n2"], late[None], [["zeta"]], ["z"])
    assert [r.get("id") for r in journal_lines(folder)[1:]] == ["late", "n2"]
    assert journal_lines(folder)[0]["version"] == (folder / "CURRENT").read_text().strip()
    assert {"n1", "late", "n2"} <= set(GraphStore.load(folder).graph.content_pos)


def test_a_journal_of_an_older_version_is_ignored(folder, caplog):
    store = GraphStore.load(folder)
    store.record(["n1"], NEW[None], [["gamma"]], ["x"])
    stale = (folder / JOURNAL).read_bytes()
    store.save(folder)
    store.save(folder)  # two versions on: the stale journal's records are all in the live one
    (folder / JOURNAL).write_bytes(stale)
    with caplog.at_level(logging.WARNING):
        loaded = GraphStore.load(folder)
    assert "already in the live version" in caplog.text
    assert "n1" in loaded.graph.content_pos  # from the version, not replayed twice
    loaded.record(["n2"], vec(0, 0, 0, 0, 0, 0, 0.6, 0.8)[None], [["zeta"]], ["y"])
    assert [r.get("id") for r in journal_lines(folder)[1:]] == ["n2"]


def test_a_writer_that_missed_a_save_elsewhere_reloads_and_writes_to_the_live_version(folder):
    # Defect (issue 16): a replica whose folder was saved by another process (`llm4tag feedback`,
    # `tag --write-back` against a served store) failed every write with a 500 until restarted.
    old = GraphStore.load(folder)
    live = GraphStore.load(folder).save(folder).name  # another process saves a new version
    old.record(["n1"], NEW[None], [["gamma"]], ["x"])
    assert journal_lines(folder)[0]["version"] == live
    assert [r.get("id") for r in journal_lines(folder)[1:]] == ["n1"]
    assert old.journal.version == live and "n1" in GraphStore.load(folder).graph.content_pos


def test_a_reader_that_missed_a_save_elsewhere_reloads(folder):
    reader = GraphStore.load(folder)
    writer = GraphStore.load(folder)
    writer.record(["n1"], NEW[None], [["gamma"]], ["x"])
    writer.save(folder)
    writer.record(["n2"], vec(0, 0, 0, 0, 0, 0, 0.6, 0.8)[None], [["zeta"]], ["y"])
    assert reader.sync() == 1  # reloaded the new version (n1 in it) and replayed its journal (n2)
    assert {"n1", "n2"} <= set(reader.graph.content_pos)


def test_an_older_version_is_a_read_only_view(folder):
    first = GraphStore.load(folder).save(folder).name
    GraphStore.load(folder).save(folder)
    view = GraphStore.load(folder, version=first)
    assert view.journal is None
    with pytest.raises(StoreError, match="not the live one"):  # never acknowledged and kept in memory only
        view.record(["n1"], NEW[None], [["gamma"]], ["x"])
    assert "n1" not in GraphStore.load(folder).graph.content_pos


def test_sharded_writes_go_to_the_owning_shard(tmp_path):
    ShardedStore(build_hand_store().split(3)).save(tmp_path / "sh")
    store = open_store(tmp_path / "sh")
    ids = [f"new-{i}" for i in range(6)]
    store.record(ids, np.stack([NEW] * 6), [["gamma"]] * 6, ids)
    reloaded = open_store(tmp_path / "sh")
    for item_id in ids:
        owner = reloaded.owner(item_id)
        assert det_tags(owner, item_id) == {"gamma"}
        assert sum(item_id in s.graph.content_pos for s in reloaded.shards) == 1


def _append_many(folder, prefix: str, count: int) -> None:
    store = GraphStore.load(folder)
    for i in range(count):
        store.record([f"{prefix}{i}"], NEW[None], [["gamma"]], [None])


@pytest.mark.slow  # out of the fast loop (several processes, or a fit)
def test_concurrent_appenders_in_other_processes_keep_every_record_whole(folder):
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_append_many, args=(folder, p, 25)) for p in ("x", "y")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    records = journal_lines(folder)[1:]
    assert sorted(r["id"] for r in records) == sorted(
        [f"x{i}" for i in range(25)] + [f"y{i}" for i in range(25)]
    )
    assert GraphStore.load(folder).graph.num_contents == len(build_hand_store().graph.content_ids) + 50
