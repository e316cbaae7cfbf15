"""The graph store: materialised edges, insertion, write-back, igraph batching, persistence.

Cosines of the hand graph (conftest.py); flip sets of the Q-variants: a {}, b {e6}, c {e2}, d {e1},
e {e0}, so cosine(X, Y) = 1 - 2 * (sum of Q's squares over the symmetric difference):
  a-b .98, a-c .82, b-c .80, a-e .28, b-e .26, c-e .10, a-d .02, b-d 0, c-d -.16, d-e -.70
  f = .6 e5 + .8 e7, g = .48 e2 + .36 e3 + .8 e7: f-g .64, f-(a..e) 0, g-(a,b,d,e) .216, g-c -.072
Build settings: delta_ct .5, delta_cc .75, min_c2t = min_c2c = 1, sim_edges_ct = sim_edges_cc = 2.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import HAND_ITEMS, HAND_RECALL, TAG_ORDER, Q, build_hand_store, vec

import graph_store.persistence as store_module
from graph_store import EncoderMismatchError, GraphStore, RecallConfig, StoreError
from graph_store.graph import EDGE_KIND_NAMES

ENCODER = "hand-encoder"
E7 = vec(0, 0, 0, 0, 0, 0, 0, 1.0)


def r6(x: float) -> float:
    return round(float(x), 6)


def edge_table(store: GraphStore) -> dict[str, set]:
    """igraph's edges by kind, as {frozenset(keys), weight rounded} (after a flush)."""
    graph = store.graph.flush()
    out: dict[str, list] = {name: [] for name in EDGE_KIND_NAMES.values()}
    for edge in graph.es:
        keys = frozenset((store.graph.vertex_key(edge.source), store.graph.vertex_key(edge.target)))
        out[EDGE_KIND_NAMES[edge["kind"]]].append((keys, r6(edge["weight"])))
    for name, edges in out.items():
        assert len(set(edges)) == len(edges), f"parallel {name} edges: {edges}"
    # The vocabulary's hierarchy (tag–tag "broader" edges) shows only in stores built with one.
    return {name: set(edges) for name, edges in out.items() if edges or name != "broader"}


def pairs(*edges) -> set:
    return {(frozenset((x, y)), w) for x, y, w in edges}


def det_tags(store: GraphStore) -> dict[str, set[str]]:
    g = store.graph
    return {cid: {g.tag_names[t] for t in g.det_tags(pos).tolist()} for pos, cid in enumerate(g.content_ids)}


def recall_rows(store, queries, rc: RecallConfig | None = None):
    return [[c.to_dict() for c in cands] for cands in store.recall(queries, rc)]


def some_queries(n: int = 16) -> np.ndarray:
    rng = np.random.default_rng(7)
    qs = rng.normal(size=(n, 8)).astype(np.float32)
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    return np.vstack([vec(*Q), E7, vec(1.0), qs])


# -- materialised similarity edges ----------------------------------------------------------------
HAND_DET = pairs(
    ("a", "gamma", 1.0),
    ("a", "beta", 1.0),
    ("b", "gamma", 1.0),
    ("c", "gamma", 1.0),
    ("c", "zeta", 1.0),
    ("d", "delta", 1.0),
    ("e", "eps", 1.0),
    ("f", "zeta", 1.0),
    ("g", "delta", 1.0),
)
# Top-2 tags per content, kept when >= .5, the best one kept anyway (min_c2t=1):
# a, b, c: beta .7, alpha .6 | d: alpha .6 (gamma .3 dropped; beta is -.7) | e: beta .7 (alpha -.6)
# f: zeta .6 | g: gamma .48 < .5, linked by the fallback (delta .36 is not).
HAND_CT = pairs(
    ("a", "beta", 0.7),
    ("a", "alpha", 0.6),
    ("b", "beta", 0.7),
    ("b", "alpha", 0.6),
    ("c", "beta", 0.7),
    ("c", "alpha", 0.6),
    ("d", "alpha", 0.6),
    ("e", "beta", 0.7),
    ("f", "zeta", 0.6),
    ("g", "gamma", 0.48),
)
# Top-2 contents per content, kept when >= .75, the best one anyway; one undirected edge per pair:
# a: b .98, c .82 | b: a .98, c .80 | c: a .82, b .80 | d: g .216 (fallback) | e: a .28 (fallback)
# f: g .64 (fallback) | g: f .64 (fallback)
HAND_CC = pairs(
    ("a", "b", 0.98),
    ("a", "c", 0.82),
    ("b", "c", 0.8),
    ("d", "g", 0.216),
    ("e", "a", 0.28),
    ("f", "g", 0.64),
)


