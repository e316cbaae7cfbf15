"""Tests of llm4tag.metrics against numbers computed by hand."""

from __future__ import annotations

import pytest

from llm4tag.evaluation.recall_metrics import recall_metrics
from llm4tag.evaluation.tables import format_table

GOLD = {
    "i1": ["a", "b", "c"],
    "i2": ["a"],
    "i3": {"b", "d"},
    "i4": [],  # no gold tags: not scored
    "i5": ("x", "y"),  # no prediction: 0 right, counted as missing
}
PRED = {
    "i1": ["a", "z", "b", "c"],
    "i2": ["q", "r", "a"],
    "i3": ["b", "d", "e"],
    "i4": ["a"],
    "not-in-gold": ["a", "b"],  # ignored
}


def test_hand_computed_k3():
    # right with k=3: i1 {a,b} -> 2, i2 {a} -> 1, i3 {b,d} -> 2, i5 -> 0; 4 scored items
    m = recall_metrics(GOLD, PRED, k=3)
    assert m["items"] == 4
    assert m["k"] == 3
    assert m["right"] == pytest.approx(5 / 4)
    assert m["hr1"] == pytest.approx(3 / 4)
    assert m["hr2"] == pytest.approx(2 / 4)
    assert m["hr3"] == pytest.approx(0.0)
    assert m["gold_tags_per_item"] == pytest.approx((3 + 1 + 2 + 2) / 4)
    assert m["missing_predictions"] == 1


def test_default_k_is_20_and_counts_all_candidates():
    # right: i1 3, i2 1, i3 2, i5 0
    m = recall_metrics(GOLD, PRED)
    assert m["k"] == 20
    assert m["right"] == pytest.approx(6 / 4)
    assert (m["hr1"], m["hr2"], m["hr3"]) == pytest.approx((0.75, 0.5, 0.25))


def test_k_truncation():
    # k=1: i1 'a' -> 1, i2 'q' -> 0, i3 'b' -> 1, i5 -> 0
    m = recall_metrics(GOLD, PRED, k=1)
    assert m["right"] == pytest.approx(0.5)
    assert (m["hr1"], m["hr2"], m["hr3"]) == pytest.approx((0.5, 0.0, 0.0))
    # k=2: i1 'a','z' -> 1, i2 -> 0, i3 'b','d' -> 2
    m = recall_metrics(GOLD, PRED, k=2)
    assert m["right"] == pytest.approx(3 / 4)
    assert (m["hr1"], m["hr2"]) == pytest.approx((0.5, 0.25))


def test_missing_predictions_count_as_zero():
    gold = {"a": ["t1"], "b": ["t2"], "c": ["t3"]}
    m = recall_metrics(gold, {"a": ["t1"]}, k=5)
    assert m["items"] == 3
    assert m["missing_predictions"] == 2
    assert m["right"] == pytest.approx(1 / 3)
    assert m["hr1"] == pytest.approx(1 / 3)
    # an empty candidate list is a prediction (with nothing right), not a missing one
    m = recall_metrics(gold, {"a": [], "b": [], "c": []})
    assert m["missing_predictions"] == 0 and m["right"] == 0.0


def test_repeated_candidates_count_once_and_dict_candidates():
    gold = {"a": ["t1", "t2"]}
    assert recall_metrics(gold, {"a": ["t1", "t1", "t1"]}, k=3)["right"] == 1.0
    rows = {"a": [{"tag": "t2", "confidence": 0.9, "source": "llm"}, {"tag": "t1", "confidence": 0.2}]}
    assert recall_metrics(gold, rows, k=2)["hr2"] == 1.0
    assert recall_metrics(gold, rows, k=1)["right"] == 1.0


def test_no_scorable_items():
    m = recall_metrics({"a": [], "b": set()}, {"a": ["x"]})
    assert m["items"] == 0
    assert m["right"] == m["hr1"] == m["gold_tags_per_item"] == 0.0
    assert m["missing_predictions"] == 0


@pytest.mark.parametrize("k", [0, -3, 1.5, True, "5"])
def test_bad_k(k):
    with pytest.raises(ValueError, match="k must be a positive integer"):
        recall_metrics({"a": ["x"]}, {"a": ["x"]}, k=k)


def test_format_table():
    rows = [
        {"method": "graph", "k": 20, "right": 1.25, "hr1": 0.75},
        {"method": "a|b", "k": 5, "right": 1 / 3, "note": "x"},
    ]
    expected = (
        "| method | k | right | hr1 |\n"
        "|---|---:|---:|---:|\n"
        "| graph | 20 | 1.2500 | 0.7500 |\n"
        "| a\\|b | 5 | 0.3333 |  |"
    )
    assert format_table(rows, ["method", "k", "right", "hr1"]) == expected


def test_format_table_metrics_row_and_no_rows():
    m = recall_metrics(GOLD, PRED, k=3)
    table = format_table([m], ["items", "right", "missing_predictions"])
    assert table.splitlines()[2] == "| 4 | 1.2500 | 1 |"
    assert format_table([], ["a", "b"]) == "| a | b |\n|---|---|"
    with pytest.raises(ValueError):
        format_table([m], [])
