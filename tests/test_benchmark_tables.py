"""The benchmarks' table logic (pure): the figures in docs/performance.md and the issue notes come from
these functions, so a wrong share or a wrong cascade would publish wrong bars."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks._peers import coverage_at_precision, precision_and_coverage_at
from benchmarks.cascade_quality import add_taggpt, cascade, llm_seconds, where_the_llm_differs
from llm4tag.ranking.cascade import RoutePlan


def _row(candidates, llm_tags, generated, seconds=2.0):
    return {
        "candidates": [
            {"tag": t, "confidence": p, "score": p, "source": "c2c2t+learned"} for t, p in candidates
        ],
        "tags": [{"tag": t, "confidence": y, "yes": y, "by": "llm"} for t, y in llm_tags],
        "dropped": [],
        "generated": generated,
        "seconds": seconds,
    }


def _plan(multi=False, emit=1):
    return RoutePlan(tau=None, multi=multi, emit=emit, num_candidates=20, ranker_cut=0.5, llm_cut=0.5)


def test_single_tag_cascade_takes_the_ranker_above_tau_and_the_llm_row_below():
    rows = {
        "sure": _row([("a", 0.95), ("b", 0.03)], [("b", 0.9)], ["b"], seconds=4.0),
        "unsure": _row([("a", 0.55), ("b", 0.40)], [("b", 0.8)], ["b"], seconds=6.0),
    }
    preds, share, seconds = cascade(rows, _plan(), tau=0.9)
    assert [t["tag"] for t in preds["sure"]] == ["a"] and preds["sure"][0]["confidence"] == 0.95
    assert [t["tag"] for t in preds["unsure"]] == ["b"] and preds["unsure"][0]["confidence"] == 0.8
    assert share == 0.5
    assert seconds == pytest.approx(3.0)  # only the sent item's 6 s, over both items
    everything, share, _ = cascade(rows, _plan(), tau=1.01)
    assert share == 1.0 and [t["tag"] for t in everything["sure"]] == ["b"]


def test_multi_tag_cascade_decides_per_shown_tag():
    rows = {
        "item": _row(
            [("a", 0.97), ("b", 0.6), ("c", 0.95)],
            [("b", 0.3), ("d", 0.85)],  # the LLM rejected b and generated d
            ["b", "d"],
        )
    }
    preds, share, _ = cascade(rows, _plan(multi=True, emit=3), tau=0.9)
    assert share == 1.0
    assert [t["tag"] for t in preds["item"]] == ["a", "c", "d"]  # b judged and under the cut


def test_llm_seconds_is_nan_for_rows_without_timing():
    assert llm_seconds({"x": {"seconds": 2.0}, "y": {"seconds": 4.0}}) == 3.0
    assert llm_seconds({"x": {}}) != llm_seconds({"x": {}})


def test_coverage_at_precision_is_the_lowest_cut_that_keeps_the_target():
    gold = {i: {"t"} for i in range(10)}
    # 9 right tags at high confidence, one wrong at 0.6, one more right at 0.5
    preds = {i: [{"tag": "t", "confidence": 0.9 - 0.01 * i}] for i in range(9)}
    preds[9] = [{"tag": "x", "confidence": 0.6}]
    coverage, cut = coverage_at_precision(gold, preds, 0.95)
    assert cut == pytest.approx(0.82) and coverage == pytest.approx(0.9)
    precision, kept = precision_and_coverage_at(gold, preds, 0.0)
    assert precision == pytest.approx(0.9) and kept == 1.0
    assert coverage_at_precision(gold, {i: [{"tag": "x", "confidence": 0.9}] for i in range(10)}) == (
        0.0,
        None,
    )


def test_where_the_llm_differs_counts_fixes_and_breaks():
    gold = {"fix": {"b"}, "break": {"a"}, "same": {"a"}, "none": {"z"}}
    rows = {
        "fix": _row([("a", 0.6)], [("b", 0.9)], ["b"]),
        "break": _row([("a", 0.6)], [("b", 0.9)], ["b"]),
        "same": _row([("a", 0.6)], [("a", 0.9)], ["a"]),
        "none": _row([("a", 0.6)], [], []),
    }
    assert where_the_llm_differs(gold, rows) == {
        "both right": 1,
        "LLM fixes the ranker": 1,
        "LLM breaks the ranker": 1,
        "both wrong": 1,
    }


def test_taggpt_rows_are_read_for_the_same_items_with_their_measured_seconds(tmp_path, capsys):
    added = {}

    def add(label, preds, sent, seconds):
        added[label] = (preds, sent, seconds)

    add_taggpt(add, tmp_path, ["a", "b"], emit=1)
    assert added == {}  # compare.py has not run: the row is left out, not made up
    assert "no rows in" in capsys.readouterr().out  # and says how to make them
    rows = [
        {"id": i, "tags": [{"tag": "x", "confidence": 0.7}, {"tag": "y", "confidence": 0.6}]} for i in "abc"
    ]
    (tmp_path / "taggpt-selective.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "timings.json").write_text(json.dumps({"taggpt-selective": {"items": 4, "seconds": 10.0}}))
    add_taggpt(add, tmp_path, ["b", "a"], emit=1)
    preds, sent, seconds = added["TagGPT selective (LLM on every item)"]
    assert list(preds) == ["b", "a"] and preds["a"] == [{"tag": "x", "confidence": 0.7}]
    assert sent == 1.0 and seconds == 2.5
    with pytest.raises(SystemExit, match=r"no row for 1 test items .* --methods taggpt-selective --limit 3"):
        add_taggpt(add, tmp_path, ["a", "b", "d"], emit=1)


# ------------------------------------------------------------------- the open-world split (issue 27)
def _open_world_dataset():
    from benchmarks._datasets import Dataset
    from llm4tag.data import Item, Tag

    tags = [Tag(f"t{k}", f"tag {k}") for k in range(20)]
    train = [
        Item(f"tr{i}", f"text {i}", (f"t{i % 20}",) + ((f"t{(i + 1) % 20}",) if i % 3 == 0 else ()))
        for i in range(400)
    ]
    test = [
        Item(f"te{i}", f"query {i}", (f"t{i % 20}",) + ((f"t{(i + 7) % 20}",) if i % 4 == 0 else ()))
        for i in range(300)
    ]
    rng = np.random.default_rng(0)
    return Dataset("toy", tags, train, test, rng.random((20, 4)), rng.random((400, 4)), rng.random((300, 4)))


def _split_args(**changes):
    from types import SimpleNamespace

    settings = {"seed": 0, "new": 0.2, "unknown": 0.1, "holdout": "test", "n_new": 40, "n_unknown": 10}
    return SimpleNamespace(**{**settings, "n_known": 50, **changes})


def test_the_open_world_split_keeps_new_tags_unannotated_and_unknown_tags_out_of_the_vocabulary():
    from benchmarks.open_world import make_split

    ds = _open_world_dataset()
    split = make_split(ds, _split_args())
    assert len(split.new) == 4 and len(split.unknown) == 2 and not split.new & split.unknown
    vocabulary = {t.tag for t in split.tags}
    assert split.new <= vocabulary and not split.unknown & vocabulary  # new kept by name, unknown gone
    assert not any((split.new | split.unknown) & set(item.tags) for item in split.train)
    assert all(item.tags for item in split.train)
    assert not {i.id for i in split.train} & {i.id for i in split.test}
    for item in split.test:
        gold = set(item.tags or ())
        assert not gold & split.unknown
        expected = "unknown" if not gold else "new" if gold & split.new else "known"
        assert split.group[item.id] == expected
    assert split.report["sampled"] == {
        g: min(q, split.report["test_pool"][g]) for g, q in (("new", 40), ("known", 50), ("unknown", 10))
    }
    assert len(split.test_vectors) == len(split.test)
    # A larger quota keeps the items already drawn (per-item LLM caches stay valid).
    larger = make_split(ds, _split_args(n_new=60))
    assert {i.id for i in split.test} <= {i.id for i in larger.test}
    assert make_split(ds, _split_args(seed=1)).new != split.new