def test_materialised_edges(hand_store):
    assert hand_store.stats() == {
        "contents": 7,
        "tags": 6,
        "deterministic_edges": 9,
        "similarity_edges_ct": 10,
        "similarity_edges_cc": 6,
        "content_index": "flat",
        "tag_index": "flat",
        "shard": [0, 1],
    }
    graph = hand_store.graph.graph
    assert graph.vcount() == 13
    assert graph.ecount() == 25
    assert sorted(graph.es["kind"]) == [0] * 9 + [1] * 10 + [2] * 6
    assert edge_table(hand_store) == {
        "deterministic": HAND_DET,
        "similarity_ct": HAND_CT,
        "similarity_cc": HAND_CC,
    }


def test_neighbourhood(hand_store):
    hood = hand_store.graph.neighbourhood("a")
    assert {k: [(key, r6(w)) for key, w in v] for k, v in hood.items()} == {
        "deterministic": [("beta", 1.0), ("gamma", 1.0)],
        "similarity_ct": [("beta", 0.7), ("alpha", 0.6)],
        "similarity_cc": [("b", 0.98), ("c", 0.82), ("e", 0.28)],
    }
    hood = hand_store.graph.neighbourhood("g")
    assert {k: [(key, r6(w)) for key, w in v] for k, v in hood.items()} == {
        "deterministic": [("delta", 1.0)],
        "similarity_ct": [("gamma", 0.48)],
        "similarity_cc": [("f", 0.64), ("d", 0.216)],
    }
    with pytest.raises(StoreError, match="'nobody'"):
        hand_store.graph.neighbourhood("nobody")


def test_similarity_edge_settings():
    plain = build_hand_store(materialize_similarity=False)
    assert edge_table(plain) == {"deterministic": HAND_DET, "similarity_ct": set(), "similarity_cc": set()}
    # Recall does not read the materialised edges.
    assert recall_rows(plain, some_queries()) == recall_rows(build_hand_store(), some_queries())
    only_ct = build_hand_store(sim_edges_cc=0)
    assert edge_table(only_ct)["similarity_ct"] == HAND_CT
    assert edge_table(only_ct)["similarity_cc"] == set()
    # Linking in batches of 2 contents gives the same edges: mutual pairs split across batches
    # (a, b in the first, c in the second) still get one edge.
    batched = build_hand_store(materialize_similarity=False)
    vectors = np.stack([HAND_ITEMS[i][0] for i in HAND_ITEMS])
    batched._link_similar(np.arange(len(vectors)), vectors, batch=2)
    assert edge_table(batched) == edge_table(build_hand_store())


# -- insertion and write-back ---------------------------------------------------------------------
def test_insert_is_searchable_and_linked(hand_store):
    hand_store.insert(["h"], vec(*Q)[None, :], tags=[["eps"]], texts=["text of h"])
    assert hand_store.stats()["contents"] == 8
    assert hand_store.graph.content_texts[-1] == "text of h"
    hood = hand_store.graph.neighbourhood("h")
    assert {k: [(key, r6(w)) for key, w in v] for k, v in hood.items()} == {
        "deterministic": [("eps", 1.0)],
        "similarity_ct": [("beta", 0.7), ("alpha", 0.6)],
        "similarity_cc": [("a", 1.0), ("b", 0.98)],  # itself dropped
    }
    # Neighbours of Q now a 1.0, h 1.0, b .98, c .82 (total 3.8): gamma 2.8/3.8, beta and eps 1/3.8
    # each (a tie; eps has the lower position and takes the second C2C2T slot), zeta .82/3.8.
    got = {c.tag: (r6(c.score), c.paths, c.via) for c in hand_store.recall(vec(*Q))[0]}
    assert got == {
        "beta": (r6(0.7 + 1 / 3.8), ("c2t", "c2c2t"), ("a",)),
        "gamma": (r6(2.8 / 3.8), ("c2c2t",), ("a", "b", "c")),
        "alpha": (0.6, ("c2t",), ()),
        "eps": (r6(1 / 3.8), ("c2c2t",), ("h",)),
    }
    assert [c.tag for c in hand_store.recall(vec(*Q))[0]] == ["beta", "gamma", "alpha", "eps"]


