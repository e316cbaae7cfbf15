"""Tagging metrics of the LLM4Tag paper (section 4.1.3, table 1 and section 4.5, figure 8) and calibration.

Inputs
------
``gold`` maps an item id to its gold tags (a collection of strings). Only gold items with at least one tag
are *scored*; predictions for ids that are not scored are ignored.

``predictions`` maps an item id to a ranked sequence of predicted tags (first = best). A predicted tag is a
tag string or a mapping with a ``tag`` key and optional ``confidence`` (a finite number in [0, 1], or
``None``) and ``source`` keys, i.e. the ``tags`` list of a row written by ``llm4tag tag``
(:func:`predictions_from_rows` turns such rows into this mapping). A tag repeated in one item's list counts
once, at its first (best) rank and with that occurrence's confidence. An absent id, ``None`` and an empty
list all mean "no predicted tag" for the item.

Conventions
-----------
* ``acc@k`` (formula 12) is averaged over the scored items with at least one predicted tag; items without
  any predicted tag are excluded from it and only lower ``coverage@k`` (formula 13), which is averaged over
  all scored items. This is what makes accuracy rise while coverage falls as a confidence threshold prunes
  tags (figure 8 of the paper).
* A mean over an empty set (e.g. ``acc@k`` when no item has a predicted tag, or anything when no gold item
  has a tag) is ``nan``; counts stay integers. ``format_table`` prints ``nan`` and plots skip such points.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from numbers import Integral, Real
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_THRESHOLDS",
    "MULTI_KEYS",
    "SINGLE_KEYS",
    "SUBJECT_KEYS",
    "acc_at_k",
    "bootstrap_interval",
    "calibration_pairs",
    "coverage_at_k",
    "evaluate_tagging",
    "expected_calibration_error",
    "metric_intervals",
    "predictions_from_rows",
    "relative_improvement",
    "single_tag_prf",
    "subject_scores",
    "task_type",
    "threshold_curve",
]

DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(i / 10, 1) for i in range(10))  # 0.0, 0.1, ..., 0.9
MULTI_KEYS: tuple[str, ...] = ("acc@1", "acc@2", "acc@3")  # the paper's table 1 metrics, multi-tag tasks
SINGLE_KEYS: tuple[str, ...] = ("precision", "recall", "f1")  # ... and single-tag tasks
# Subject indexing (Annif's eval, SemEval-2025 Task 5): document-averaged precision, recall and F1 of
# the first 5 tags shown (an item shown nothing scores 0 on all three), nDCG of the first 10 with binary
# relevance, and the top tag's accuracy over ALL items (Acc@1 of formula 12 skips items shown nothing).
SUBJECT_KEYS: tuple[str, ...] = ("p@5", "r@5", "f1@5", "ndcg@10", "acc@1_all")
_NAN = float("nan")

# A prepared item: its ranked, de-duplicated predicted tags as (tag, confidence or None).
_Ranked = list[tuple[str, float | None]]


# --------------------------------------------------------------------------------------------- validation
def _check_k(k: Any, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, Integral) or k < 1:
        raise ValueError(f"{name} must be a positive integer, got {k!r}")
    return int(k)


def _check_unit(value: Any, what: str) -> float:
    """A finite real number in [0, 1] (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{what} must be a number in [0, 1], got {value!r}")
    number = float(value)
    if not math.isfinite(number) or not 0.0 <= number <= 1.0:
        raise ValueError(f"{what} must be a finite number in [0, 1], got {value!r}")
    return number


def _check_thresholds(thresholds: Iterable[Any]) -> list[float]:
    return [_check_unit(t, "threshold") for t in thresholds]


def _check_task(task: str, allow_auto: bool) -> str:
    allowed = ("auto", "single", "multi") if allow_auto else ("single", "multi")
    if task not in allowed:
        raise ValueError(f"task must be one of {', '.join(allowed)}, got {task!r}")
    return task


# ------------------------------------------------------------------------------------------- preparation
def _scored_gold(gold: Mapping[Any, Collection[str]]) -> dict[Any, frozenset[str]]:
    """The gold items with at least one tag, as sets."""
    scored: dict[Any, frozenset[str]] = {}
    for item_id, tags in gold.items():
        if tags is None:
            continue
        if isinstance(tags, str | bytes):
            raise ValueError(f"gold tags of item {item_id!r} must be a collection of tags, not a string")
        tag_set = frozenset(tags)
        if tag_set:
            scored[item_id] = tag_set
    return scored


def _rank(item_id: Any, preds: Any) -> _Ranked:
    """Validate and de-duplicate one item's ranked predictions."""
    if preds is None:
        return []
    if isinstance(preds, str | bytes | Mapping) or not isinstance(preds, Iterable):
        raise ValueError(f"predictions of item {item_id!r} must be a sequence of tags, got {preds!r}")
    ranked: _Ranked = []
    seen: set[str] = set()
    for pred in preds:
        confidence: float | None = None
        if isinstance(pred, Mapping):
            if "tag" not in pred:
                raise ValueError(f"a prediction of item {item_id!r} has no 'tag' key: {pred!r}")
            tag = pred["tag"]
            raw = pred.get("confidence")
            if raw is not None:
                confidence = _check_unit(raw, f"confidence of tag {tag!r} of item {item_id!r}")
        else:
            tag = pred
        if not isinstance(tag, str):
            raise ValueError(f"a predicted tag of item {item_id!r} is not a string: {tag!r}")
        if tag not in seen:
            seen.add(tag)
            ranked.append((tag, confidence))
    return ranked


def _prepare(
    gold: Mapping[Any, Collection[str]], predictions: Mapping[Any, Sequence[Any]]
) -> tuple[dict[Any, frozenset[str]], dict[Any, _Ranked]]:
    """Scored gold sets and, for each scored item, its ranked predictions (``[]`` when it has none)."""
    scored = _scored_gold(gold)
    ranked = {item_id: _rank(item_id, predictions.get(item_id)) for item_id in scored}
    return scored, ranked


def _prune(ranked: dict[Any, _Ranked], threshold: float) -> dict[Any, _Ranked]:
    """Drop the tags whose confidence is below ``threshold`` (tags without a confidence are kept)."""
    return {
        item_id: [(tag, conf) for tag, conf in preds if conf is None or conf >= threshold]
        for item_id, preds in ranked.items()
    }


def _mean(total: float, count: int) -> float:
    return total / count if count else _NAN


# ------------------------------------------------------------------------------------------ the metrics
def _acc(scored: dict[Any, frozenset[str]], ranked: dict[Any, _Ranked], k: int) -> tuple[float, int]:
    """Acc@k and N' (the number of items with at least one predicted tag)."""
    total = 0.0
    n_items = 0
    for item_id, gold_set in scored.items():
        preds = ranked[item_id]
        if not preds:
            continue
        k_eff = min(k, len(preds))
        total += sum(tag in gold_set for tag, _ in preds[:k_eff]) / k_eff
        n_items += 1
    return _mean(total, n_items), n_items


def _coverage(ranked: dict[Any, _Ranked], k: int) -> float:
    return _mean(sum(len(preds) >= k for preds in ranked.values()), len(ranked))


def _prf(scored: dict[Any, frozenset[str]], ranked: dict[Any, _Ranked]) -> dict[str, float]:
    predicted = 0
    correct = 0
    for item_id, gold_set in scored.items():
        preds = ranked[item_id]
        if preds:
            predicted += 1
            correct += preds[0][0] in gold_set
    precision = _mean(correct, predicted)
    recall = _mean(correct, len(scored))
    if math.isnan(precision) or math.isnan(recall) or precision + recall == 0:
        f1 = 0.0 if len(scored) else _NAN
    else:
        f1 = 2 * precision * recall / (precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1}


def acc_at_k(gold: Mapping[Any, Collection[str]], predictions: Mapping[Any, Sequence[Any]], k: int) -> float:
    """Acc@k of the paper (formula 12) for multi-tag tasks.

    For each scored item i with predicted tags T_i, k' = min(k, len(T_i)) and the item's accuracy is the
    share of right tags (tags in its gold set) among T_i[0..k'-1]; Acc@k is the mean over the items.
    Items with no predicted tag at all are **excluded** (N' counts only items with at least one predicted
    tag): the paper allows fewer than k generated tags, and pruning by a confidence threshold then raises
    Acc@k while lowering Coverage@k (figure 8). Their absence is measured by :func:`coverage_at_k`.
    Returns ``nan`` when no scored item has a predicted tag.
    """
    k = _check_k(k)
    scored, ranked = _prepare(gold, predictions)
    return _acc(scored, ranked, k)[0]


def coverage_at_k(
    gold: Mapping[Any, Collection[str]], predictions: Mapping[Any, Sequence[Any]], k: int
) -> float:
    """Coverage@k of the paper (formula 13): the share of scored gold items with at least ``k`` predicted
    tags. Items without a prediction count as uncovered. ``nan`` when no gold item has a tag."""
    k = _check_k(k)
    _, ranked = _prepare(gold, predictions)
    return _coverage(ranked, k)


def single_tag_prf(
    gold: Mapping[Any, Collection[str]], predictions: Mapping[Any, Sequence[Any]]
) -> dict[str, float]:
    """Precision, recall and F1 of a single-tag task, using each item's top prediction.

    ``correct`` counts the scored items whose top predicted tag is in their gold set. Precision is
    ``correct`` over the scored items with a prediction (``nan`` when there is none), recall is ``correct``
    over all scored items, and F1 their harmonic mean (0.0 when both are 0 or precision is undefined).
    """
    scored, ranked = _prepare(gold, predictions)
    return _prf(scored, ranked)


def task_type(gold: Mapping[Any, Collection[str]]) -> str:
    """``"single"`` when every scored gold item has exactly one gold tag, else ``"multi"``.

    Raises ValueError when no gold item has a tag.
    """
    scored = _scored_gold(gold)
    if not scored:
        raise ValueError("no gold item has a tag: nothing to score")
    return "single" if all(len(tags) == 1 for tags in scored.values()) else "multi"


# ---------------------------------------------------------------------------------- bootstrap intervals
def bootstrap_interval(
    statistic, *columns: Sequence[float], confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """``(value, low, high)``: ``statistic`` of the per-item ``columns`` and its percentile bootstrap
    interval, resampling items (the columns' rows together, so paired comparisons stay paired).

    ``statistic(*columns, axis=-1)`` must reduce along ``axis`` (scipy's vectorised form).
    """
    from scipy.stats import bootstrap

    data = tuple(np.asarray(c, dtype=np.float64) for c in columns)
    value = float(statistic(*data, axis=-1))
    if data[0].size < 2:
        return value, _NAN, _NAN
    result = bootstrap(
        data,
        statistic,
        paired=True,
        vectorized=True,
        confidence_level=confidence,
        n_resamples=resamples,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    low, high = result.confidence_interval
    return value, float(low), float(high)


def _subject_scores(
    gold_set: frozenset[str], preds: _Ranked, k: int = 5, ndcg_k: int = 10
) -> dict[str, float]:
    """One item's P@k, R@k, F1@k (of its first ``k`` tags; 0 when it has none) and nDCG@``ndcg_k``."""
    first = [tag in gold_set for tag, _ in preds[:k]]
    right = sum(first)
    gains = [1.0 / math.log2(rank + 2) for rank, (tag, _) in enumerate(preds[:ndcg_k]) if tag in gold_set]
    ideal = sum(1.0 / math.log2(rank + 2) for rank in range(min(len(gold_set), ndcg_k)))
    return {
        f"p@{k}": right / len(first) if first else 0.0,
        f"r@{k}": right / len(gold_set),
        f"f1@{k}": 2 * right / (len(first) + len(gold_set)),
        f"ndcg@{ndcg_k}": sum(gains) / ideal,
    }


def subject_scores(
    gold: Mapping[Any, Collection[str]], predictions: Mapping[Any, Sequence[Any]]
) -> dict[str, float]:
    """Document-averaged P@5, R@5, F1@5, nDCG@10 and Acc@1 over all scored items (:data:`SUBJECT_KEYS`):
    an item shown nothing counts, with 0."""
    return _subject_means(*_prepare(gold, predictions))


def _subject_means(scored: dict[Any, frozenset[str]], ranked: dict[Any, _Ranked]) -> dict[str, float]:
    columns = _item_columns(scored, ranked)
    return {key: _mean(float(columns[key].sum()), len(scored)) for key in SUBJECT_KEYS}


def _item_columns(scored: dict[Any, frozenset[str]], ranked: dict[Any, _Ranked]) -> dict[str, np.ndarray]:
    """Per scored item: whether it has a prediction, its top tag is right, its accuracy at k=1..3, and
    its subject-indexing scores (:data:`SUBJECT_KEYS`)."""
    predicted, top_right, acc = [], [], {k: [] for k in (1, 2, 3)}
    subject: dict[str, list[float]] = {key: [] for key in SUBJECT_KEYS}
    for item_id, gold_set in scored.items():
        preds = ranked[item_id]
        predicted.append(1.0 if preds else 0.0)
        top_right.append(1.0 if preds and preds[0][0] in gold_set else 0.0)
        for k in acc:
            k_eff = min(k, len(preds))
            acc[k].append(sum(tag in gold_set for tag, _ in preds[:k_eff]) / k_eff if preds else 0.0)
        for key, value in _subject_scores(gold_set, preds).items():
            subject[key].append(value)
        subject["acc@1_all"].append(top_right[-1])
    columns = {"predicted": np.asarray(predicted), "top_right": np.asarray(top_right)}
    columns.update({f"acc@{k}": np.asarray(v) for k, v in acc.items()})
    columns.update({key: np.asarray(v, np.float64) for key, v in subject.items()})
    return columns


def _ratio(num, den, axis=-1):
    den_sum = np.sum(den, axis=axis)
    return np.where(den_sum > 0, np.sum(num, axis=axis) / np.maximum(den_sum, 1), np.nan)


def _f1(right, predicted, axis=-1):
    # 2PR/(P+R) with P = right/predicted and R = right/items simplifies to 2 right/(predicted + items).
    return 2 * np.sum(right, axis=axis) / (np.sum(predicted, axis=axis) + right.shape[axis])


def _metric_statistics() -> dict[str, tuple[Any, tuple[str, ...]]]:
    stats: dict[str, tuple[Any, tuple[str, ...]]] = {
        "precision": (_ratio, ("top_right", "predicted")),
        "recall": (lambda right, axis=-1: np.mean(right, axis=axis), ("top_right",)),
        "f1": (_f1, ("top_right", "predicted")),
    }
    for k in (1, 2, 3):
        # Acc@k averages over the items with a prediction (formula 12).
        stats[f"acc@{k}"] = (_ratio, (f"acc@{k}", "predicted"))
    for key in SUBJECT_KEYS:
        # Averaged over every scored item: showing nothing scores 0.
        stats[key] = (lambda values, axis=-1: np.mean(values, axis=axis), (key,))
    return stats


def metric_intervals(
    gold: Mapping[Any, Collection[str]],
    predictions: Mapping[Any, Sequence[Any]],
    task: str = "auto",
    baseline: Mapping[Any, Sequence[Any]] | None = None,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
    keys: Sequence[str] | None = None,
) -> dict[str, dict[str, float]]:
    """The task's table-1 metrics (or ``keys``, any of them and :data:`SUBJECT_KEYS`) with percentile
    bootstrap intervals over the scored items: ``{metric: {"value", "low", "high"}}``. With
    ``baseline`` (another method's predictions on the same items) each metric also gets ``diff``,
    ``diff_low``, ``diff_high``: the paired interval of predictions minus baseline, which is what says
    whether one method beats the other."""
    task = _check_task(task, allow_auto=True)
    if task == "auto":
        task = task_type(gold)
    scored, ranked = _prepare(gold, predictions)
    columns = _item_columns(scored, ranked)
    base = _item_columns(*_prepare(gold, baseline)) if baseline is not None else None
    out: dict[str, dict[str, float]] = {}
    statistics = _metric_statistics()
    if keys is None:
        keys = MULTI_KEYS if task == "multi" else SINGLE_KEYS
    unknown = [k for k in keys if k not in statistics]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}: choose among {sorted(statistics)}")
    for name in keys:
        statistic, inputs = statistics[name]
        value, low, high = bootstrap_interval(
            statistic, *(columns[c] for c in inputs), confidence=confidence, resamples=resamples, seed=seed
        )
        out[name] = {"value": value, "low": low, "high": high}
        if base is not None:
            n = len(inputs)

            def difference(*cols, axis=-1, statistic=statistic, n=n):
                return statistic(*cols[:n], axis=axis) - statistic(*cols[n:], axis=axis)

            diff, diff_low, diff_high = bootstrap_interval(
                difference,
                *(columns[c] for c in inputs),
                *(base[c] for c in inputs),
                confidence=confidence,
                resamples=resamples,
                seed=seed,
            )
            out[name].update({"diff": diff, "diff_low": diff_low, "diff_high": diff_high})
    return out


# ------------------------------------------------------------------------------------------- calibration
def calibration_pairs(
    gold: Mapping[Any, Collection[str]], predictions: Mapping[Any, Sequence[Any]]
) -> Iterator[tuple[float, bool]]:
    """``(confidence, tag in gold)`` for every predicted tag that has a confidence, over the scored items
    (a repeated tag counts once, with its first confidence). Inputs are validated before the first yield."""
    scored, ranked = _prepare(gold, predictions)

    def pairs() -> Iterator[tuple[float, bool]]:
        for item_id, gold_set in scored.items():
            for tag, conf in ranked[item_id]:
                if conf is not None:
                    yield conf, tag in gold_set

    return pairs()


def expected_calibration_error(pairs: Iterable[tuple[float, bool]], bins: int = 10) -> dict[str, Any]:
    """Expected calibration error over equal-width confidence bins.

    Bin b covers [b/bins, (b+1)/bins); the last bin also holds confidence 1.0.
    ECE = sum over bins of |B_b| / n * |accuracy(B_b) - mean confidence(B_b)|.

    Returns a dict with ``ece`` (``nan`` when n = 0), ``n``, the overall ``accuracy`` and ``confidence``
    (means) and ``bins``: one dict per bin, empty ones included, with ``lo``, ``hi``, ``count``,
    ``accuracy`` and ``confidence`` (the last two ``nan`` for an empty bin).
    """
    bins = _check_k(bins, "bins")
    confidences: list[float] = []
    correct: list[float] = []
    for index, (confidence, right) in enumerate(pairs):
        confidences.append(_check_unit(confidence, f"confidence of pair {index}"))
        correct.append(1.0 if right else 0.0)
    conf = np.asarray(confidences, dtype=np.float64)
    hit = np.asarray(correct, dtype=np.float64)
    n = int(conf.size)
    # floor(c * bins) rather than np.digitize on linspace edges: linspace(0, 1, 11)[3] is 0.30000000000000004,
    # which would put confidence 0.3 in the bin below.
    index = np.minimum(np.floor(conf * bins).astype(np.int64), bins - 1)
    counts = np.bincount(index, minlength=bins)
    conf_sums = np.bincount(index, weights=conf, minlength=bins)
    hit_sums = np.bincount(index, weights=hit, minlength=bins)
    table = []
    ece = 0.0
    for b in range(bins):
        count = int(counts[b])
        accuracy = float(hit_sums[b] / count) if count else _NAN
        mean_conf = float(conf_sums[b] / count) if count else _NAN
        if count:
            ece += count / n * abs(accuracy - mean_conf)
        table.append(
            {
                "lo": b / bins,
                "hi": (b + 1) / bins,
                "count": count,
                "accuracy": accuracy,
                "confidence": mean_conf,
            }
        )
    return {
        "ece": ece if n else _NAN,
        "n": n,
        "accuracy": float(hit.mean()) if n else _NAN,
        "confidence": float(conf.mean()) if n else _NAN,
        "bins": table,
    }


# ------------------------------------------------------------------------------------- threshold curve
def _curve_point(
    scored: dict[Any, frozenset[str]], ranked: dict[Any, _Ranked], task: str
) -> dict[str, float]:
    if task == "multi":
        point = {f"acc@{k}": _acc(scored, ranked, k)[0] for k in (1, 2, 3)}
        point.update({f"coverage@{k}": _coverage(ranked, k) for k in (1, 2, 3)})
    else:
        point = _prf(scored, ranked)
        point["coverage@1"] = _coverage(ranked, 1)
    return point


def _curve(
    scored: dict[Any, frozenset[str]], ranked: dict[Any, _Ranked], thresholds: list[float], task: str
) -> list[dict[str, float]]:
    total_tags = sum(len(preds) for preds in ranked.values())
    curve = []
    for threshold in thresholds:
        kept = _prune(ranked, threshold)
        kept_tags = sum(len(preds) for preds in kept.values())
        point: dict[str, float] = {"threshold": threshold}
        point.update(_curve_point(scored, kept, task))
        point["tags_per_item"] = _mean(kept_tags, len(kept))
        point["pruning_rate"] = _mean(total_tags - kept_tags, total_tags)
        curve.append(point)
    return curve


def threshold_curve(
    gold: Mapping[Any, Collection[str]],
    predictions: Mapping[Any, Sequence[Any]],
    thresholds: Iterable[float],
    task: str,
) -> list[dict[str, float]]:
    """Metrics after dropping the predicted tags whose confidence is below each threshold.

    Tags without a confidence are never dropped. For ``task="multi"`` each point has ``acc@1..3`` and
    ``coverage@1..3``; for ``"single"`` ``precision``, ``recall``, ``f1`` and ``coverage@1`` (``"auto"``
    picks with :func:`task_type`). Every point also has ``threshold``, ``tags_per_item`` (mean kept tags per
    scored item) and ``pruning_rate`` (share of the predicted tags dropped; ``nan`` with no predicted tag).
    """
    thresholds = _check_thresholds(thresholds)
    task = _check_task(task, allow_auto=True)
    if task == "auto":
        task = task_type(gold)
    scored, ranked = _prepare(gold, predictions)
    return _curve(scored, ranked, thresholds, task)


# ---------------------------------------------------------------------------------------------- report
def evaluate_tagging(
    gold: Mapping[Any, Collection[str]],
    predictions: Mapping[Any, Sequence[Any]],
    task: str = "auto",
    thresholds: Iterable[float] | None = None,
    bins: int = 10,
) -> dict[str, Any]:
    """A full report of ``predictions`` against ``gold``.

    Keys: ``task`` ("single"/"multi"; ``"auto"`` uses :func:`task_type`), ``items`` (scored gold items),
    ``predicted_items`` (scored items with at least one predicted tag: the N' of Acc@k),
    ``missing_predictions`` (scored items whose id is absent from ``predictions``), ``empty_predictions``
    (scored items present with no tag), ``acc@1..3``, ``precision``/``recall``/``f1`` (from the top
    prediction; the paper's metrics for single-tag tasks, also given for multi-tag ones),
    ``coverage@1..3``, ``tags_per_item`` (mean predicted tags per scored item), the subject-indexing
    scores :data:`SUBJECT_KEYS` (P/R/F1@5, nDCG@10, Acc@1 over all items), ``metrics`` (the paper's
    table-1 keys for the task, see :data:`MULTI_KEYS` / :data:`SINGLE_KEYS`), ``calibration`` (the
    :func:`expected_calibration_error` dict, or ``None`` when no predicted tag has a confidence) and
    ``threshold_curve`` (:func:`threshold_curve`, default thresholds 0.0, 0.1, ..., 0.9).
    """
    task = _check_task(task, allow_auto=True)
    thresholds = _check_thresholds(DEFAULT_THRESHOLDS if thresholds is None else thresholds)
    bins = _check_k(bins, "bins")
    if task == "auto":
        task = task_type(gold)
    scored, ranked = _prepare(gold, predictions)
    missing = sum(item_id not in predictions for item_id in scored)
    empty = sum(not preds for preds in ranked.values()) - missing
    report: dict[str, Any] = {"task": task, "items": len(scored)}
    accs = {k: _acc(scored, ranked, k) for k in (1, 2, 3)}
    report["predicted_items"] = accs[1][1]
    report["missing_predictions"] = missing
    report["empty_predictions"] = empty
    report.update({f"acc@{k}": value for k, (value, _) in accs.items()})
    report.update(_prf(scored, ranked))
    report.update({f"coverage@{k}": _coverage(ranked, k) for k in (1, 2, 3)})
    report["tags_per_item"] = _mean(sum(len(preds) for preds in ranked.values()), len(ranked))
    report.update(_subject_means(scored, ranked))
    report["metrics"] = list(MULTI_KEYS if task == "multi" else SINGLE_KEYS)
    pairs = [
        (conf, tag in gold_set)
        for item_id, gold_set in scored.items()
        for tag, conf in ranked[item_id]
        if conf is not None
    ]
    report["calibration"] = expected_calibration_error(pairs, bins) if pairs else None
    report["threshold_curve"] = _curve(scored, ranked, thresholds, task)
    return report


def relative_improvement(
    ours: Mapping[str, float], baseline: Mapping[str, float], keys: Iterable[str]
) -> float:
    """The paper's RI (table 1): the mean over ``keys`` of (ours - baseline) / baseline, as a fraction
    (0.298 for the 29.8% of LLM4Tag over BGE on Browser News).

    Keys whose baseline value is 0, or where either value is not finite (e.g. ``nan``), are skipped, since
    the ratio is undefined there; ``nan`` is returned when every key is skipped. A key missing from either
    mapping raises KeyError.
    """
    ratios = []
    for key in keys:
        if key not in ours or key not in baseline:
            raise KeyError(f"metric {key!r} is missing from {'ours' if key not in ours else 'baseline'}")
        mine, base = float(ours[key]), float(baseline[key])
        if base == 0 or not math.isfinite(base) or not math.isfinite(mine):
            continue
        ratios.append((mine - base) / base)
    return sum(ratios) / len(ratios) if ratios else _NAN


def predictions_from_rows(rows: Iterable[Mapping[str, Any]]) -> dict[Any, Any]:
    """``{id: tags}`` from rows written by ``llm4tag tag`` (``{"id": ..., "tags": [...]}``).

    A row without ``tags`` (or with ``None``) maps to no predicted tag; a repeated id raises ValueError.
    """
    predictions: dict[Any, Any] = {}
    for row in rows:
        if "id" not in row:
            raise ValueError(f"a prediction row has no 'id': {row!r}")
        item_id = row["id"]
        if item_id in predictions:
            raise ValueError(f"item {item_id!r} appears in more than one prediction row")
        predictions[item_id] = row.get("tags") or []
    return predictions
