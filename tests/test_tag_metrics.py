"""Tests of llm4tag.evaluation.tagging against numbers computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llm4tag.evaluation.tagging import (
    DEFAULT_THRESHOLDS,
    acc_at_k,
    calibration_pairs,
    coverage_at_k,
    evaluate_tagging,
    expected_calibration_error,
    predictions_from_rows,
    relative_improvement,
    single_tag_prf,
    task_type,
    threshold_curve,
)


def p(tag: str, confidence: float | None = None, source: str = "llm") -> dict:
    return {"tag": tag, "confidence": confidence, "source": source}


# Multi-tag example. Scored items: i1, i2, i3, i5, i6 (i4 has no gold tag).
GOLD = {
    "i1": ["a", "b", "c"],
    "i2": ("a",),
    "i3": {"b", "d"},
    "i4": [],  # not scored
    "i5": ["x", "y"],  # no prediction at all (id absent)
    "i6": ["e"],  # an empty prediction list
}
PRED = {
    "i1": [p("a", 0.9), p("z", 0.8), p("b", 0.6), p("c", 0.3)],
    "i2": [p("q", 0.95), p("a", 0.4)],  # fewer predictions than k = 3
    "i3": ["b"],  # a plain string, no confidence: never pruned
    "i4": [p("a", 0.9)],  # ignored: no gold tag
    "i6": [],
    "not-in-gold": [p("a", 0.9)],  # ignored
}

# Single-tag example. Scored items: s1..s4 (s5 has no gold tag).
GOLD_S = {"s1": ["x"], "s2": ["y"], "s3": ["z"], "s4": ["w"], "s5": []}
PRED_S = {
    "s1": ["x", "y"],  # top right
    "s2": [p("q", 0.9)],  # top wrong
    "s3": [p("z", 0.6), p("y", 0.2)],  # top right
    # s4: missing prediction
}


# --------------------------------------------------------------------------------------------- Acc@k
def test_acc_at_k_hand_computed():
    # N' = 3 (i1, i2, i3 have predictions; i5 and i6 have none and are excluded).
    # k=1: i1 a ok -> 1, i2 q -> 0, i3 b ok -> 1
    assert acc_at_k(GOLD, PRED, 1) == pytest.approx(2 / 3)
    # k=2: i1 a,z -> 1/2, i2 q,a -> 1/2, i3 (k'=1) b -> 1
    assert acc_at_k(GOLD, PRED, 2) == pytest.approx(2 / 3)
    # k=3: i1 a,z,b -> 2/3, i2 (k'=2) -> 1/2, i3 (k'=1) -> 1
    assert acc_at_k(GOLD, PRED, 3) == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    # k larger than every list: i1 (k'=4) a,z,b,c -> 3/4
    assert acc_at_k(GOLD, PRED, 10) == pytest.approx((3 / 4 + 1 / 2 + 1) / 3)


def test_acc_at_k_repeated_tag_counts_once():
    gold = {"i": ["a", "b"]}
    # "a" twice: the repeat is dropped, so the list is a, z, b
    assert acc_at_k(gold, {"i": ["a", "a", "z", "b"]}, 2) == pytest.approx(1 / 2)
    assert acc_at_k(gold, {"i": ["a", "a", "z", "b"]}, 3) == pytest.approx(2 / 3)


def test_acc_at_k_nan_when_nothing_predicted():
    assert math.isnan(acc_at_k(GOLD, {}, 1))
    assert math.isnan(acc_at_k({}, PRED, 1))


# ---------------------------------------------------------------------------------------- Coverage@k
def test_coverage_at_k_hand_computed():
    # 5 scored items; predicted tags: i1 4, i2 2, i3 1, i5 0 (absent), i6 0 (empty)
    assert coverage_at_k(GOLD, PRED, 1) == pytest.approx(3 / 5)
    assert coverage_at_k(GOLD, PRED, 2) == pytest.approx(2 / 5)
    assert coverage_at_k(GOLD, PRED, 3) == pytest.approx(1 / 5)
    assert coverage_at_k(GOLD, PRED, 4) == pytest.approx(1 / 5)
    assert coverage_at_k(GOLD, PRED, 5) == 0.0


# ---------------------------------------------------------------------------------------- P / R / F1
def test_single_tag_prf_with_missing_prediction():
    # correct = 2 (s1, s3); items with a prediction = 3; scored = 4
    m = single_tag_prf(GOLD_S, PRED_S)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(1 / 2)
    assert m["f1"] == pytest.approx(2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2))  # = 4/7
    assert m["f1"] == pytest.approx(4 / 7)


def test_single_tag_prf_zero_cases():
    m = single_tag_prf(GOLD_S, {"s1": ["nope"]})
    assert (m["precision"], m["recall"], m["f1"]) == (0.0, 0.0, 0.0)
    m = single_tag_prf(GOLD_S, {})
    assert math.isnan(m["precision"])
    assert m["recall"] == 0.0
    assert m["f1"] == 0.0


def test_task_type():
    assert task_type(GOLD_S) == "single"
    assert task_type(GOLD) == "multi"
    assert task_type({"a": ["x", "x"]}) == "single"  # one distinct tag
    with pytest.raises(ValueError, match="no gold item"):
        task_type({"a": []})


# ------------------------------------------------------------------------------------------------ ECE
def test_ece_hand_computed_three_bins_used():
    pairs = [(0.0, False), (0.05, True), (0.6, False), (0.7, True), (1.0, True), (0.95, True)]
    r = expected_calibration_error(pairs, bins=5)
    # bin [0, .2): acc .5, conf .025 -> gap .475; bin [.6, .8): acc .5, conf .65 -> gap .15;
    # bin [.8, 1]: acc 1, conf .975 -> gap .025 (1.0 lands in the last bin). Each holds 2 of 6.
    assert r["ece"] == pytest.approx((2 * 0.475 + 2 * 0.15 + 2 * 0.025) / 6)
    assert r["ece"] == pytest.approx(1.3 / 6)
    assert r["n"] == 6
    assert r["accuracy"] == pytest.approx(4 / 6)
    assert [b["count"] for b in r["bins"]] == [2, 0, 0, 2, 2]
    first, last = r["bins"][0], r["bins"][-1]
    assert (first["lo"], first["hi"]) == (0.0, pytest.approx(0.2))
    assert first["accuracy"] == pytest.approx(0.5)
    assert first["confidence"] == pytest.approx(0.025)
    assert (last["lo"], last["hi"]) == (pytest.approx(0.8), 1.0)
    assert last["accuracy"] == 1.0
    assert last["confidence"] == pytest.approx(0.975)
    assert r["bins"][3]["confidence"] == pytest.approx(0.65)
    assert math.isnan(r["bins"][1]["accuracy"])
    assert math.isnan(r["bins"][1]["confidence"])


def test_ece_bin_edges_and_perfect_calibration():
    # 0.3 belongs to [0.3, 0.4) even though 0.3 * 10 is 3.0000000000000004 in floating point
    r = expected_calibration_error([(0.3, True)], bins=10)
    assert r["bins"][3]["count"] == 1
    r = expected_calibration_error([(1.0, True), (0.0, False)], bins=10)
    assert r["ece"] == 0.0
    assert r["bins"][0]["count"] == 1 and r["bins"][9]["count"] == 1
    empty = expected_calibration_error([], bins=4)
    assert empty["n"] == 0 and math.isnan(empty["ece"]) and len(empty["bins"]) == 4


def test_calibration_pairs():
    pairs = sorted(calibration_pairs(GOLD, PRED))
    # i1: a .9 ok, z .8 no, b .6 ok, c .3 ok; i2: q .95 no, a .4 ok; i3 has no confidence; i4 ignored
    assert pairs == [(0.3, True), (0.4, True), (0.6, True), (0.8, False), (0.9, True), (0.95, False)]


# ------------------------------------------------------------------------------------ threshold curve
def test_threshold_curve_multi():
    curve = threshold_curve(GOLD, PRED, [0.0, 0.5, 0.85, 0.96], task="multi")
    assert [pt["threshold"] for pt in curve] == [0.0, 0.5, 0.85, 0.96]
    assert curve[0]["acc@3"] == pytest.approx(acc_at_k(GOLD, PRED, 3))
    assert curve[0]["pruning_rate"] == 0.0
    # t=0.5 keeps i1 a,z,b; i2 q; i3 b
    assert curve[1]["acc@2"] == pytest.approx((1 / 2 + 0 + 1) / 3)
    assert (curve[1]["coverage@1"], curve[1]["coverage@2"]) == (pytest.approx(3 / 5), pytest.approx(1 / 5))
    # t=0.85 keeps i1 a; i2 q; i3 b
    assert curve[2]["acc@1"] == pytest.approx(2 / 3)
    assert curve[2]["coverage@2"] == 0.0
    # t=0.96 keeps only i3 b (no confidence): accuracy rises as coverage falls
    assert curve[3]["acc@1"] == 1.0
    assert curve[3]["coverage@1"] == pytest.approx(1 / 5)
    assert curve[3]["pruning_rate"] == pytest.approx(6 / 7)
    assert curve[3]["tags_per_item"] == pytest.approx(1 / 5)
    for k in (1, 2, 3):
        cov = [pt[f"coverage@{k}"] for pt in curve]
        assert cov == sorted(cov, reverse=True), k


def test_threshold_curve_single_and_auto():
    curve = threshold_curve(GOLD_S, PRED_S, [0.0, 0.7, 1.0], task="auto")
    assert set(curve[0]) == {
        "threshold",
        "precision",
        "recall",
        "f1",
        "coverage@1",
        "tags_per_item",
        "pruning_rate",
    }
    assert curve[0]["precision"] == pytest.approx(2 / 3)
    # t=0.7: s1 (no confidences) and s2 q .9 remain; s3 pruned -> correct 1 of 2 predicted, of 4 scored
    assert curve[1]["precision"] == pytest.approx(1 / 2)
    assert curve[1]["recall"] == pytest.approx(1 / 4)
    assert curve[1]["coverage@1"] == pytest.approx(2 / 4)
    cov = [pt["coverage@1"] for pt in curve]
    assert cov == sorted(cov, reverse=True)


def test_threshold_curve_everything_pruned_gives_nan_accuracy():
    curve = threshold_curve({"i": ["a"]}, {"i": [p("a", 0.2)]}, [1.0], task="multi")
    assert math.isnan(curve[0]["acc@1"])
    assert curve[0]["coverage@1"] == 0.0


# ---------------------------------------------------------------------------------------------- report
def test_evaluate_tagging_multi():
    r = evaluate_tagging(GOLD, PRED)
    assert r["task"] == "multi"
    assert r["items"] == 5
    assert r["predicted_items"] == 3
    assert r["missing_predictions"] == 1  # i5
    assert r["empty_predictions"] == 1  # i6
    assert r["acc@1"] == pytest.approx(2 / 3)
    assert r["acc@3"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert r["coverage@2"] == pytest.approx(2 / 5)
    assert r["tags_per_item"] == pytest.approx(7 / 5)
    assert r["metrics"] == ["acc@1", "acc@2", "acc@3"]
    assert r["calibration"]["n"] == 6
    assert [pt["threshold"] for pt in r["threshold_curve"]] == list(DEFAULT_THRESHOLDS)
    assert len(r["threshold_curve"]) == 10


def test_evaluate_tagging_single_without_confidences():
    gold = {"s1": ["x"], "s2": ["y"]}
    r = evaluate_tagging(gold, {"s1": ["x"], "s2": ["x"]}, thresholds=[0.5])
    assert r["task"] == "single"
    assert r["metrics"] == ["precision", "recall", "f1"]
    assert (r["precision"], r["recall"], r["f1"]) == (0.5, 0.5, 0.5)
    assert r["calibration"] is None
    assert r["threshold_curve"][0]["precision"] == 0.5  # nothing to prune


def test_predictions_from_rows():
    rows = [{"id": "i1", "tags": [p("a", 0.5)]}, {"id": "i2", "tags": None}]
    assert predictions_from_rows(rows) == {"i1": [p("a", 0.5)], "i2": []}
    with pytest.raises(ValueError, match="more than one"):
        predictions_from_rows([{"id": 1, "tags": []}, {"id": 1, "tags": []}])


# ------------------------------------------------------------------------------ relative improvement
def test_relative_improvement_paper_table1():
    # LLM4Tag over BGE on Browser News: 29.8% in table 1
    ours = {"acc@1": 0.9041, "acc@2": 0.8511, "acc@3": 0.8273}
    bge = {"acc@1": 0.7427, "acc@2": 0.6584, "acc@3": 0.5976}
    assert relative_improvement(ours, bge, ["acc@1", "acc@2", "acc@3"]) == pytest.approx(0.298, abs=5e-4)


def test_relative_improvement_skips_zero_baseline():
    ours = {"a": 0.6, "b": 0.5, "c": 1.0}
    base = {"a": 0.5, "b": 0.0, "c": 0.8}
    assert relative_improvement(ours, base, ["a", "b", "c"]) == pytest.approx((0.2 + 0.25) / 2)
    assert math.isnan(relative_improvement(ours, base, ["b"]))
    with pytest.raises(KeyError):
        relative_improvement(ours, base, ["missing"])


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("k", [0, -1, 1.5, True, "2"])
def test_bad_k(k):
    with pytest.raises(ValueError, match="k must be a positive integer"):
        acc_at_k(GOLD, PRED, k)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        coverage_at_k(GOLD, PRED, k)


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan"), float("inf"), "0.5", True])
def test_bad_confidence_names_item_and_value(bad):
    preds = {"i2": [p("a", bad)]}
    with pytest.raises(ValueError, match="'i2'") as info:
        acc_at_k(GOLD, preds, 1)
    assert repr(bad) in str(info.value)
    with pytest.raises(ValueError):
        expected_calibration_error([(bad, True)])


def test_bad_thresholds_task_and_shapes():
    with pytest.raises(ValueError, match="threshold"):
        threshold_curve(GOLD, PRED, [0.5, 1.2], task="multi")
    with pytest.raises(ValueError, match="threshold"):
        evaluate_tagging(GOLD, PRED, thresholds=[float("nan")])
    with pytest.raises(ValueError, match="task"):
        evaluate_tagging(GOLD, PRED, task="bogus")
    with pytest.raises(ValueError, match="not a string"):
        acc_at_k({"i": "abc"}, {}, 1)
    with pytest.raises(ValueError, match="sequence of tags"):
        acc_at_k({"i": ["a"]}, {"i": "a"}, 1)
    with pytest.raises(ValueError, match="no 'tag' key"):
        acc_at_k({"i": ["a"]}, {"i": [{"confidence": 0.5}]}, 1)
    with pytest.raises(ValueError, match="bins"):
        expected_calibration_error([(0.5, True)], bins=0)


# ------------------------------------------------------------------------------- bootstrap intervals
def test_metric_intervals_bracket_the_point_value_and_shrink_with_n():
    from llm4tag.evaluation.tagging import metric_intervals

    rng = np.random.default_rng(0)
    widths = []
    for n in (100, 1600):
        gold = {i: {"a" if rng.random() < 0.7 else "b"} for i in range(n)}
        pred = {i: ["a"] for i in range(n)}
        report = evaluate_tagging(gold, pred)
        got = metric_intervals(gold, pred)
        for name in ("precision", "recall", "f1"):
            assert got[name]["low"] <= report[name] <= got[name]["high"]
            assert got[name]["value"] == pytest.approx(report[name])
        widths.append(got["f1"]["high"] - got["f1"]["low"])
    assert widths[1] < widths[0] / 2


def test_metric_intervals_multi_tag_values_equal_acc_at_k_and_skip_unpredicted_items():
    from llm4tag.evaluation.tagging import metric_intervals

    gold = {i: {"a", "b"} if i % 2 else {"c"} for i in range(60)}
    pred = {i: (["a", "c", "b"] if i % 3 else []) for i in range(60)}
    report = evaluate_tagging(gold, pred)
    got = metric_intervals(gold, pred, task="multi")
    for k in (1, 2, 3):
        assert got[f"acc@{k}"]["value"] == pytest.approx(report[f"acc@{k}"])


def test_paired_difference_interval_excludes_zero_only_for_a_real_gap():
    from llm4tag.evaluation.tagging import metric_intervals

    rng = np.random.default_rng(1)
    gold = {i: {"a" if rng.random() < 0.5 else "b"} for i in range(400)}
    weak = {i: ["a"] for i in gold}
    strong = {i: [next(iter(gold[i]))] if rng.random() < 0.8 else ["a"] for i in gold}
    better = metric_intervals(gold, strong, baseline=weak)["f1"]
    assert better["diff_low"] > 0
    same = metric_intervals(gold, weak, baseline=weak)["f1"]
    assert same["diff"] == 0 and same["diff_low"] <= 0 <= same["diff_high"]


def test_subject_scores_average_over_every_item_and_count_an_empty_answer_as_zero():
    from llm4tag.evaluation.tagging import subject_scores

    gold = {"a": {"x", "y"}, "b": {"z"}, "c": {"w"}}
    pred = {"a": ["x", "q", "y"], "b": ["z"], "c": []}
    got = subject_scores(gold, pred)
    # a: 2 right of 3 shown, 2 gold; b: 1 of 1; c: nothing shown.
    assert got["p@5"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert got["r@5"] == pytest.approx((1 + 1 + 0) / 3)
    assert got["f1@5"] == pytest.approx((2 * 2 / 5 + 1 + 0) / 3)
    ideal_a = 1 + 1 / math.log2(3)
    assert got["ndcg@10"] == pytest.approx(((1 + 1 / math.log2(4)) / ideal_a + 1 + 0) / 3)
    assert got["acc@1_all"] == pytest.approx(2 / 3)


def test_subject_scores_read_only_the_first_five_tags_for_f1():
    from llm4tag.evaluation.tagging import subject_scores

    gold = {"a": {"t5"}}
    late = {"a": ["t0", "t1", "t2", "t3", "t4", "t5"]}
    assert subject_scores(gold, late)["f1@5"] == 0.0
    assert subject_scores(gold, late)["ndcg@10"] == pytest.approx(1 / math.log2(7))


def test_metric_intervals_take_subject_keys_and_refuse_unknown_ones():
    from llm4tag.evaluation.tagging import metric_intervals, subject_scores

    gold = {str(i): {"a", "b"} for i in range(40)}
    pred = {str(i): (["a", "c"] if i % 2 else ["c"]) for i in range(40)}
    got = metric_intervals(gold, pred, keys=["f1@5", "ndcg@10"])
    assert got["f1@5"]["value"] == pytest.approx(subject_scores(gold, pred)["f1@5"])
    assert got["f1@5"]["low"] <= got["f1@5"]["value"] <= got["f1@5"]["high"]
    with pytest.raises(ValueError, match="unknown metric"):
        metric_intervals(gold, pred, keys=["f1@7"])