def test_insert_batch_links_new_items_once(hand_store):
    f_vec = HAND_ITEMS["f"][0]
    before = edge_table(hand_store)["similarity_cc"]
    hand_store.insert(["p", "r"], np.stack([f_vec, f_vec]))  # no tags: no deterministic edges
    # p and r equal f: each links the other two at 1.0; p-r once.
    assert edge_table(hand_store)["similarity_cc"] - before == pairs(
        ("p", "f", 1.0), ("r", "f", 1.0), ("p", "r", 1.0)
    )
    assert hand_store.stats()["deterministic_edges"] == 9
    (zeta,) = [c for c in hand_store.recall(E7)[0] if c.tag == "zeta"]
    assert zeta.via == ("f",)  # p and r carry no tags; they still count as neighbours
    # E7: f, g, p, r all at .8 -> zeta .8/3.2, delta .8/3.2
    assert zeta.c2c2t_score == pytest.approx(0.25, abs=1e-6)


def test_insert_errors_leave_the_store_unchanged(hand_store):
    before = (hand_store.stats(), hand_store.content_index.size, list(hand_store.graph.content_ids))
    one = vec(*Q)[None, :]
    with pytest.raises(StoreError, match="'a'"):
        hand_store.insert(["a"], one)
    with pytest.raises(StoreError, match="'y'"):
        hand_store.insert(["x", "y", "y"], np.repeat(one, 3, 0))
    with pytest.raises(StoreError, match="'nope'"):
        hand_store.insert(["x", "y"], np.repeat(one, 2, 0), tags=[["beta"], ["nope"]])
    with pytest.raises(StoreError, match="same length"):
        hand_store.insert(["x", "y"], one)
    with pytest.raises(StoreError, match="same length"):
        hand_store.insert(["x", "y"], np.repeat(one, 2, 0), texts=["only one"])
    with pytest.raises(StoreError, match="same length"):
        hand_store.insert(["x", "y"], np.repeat(one, 2, 0), tags=[["beta"]])
    with pytest.raises(StoreError, match=r"shape \(n, 8\)"):
        hand_store.insert(["x"], np.zeros((1, 5), np.float32))
    assert (hand_store.stats(), hand_store.content_index.size, list(hand_store.graph.content_ids)) == before
    hand_store.insert(["x", "y"], np.repeat(one, 2, 0), tags=[["beta"], None])
    assert det_tags(hand_store)["x"] == {"beta"}
    assert det_tags(hand_store)["y"] == set()


def test_write_back(hand_store):
    d_vec = HAND_ITEMS["d"][0]
    # Query = d: d is the only neighbour >= .75, so C2C2T gives d's tags.
    assert [
        (c.tag, c.via) for c in hand_store.recall(d_vec, HAND_RECALL.with_overrides(dict(max_c2t=0)))[0]
    ] == [("delta", ("d",))]
    edges = hand_store.graph.edges.count
    assert hand_store.write_back("d", ["beta", "delta"]) == 1  # delta was there
    assert hand_store.write_back("d", ["beta", "delta"]) == 0  # idempotent
    assert hand_store.write_back("d", ["eps", "eps", "beta"]) == 1
    assert hand_store.graph.edges.count == edges + 2
    assert det_tags(hand_store)["d"] == {"beta", "delta", "eps"}
    got = hand_store.recall(d_vec, HAND_RECALL.with_overrides(dict(max_c2t=0, max_c2c2t=5)))[0]
    assert [(c.tag, c.c2c2t_score, c.via) for c in got] == [
        ("beta", 1.0, ("d",)),
        ("delta", 1.0, ("d",)),
        ("eps", 1.0, ("d",)),
    ]
    assert (frozenset(("d", "beta")), 1.0) in edge_table(hand_store)["deterministic"]
    with pytest.raises(StoreError, match="'zz'"):
        hand_store.write_back("zz", ["beta"])
    with pytest.raises(StoreError, match="'nope'"):
        hand_store.write_back("a", ["alpha", "nope"])
    assert det_tags(hand_store)["a"] == {"gamma", "beta"}  # alpha not half-written
    # Items inserted without tags can get them later.
    hand_store.insert(["new"], E7[None, :])
    assert hand_store.write_back("new", ["alpha"]) == 1
    (alpha,) = [c for c in hand_store.recall(E7)[0] if c.tag == "alpha"]
    assert alpha.via == ("new",)


