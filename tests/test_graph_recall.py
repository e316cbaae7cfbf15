"""Meta-path recall (C2T and C2C2T) on the hand-designed graph of conftest.py, checked by hand.

Query Q = 0.6 e0 + 0.7 e1 + 0.3 e2 + 0.2 e3 + 0.1 e4 + 0.1 e6 (tags: alpha=e0 beta=e1 gamma=e2
delta=e3 eps=e4 zeta=e5).

cosine(Q, tag):  beta .7, alpha .6, gamma .3, delta .2, eps .1, zeta 0
cosine(Q, item): a 1.0 (=Q), b .98 (flip e6: 1-2*.01), c .82 (flip e2: 1-2*.09), e .28 (flip e0:
                 1-2*.36), g .216 (.3*.48+.2*.36), d .02 (flip e1: 1-2*.49), f 0
annotations:     a {gamma, beta}, b {gamma}, c {gamma, zeta}, d {delta}, e {eps}, f {zeta}, g {delta}

With delta_ct=.5, delta_cc=.75:
  C2T   = beta .7, alpha .6
  C2C2T = neighbours a, b, c (total weight 1+.98+.82 = 2.8):
          gamma 2.8/2.8 = 1.0 via (a, b, c); beta 1/2.8 = .357143 via (a,); zeta .82/2.8 = .292857 via (c,)
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DIM, HAND_RECALL, Q, vec

from graph_store import Candidate, RecallConfig, StoreError
from graph_store.metapaths import Hits, linked, merge_hits, select

C2T, C2C2T, BOTH = ("c2t",), ("c2c2t",), ("c2t", "c2c2t")


def rows(candidates: list[Candidate]) -> list[tuple]:
    return [(c.tag, round(c.score, 6), c.paths, c.c2t_score, c.c2c2t_score, c.via) for c in candidates]


def approx_rows(expected: list[tuple]) -> list[tuple]:
    return [
        (
            tag,
            pytest.approx(score, abs=1e-6),
            paths,
            None if c2t is None else pytest.approx(c2t, abs=1e-6),
            None if c2c2t is None else pytest.approx(c2c2t, abs=1e-6),
            via,
        )
        for tag, score, paths, c2t, c2c2t, via in expected
    ]


def recall_one(store, query, **overrides) -> list[tuple]:
    return rows(
        store.recall(np.asarray(query, np.float32)[None, :], HAND_RECALL.with_overrides(dict(**overrides)))[0]
    )


BETA = ("beta", 0.7 + 1 / 2.8, BOTH, 0.7, 1 / 2.8, ("a",))  # 1.057143
GAMMA = ("gamma", 1.0, C2C2T, None, 1.0, ("a", "b", "c"))
ALPHA = ("alpha", 0.6, C2T, 0.6, None, ())
ZETA = ("zeta", 0.82 / 2.8, C2C2T, None, 0.82 / 2.8, ("c",))  # .292857


def test_both_paths_contribute(hand_store):
    # max_c2c2t=2 takes gamma (1.0) and beta (.357); max_c2t=2 then adds alpha (beta is taken);
    # zeta (.293) is a C2C2T tag beyond the cap and fill is off. Sorted by fused score.
    assert recall_one(hand_store, Q) == approx_rows([BETA, GAMMA, ALPHA])


def test_fill_adds_remaining_tags_by_fused_score(hand_store):
    assert recall_one(hand_store, Q, fill=True, num_candidates=4) == approx_rows([BETA, GAMMA, ALPHA, ZETA])
    # Still short after every tag either path found: the next most similar tags below delta_ct
    # (delta .2, eps .1; gamma .3 is already in) join as fallback C2T candidates.
    assert recall_one(hand_store, Q, fill=True, num_candidates=6) == approx_rows(
        [BETA, GAMMA, ALPHA, ZETA, ("delta", 0.2, C2T, 0.2, None, ()), ("eps", 0.1, C2T, 0.1, None, ())]
    )
    assert len(recall_one(hand_store, Q, fill=True, num_candidates=20)) == 6  # every tag there is
    # Only C2C2T's best (gamma) is taken by the caps; fill then ranks the rest by fused score:
    # beta 1.057 > alpha .6 > zeta .293, and takes two of them to reach num_candidates=3.
    got = recall_one(hand_store, Q, fill=True, max_c2c2t=1, max_c2t=0, num_candidates=3)
    assert got == approx_rows([BETA, GAMMA, ALPHA])
    # fill=False: nothing but the capped picks.
    assert recall_one(hand_store, Q, fill=False, max_c2c2t=1, max_c2t=0) == approx_rows([GAMMA])


def test_caps(hand_store):
    # C2C2T cap 1 -> gamma; C2T cap 1 -> beta (its best, not yet taken).
    assert recall_one(hand_store, Q, max_c2c2t=1, max_c2t=1) == approx_rows([BETA, GAMMA])
    # Only C2T: beta still shows both paths in its provenance, because C2C2T also found it.
    assert recall_one(hand_store, Q, max_c2c2t=0, max_c2t=1) == approx_rows([BETA])
    assert recall_one(hand_store, Q, max_c2c2t=0, max_c2t=5) == approx_rows([BETA, ALPHA])
    # Only C2C2T: gamma, beta, zeta.
    assert recall_one(hand_store, Q, max_c2c2t=3, max_c2t=0) == approx_rows([BETA, GAMMA, ZETA])
    # num_candidates cuts the picks (C2C2T picks first: gamma, beta; alpha is dropped) and fill
    # adds nothing once it is reached.
    assert recall_one(hand_store, Q, num_candidates=2, fill=True) == approx_rows([BETA, GAMMA])


def test_c2t_threshold_and_fallback(hand_store):
    # delta_ct=.65: only beta (.7) passes; alpha (.6) is gone.
    assert recall_one(hand_store, Q, delta_ct=0.65, min_c2t=0) == approx_rows([BETA, GAMMA])
    # min_c2t=4 but only 2 tags pass .5: the best two below it, gamma .3 and delta .2, are linked.
    # gamma: .3 + 1.0 = 1.3 (both paths); delta: C2T only, .2.
    got = recall_one(hand_store, Q, min_c2t=4)
    assert got == approx_rows(
        [
            ("gamma", 1.3, BOTH, 0.3, 1.0, ("a", "b", "c")),
            BETA,
            ALPHA,
            ("delta", 0.2, C2T, 0.2, None, ()),
        ]
    )
    # Nothing at all passes delta_ct=.9; min_c2t=1 still links the best tag, beta .7.
    got = recall_one(hand_store, Q, delta_ct=0.9, min_c2t=1, max_c2c2t=0)
    assert got == approx_rows([BETA])
    assert recall_one(hand_store, Q, delta_ct=0.9, min_c2t=0, max_c2c2t=0) == []


def test_c2c_threshold_fallback_and_search_cap(hand_store):
    # min_c2c=4 with three neighbours above .75: e (.28) is linked too. Total 3.08:
    # gamma 2.8/3.08, beta 1/3.08, zeta .82/3.08, eps .28/3.08.
    t = 3.08
    got = recall_one(hand_store, Q, min_c2c=4, fill=True, num_candidates=5)
    assert got == approx_rows(
        [
            ("beta", 0.7 + 1 / t, BOTH, 0.7, 1 / t, ("a",)),
            ("gamma", 2.8 / t, C2C2T, None, 2.8 / t, ("a", "b", "c")),
            ALPHA,
            ("zeta", 0.82 / t, C2C2T, None, 0.82 / t, ("c",)),
            ("eps", 0.28 / t, C2C2T, None, 0.28 / t, ("e",)),
        ]
    )
    # delta_cc=.9: only a (1.0) and b (.98) pass. Total 1.98: gamma 1.0, beta 1/1.98.
    expected = [
        ("beta", 0.7 + 1 / 1.98, BOTH, 0.7, 1 / 1.98, ("a",)),
        ("gamma", 1.0, C2C2T, None, 1.0, ("a", "b")),
        ALPHA,
    ]
    assert recall_one(hand_store, Q, delta_cc=0.9, min_c2c=0) == approx_rows(expected)
    # c2c_search_k=2 caps the neighbours at a and b although c passes .75: same result.
    assert recall_one(hand_store, Q, c2c_search_k=2) == approx_rows(expected)
    # ...and caps the fallback too.
    assert recall_one(hand_store, Q, c2c_search_k=2, min_c2c=5) == approx_rows(expected)
    # No content search at all: C2T only.
    assert recall_one(hand_store, Q, c2c_search_k=0) == approx_rows(
        [("beta", 0.7, C2T, 0.7, None, ()), ALPHA]
    )


def test_c2t_alone_and_c2c2t_alone(hand_store):
    # Query e0 (= alpha): cosine 1 to alpha, 0 to every other tag; .6 to a, b, c, d (below .75).
    e0 = vec(1.0)
    assert recall_one(hand_store, e0, min_c2t=0, min_c2c=0) == approx_rows(
        [("alpha", 1.0, C2T, 1.0, None, ())]
    )
    # min_c2c=1 links the best neighbour although it is below .75: a, b, c, d tie at .6, a wins by
    # id. a's tags gamma and beta get share 1.0 each: three candidates tied at 1.0, sorted by name.
    assert recall_one(hand_store, e0, min_c2t=0, min_c2c=1) == approx_rows(
        [
            ("alpha", 1.0, C2T, 1.0, None, ()),
            ("beta", 1.0, C2C2T, None, 1.0, ("a",)),
            ("gamma", 1.0, C2C2T, None, 1.0, ("a",)),
        ]
    )
    # Query e7: cosine 0 to every tag, .8 to f and to g (tie, f first by id).
    # zeta 0.8/1.6 = .5 via f, delta .5 via g; the tie is sorted by tag name although zeta comes
    # first in the store's tag order.
    e7 = vec(0, 0, 0, 0, 0, 0, 0, 1.0)
    assert recall_one(hand_store, e7, min_c2t=0) == approx_rows(
        [("delta", 0.5, C2C2T, None, 0.5, ("g",)), ("zeta", 0.5, C2C2T, None, 0.5, ("f",))]
    )


def test_fused_weights(hand_store):
    # c2t_weight=2, c2c2t_weight=.5: beta 1.4 + .5/2.8, alpha 1.2, gamma .5. The selection by C2C2T
    # score does not change, only the fused order.
    got = recall_one(hand_store, Q, c2t_weight=2.0, c2c2t_weight=0.5)
    assert got == approx_rows(
        [
            ("beta", 1.4 + 0.5 / 2.8, BOTH, 0.7, 1 / 2.8, ("a",)),
            ("alpha", 1.2, C2T, 0.6, None, ()),
            ("gamma", 0.5, C2C2T, None, 1.0, ("a", "b", "c")),
        ]
    )


def test_store_config_is_the_default_and_batches(hand_store):
    e7 = vec(0, 0, 0, 0, 0, 0, 0, 1.0)
    batch = hand_store.recall(np.stack([vec(*Q), e7]))
    assert len(batch) == 2
    assert rows(batch[0]) == approx_rows([BETA, GAMMA, ALPHA])
    assert [c.tag for c in batch[1]] == [c.tag for c in hand_store.recall(e7)[0]]
    # One 1-d vector is one query.
    assert rows(hand_store.recall(vec(*Q))[0]) == rows(batch[0])
    with pytest.raises(StoreError, match=r"shape \(n, 8\)"):
        hand_store.recall(np.zeros((1, DIM - 1), np.float32))


def test_via_lists_at_most_five_neighbours_most_similar_first(hand_store):
    # Seven new items tagged eps; their cosines to Q fall from .98 to .86 (flip of e6 plus a growing
    # share of e7 - exactly: scale Q by s and add sqrt(1-s^2) e7).
    scales = [0.99, 0.98, 0.97, 0.96, 0.95, 0.94, 0.93]
    vectors = []
    for s in scales:
        v = vec(*Q) * s
        v[7] = np.sqrt(1 - s * s)
        vectors.append(v)
    ids = [f"n{i}" for i in range(len(scales))]
    hand_store.insert(ids[::-1], np.stack(vectors[::-1]), tags=[["eps"]] * len(ids))
    (eps,) = [
        c
        for c in hand_store.recall(vec(*Q), HAND_RECALL.with_overrides(dict(fill=True)))[0]
        if c.tag == "eps"
    ]
    assert eps.via == ("n0", "n1", "n2", "n3", "n4")
    # gamma: a (1.0) and b (.98) outrank n1 (.98, tie with b, 'b' < 'n1')...
    (gamma,) = [c for c in hand_store.recall(vec(*Q))[0] if c.tag == "gamma"]
    assert gamma.via == ("a", "b", "c")
    total = 1 + 0.98 + 0.82 + sum(scales)
    assert eps.c2c2t_score == pytest.approx(sum(scales) / total, abs=1e-6)
    assert gamma.c2c2t_score == pytest.approx(2.8 / total, abs=1e-6)


def test_match_is_top_k_by_cosine(hand_store):
    got = hand_store.match(vec(*Q), k=3)[0]
    assert [(c.tag, round(c.score, 6), c.paths, round(c.c2t_score, 6)) for c in got] == [
        ("beta", 0.7, ("match",), 0.7),
        ("alpha", 0.6, ("match",), 0.6),
        ("gamma", 0.3, ("match",), 0.3),
    ]
    assert len(hand_store.match(vec(*Q), k=100)[0]) == 6


def test_candidate_to_dict(hand_store):
    beta = hand_store.recall(vec(*Q))[0][0]
    assert beta.to_dict() == {
        "tag": "beta",
        "score": round(0.7 + 1 / 2.8, 6),
        "paths": ["c2t", "c2c2t"],
        "c2t_score": 0.7,
        "c2c2t_score": round(1 / 2.8, 6),
        "via": ["a"],
    }
    alpha = hand_store.recall(vec(*Q))[0][2]
    assert alpha.to_dict() == {"tag": "alpha", "score": 0.6, "paths": ["c2t"], "c2t_score": 0.6}


# -- the selection logic on its own ------------------------------------------------------------------
def test_linked_counts():
    sims = [0.9, 0.8, 0.5, 0.4]
    assert linked(sims, 0.5, 0) == 3  # threshold is inclusive
    assert linked(sims, 0.95, 0) == 0
    assert linked(sims, 0.95, 2) == 2  # fallback
    assert linked(sims, 0.5, 10) == 4  # fallback limited by the hits there are
    assert linked(sims, 0.0, 0, cap=2) == 2
    assert linked([], 0.5, 3) == 0


def test_select_and_merge_on_synthetic_hits():
    names = ["t0", "t1", "t2", "t3"]
    rc = RecallConfig(
        delta_ct=0.5,
        delta_cc=0.5,
        min_c2t=0,
        min_c2c=0,
        max_c2t=1,
        max_c2c2t=1,
        num_candidates=3,
        c2c_search_k=3,
    )
    part1 = Hits(
        tag_pos=np.array([2, 0, 1, 3]),
        tag_sims=np.array([0.9, 0.6, 0.4, 0.1]),
        neighbour_ids=["x", "z"],
        neighbour_sims=[0.8, 0.6],
        neighbour_tags=[np.array([1, 3]), np.array([3])],
    )
    part2 = Hits(
        tag_pos=np.array([2, 0, 1, 3]),
        tag_sims=np.array([0.9, 0.6, 0.4, 0.1]),
        neighbour_ids=["y", "w"],
        neighbour_sims=[0.6, 0.2],
        neighbour_tags=[np.array([1]), np.array([0])],
    )
    merged = merge_hits([part1, part2], 3)
    assert merged.neighbour_ids == ["x", "y", "z"]  # tie at .6 broken by id; w cut by k=3
    assert merged.tag_pos.tolist() == [2, 0, 1, 3]
    out = select(merged, names, rc)
    # neighbours x .8, y .6, z .6 (total 2.0): t1 (.8+.6)/2 = .7 via x, y; t3 (.8+.6)/2 = .7 via x, z.
    # C2C2T pick (cap 1): t1 (tie with t3, lower position). C2T pick: t2 .9. Fill: t3 .7 > t0 .6.
    assert rows(out) == [
        ("t2", 0.9, C2T, 0.9, None, ()),
        ("t1", 0.7, C2C2T, None, 0.7, ("x", "y")),
        ("t3", 0.7, C2C2T, None, 0.7, ("x", "z")),
    ]