@pytest.mark.parametrize("flush_every", [1, 3, 10**6])
def test_flush_batching(flush_every):
    store = build_hand_store(flush_every=flush_every)
    assert store.graph.graph.ecount() == 25  # build flushes
    rng = np.random.default_rng(flush_every)
    vectors = rng.normal(size=(5, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    for i, v in enumerate(vectors):
        store.insert([f"n{i}"], v[None, :], tags=[["alpha"]])
    store.write_back("n0", ["beta"])
    # each insert: 1 deterministic, 2 c-t (min 1, cap 2: >= 1), 1-2 c-c; plus 1 write-back
    total = store.graph.edges.count
    assert 25 + 5 * 3 + 1 <= total <= 25 + 5 * 5 + 1
    if flush_every == 1:
        assert store.graph.graph.ecount() == total  # every change is folded in at once
        assert store.graph.graph.vcount() == 18
    if flush_every == 10**6:
        assert store.graph.graph.ecount() == 25  # all pending
        assert store.graph.graph.vcount() == 13
    graph = store.graph.flush()
    assert (graph.vcount(), graph.ecount()) == (18, total)
    src, dst, kind, weight = store.graph.edges.arrays()
    assert [tuple(sorted(e.tuple)) for e in graph.es] == [
        tuple(sorted(e)) for e in zip(src.tolist(), dst.tolist(), strict=True)
    ]
    assert graph.es["kind"] == kind.tolist()
    assert np.allclose(graph.es["weight"], weight)
    assert store.graph.flush().ecount() == total  # a second flush adds nothing


# -- persistence ----------------------------------------------------------------------------------
def grown_store() -> GraphStore:
    store = build_hand_store()
    store.insert(["h"], vec(*Q)[None, :], tags=[["eps"]], texts=["text of h"])
    store.write_back("d", ["beta"])
    return store


def assert_same_store(a: GraphStore, b: GraphStore) -> None:
    assert a.stats() == b.stats()
    assert a.encoder_id == b.encoder_id and a.dim == b.dim and a.shard == b.shard
    assert a.config.model_dump() == b.config.model_dump()
    assert recall_rows(a, some_queries()) == recall_rows(b, some_queries())
    assert recall_rows(
        a, some_queries(), HAND_RECALL.with_overrides(dict(fill=True, min_c2c=3))
    ) == recall_rows(b, some_queries(), HAND_RECALL.with_overrides(dict(fill=True, min_c2c=3)))
    assert a.graph.flush().ecount() == b.graph.flush().ecount()
    assert a.graph.flush().vcount() == b.graph.flush().vcount()
    assert edge_table(a) == edge_table(b)
    assert det_tags(a) == det_tags(b)
    assert a.graph.content_texts == b.graph.content_texts
    assert a.graph.tag_descriptions == b.graph.tag_descriptions
    assert a.graph.tag_names == b.graph.tag_names


def test_save_load_round_trip(tmp_path):
    store = grown_store()
    folder = store.save(tmp_path / "s")
    assert folder == tmp_path / "s" / "v000001"
    assert (tmp_path / "s" / "CURRENT").read_text().strip() == "v000001"
    loaded = GraphStore.load(tmp_path / "s", expected_encoder_id=ENCODER)
    assert_same_store(store, loaded)
    assert loaded.stats()["contents"] == 8
    assert det_tags(loaded)["h"] == {"eps"}
    assert det_tags(loaded)["d"] == {"delta", "beta"}
    assert loaded.graph.content_texts[loaded.graph.content_pos["h"]] == "text of h"
    assert loaded.graph.tag_descriptions == [f"about {t}" for t in TAG_ORDER]
    # The loaded store keeps growing and saves as the next version; two versions are kept.
    loaded.insert(["i2"], E7[None, :], tags=[["alpha"]])
    loaded.write_back("h", ["gamma"])
    assert loaded.save(tmp_path / "s").name == "v000002"
    again = GraphStore.load(tmp_path / "s")
    assert_same_store(loaded, again)
    assert det_tags(again)["h"] == {"eps", "gamma"}
    again.save(tmp_path / "s")
    assert sorted(
        p.name for p in (tmp_path / "s").iterdir() if not p.name.startswith(("journal.", ".save."))
    ) == [
        "CURRENT",
        "v000002",
        "v000003",
    ]
    # A recall override replaces the saved settings.
    override = RecallConfig(c2c_search_k=0, min_c2t=0)
    with_override = GraphStore.load(tmp_path / "s", recall=override)
    assert with_override.config.recall == override
    assert all(c.paths == ("c2t",) for c in with_override.recall(vec(*Q))[0])


def test_load_refuses_other_encoder_and_format(tmp_path):
    grown_store().save(tmp_path / "s")
    with pytest.raises(EncoderMismatchError, match=r"'hand-encoder'.*'other-encoder'"):
        GraphStore.load(tmp_path / "s", expected_encoder_id="other-encoder")
    assert GraphStore.load(tmp_path / "s").encoder_id == ENCODER  # no expectation: no check
    manifest_path = tmp_path / "s" / "v000001" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["format_version"] = 99
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="format version 99") as info:
        GraphStore.load(tmp_path / "s", expected_encoder_id=ENCODER)
    assert not isinstance(info.value, EncoderMismatchError)


def test_not_a_store(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        GraphStore.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="not a graph store"):
        GraphStore.load(tmp_path / "empty")


def _damage(root: Path, how: str) -> None:
    live = root / (root / "CURRENT").read_text().strip()
    if how == "current-nowhere":
        (root / "CURRENT").write_text("v000042\n")
    elif how == "current-empty":
        (root / "CURRENT").write_text("")
    elif how == "manifest-garbage":
        (live / "manifest.json").write_text("{not json")
    elif how == "manifest-not-object":
        (live / "manifest.json").write_text("[1, 2]")
    elif how == "manifest-missing-key":
        manifest = json.loads((live / "manifest.json").read_text())
        del manifest["encoder_id"]
        (live / "manifest.json").write_text(json.dumps(manifest))
    elif how == "manifest-deleted":
        (live / "manifest.json").unlink()
    elif how == "edges-deleted":
        (live / "edges.parquet").unlink()
    elif how == "vertices-truncated":
        data = (live / "vertices.parquet").read_bytes()
        (live / "vertices.parquet").write_bytes(data[: len(data) // 2])
    elif how == "index-deleted":
        (live / "contents.faiss").unlink()
    else:
        raise AssertionError(how)


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("current-nowhere", "damaged: CURRENT names 'v000042', which does not exist"),
        ("current-empty", "damaged: CURRENT names ''"),
        ("manifest-garbage", "no readable manifest.json"),
        ("manifest-not-object", "manifest.json"),
        ("manifest-missing-key", "encoder_id"),
        ("manifest-deleted", "no readable manifest.json"),
        ("edges-deleted", r"is damaged: v\d+/edges.parquet: file missing"),
        ("vertices-truncated", r"is damaged: v\d+/vertices.parquet: its size or checksum differs"),
        ("index-deleted", r"is damaged: v\d+/contents.faiss: file missing"),
    ],
)
def test_damaged_store_gives_a_clear_error(tmp_path, how, message):
    root = tmp_path / "s"
    grown_store().save(root)
    _damage(root, how)
    with pytest.raises(StoreError, match=message):
        GraphStore.load(root, expected_encoder_id=ENCODER)


def test_exception_during_save_keeps_previous_version(tmp_path, monkeypatch):
    root = tmp_path / "s"
    old = build_hand_store()
    old.save(root)
    store = grown_store()
    real = store_module._write_parquet
    calls = []

    def failing(table, path):
        calls.append(path.name)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        real(table, path)

    monkeypatch.setattr(store_module, "_write_parquet", failing)
    with pytest.raises(OSError, match="simulated"):
        store.save(root)
    assert calls == ["vertices.parquet", "edges.parquet"]
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(("journal.", ".save."))) == [
        "CURRENT",
        "v000001",
    ]  # temp folder removed
    assert_same_store(GraphStore.load(root), old)
    monkeypatch.setattr(store_module, "_write_parquet", real)
    assert store.save(root).name == "v000002"
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(("journal.", ".save."))) == [
        "CURRENT",
        "v000001",
        "v000002",
    ]
    assert_same_store(GraphStore.load(root), store)


CRASHING_SAVE = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    import graph_store.persistence as gs
    from graph_store import GraphStore

    root, where = sys.argv[1], sys.argv[2]
    store = GraphStore.load(root)
    v = np.zeros((1, 8), np.float32)
    v[0, 7] = 1.0
    store.insert(["crash-item"], v, tags=[["zeta"]])
    store.write_back("a", ["eps"])
    if where == "parquet":
        real, calls = gs._write_parquet, []
        def dying(table, path):
            calls.append(path)
            if len(calls) == 2:
                os._exit(137)  # killed in the middle of writing the version folder
            real(table, path)
        gs._write_parquet = dying
    else:
        real_replace = os.replace
        def dying(src, dst):
            if os.path.basename(dst) == "CURRENT":
                # The version folder is complete and renamed, the new CURRENT written to its
                # temporary file but not yet switched.
                os._exit(137)
            real_replace(src, dst)
        os.replace = dying
    store.save(root)
    sys.exit(3)
    """
)


@pytest.mark.parametrize("where", ["parquet", "current"])
def test_crash_during_save_keeps_previous_version(tmp_path, where):
    root = tmp_path / "s"
    build_hand_store().save(root)
    previous = grown_store()
    previous.save(root)  # v000002
    proc = subprocess.run(
        [sys.executable, "-c", CRASHING_SAVE, str(root), where],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert proc.returncode == 137, proc.stderr
    names = sorted(p.name for p in root.iterdir() if not p.name.startswith(("journal.", ".save.")))
    if where == "parquet":
        assert names[1:] == ["CURRENT", "v000001", "v000002"]
        assert names[0].startswith(".tmp-v000003-")  # the torn version
    else:
        assert names[1:] == ["CURRENT", "v000001", "v000002", "v000003"]  # v000003 complete, not live
        assert names[0].startswith(".CURRENT.") and names[0].endswith(".tmp")
    assert (root / "CURRENT").read_text().strip() == "v000002"
    loaded = GraphStore.load(root, expected_encoder_id=ENCODER)
    assert "crash-item" not in loaded.graph.content_pos
    assert "eps" not in det_tags(loaded)["a"]
    assert_same_store(loaded, previous)
    # The next save works, clears the torn temporary and keeps only the two newest versions.
    loaded.insert(["after"], E7[None, :], tags=[["alpha"]])
    saved = loaded.save(root)
    # parquet: the torn v000003 never became a version, so the number is reused.
    expected = {"parquet": ["v000002", "v000003"], "current": ["v000003", "v000004"]}[where]
    assert saved.name == expected[-1]
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(("journal.", ".save."))) == [
        "CURRENT",
        *expected,
    ]
    assert (root / "CURRENT").read_text().strip() == expected[-1]
    final = GraphStore.load(root, expected_encoder_id=ENCODER)
    assert "after" in final.graph.content_pos and "crash-item" not in final.graph.content_pos
    assert_same_store(final, loaded)
