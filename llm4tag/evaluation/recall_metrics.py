"""Recall metrics of the LLM4Tag paper (section 4.3, table 2).

For every gold item with at least one tag, ``right`` is the number of its gold tags among the first ``k``
candidates predicted for it. ``#Right`` is the mean of ``right`` over the scored items and ``HR#n`` the
share of scored items with ``right >= n`` (n = 1, 2, 3).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from numbers import Integral
from typing import Any

__all__ = ["recall_metrics"]


def _tag_name(candidate: Any) -> str:
    """A candidate is a tag string, or a mapping with a ``tag`` key (the rows ``llm4tag tag`` writes)."""
    if isinstance(candidate, Mapping):
        return candidate["tag"]
    return candidate


def recall_metrics(
    gold: Mapping[str, Collection[str]],
    predicted: Mapping[str, Sequence[str]],
    k: int = 20,
) -> dict[str, float]:
    """Score candidate lists against gold annotations.

    Returns ``items`` (gold items scored), ``k``, ``right`` (#Right), ``hr1``/``hr2``/``hr3`` (HR#n),
    ``gold_tags_per_item`` (mean number of gold tags of the scored items) and ``missing_predictions``
    (scored items without a prediction; they count as 0 right). Gold items with no tags are skipped,
    predictions for ids not in ``gold`` are ignored. A candidate repeated within the first ``k`` counts
    once. With no item to score, every mean is 0.0.
    """
    if isinstance(k, bool) or not isinstance(k, Integral) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    k = int(k)
    scored = 0
    missing = 0
    total_right = 0
    total_gold = 0
    hits = [0, 0, 0]  # items with right >= 1, 2, 3
    for item_id, gold_tags in gold.items():
        if not gold_tags:
            continue
        gold_set = set(gold_tags)
        scored += 1
        total_gold += len(gold_set)
        candidates = predicted.get(item_id)
        if candidates is None:
            missing += 1
            right = 0
        else:
            top = {_tag_name(c) for c in list(candidates)[:k]}
            right = len(gold_set & top)
        total_right += right
        for n in range(3):
            if right >= n + 1:
                hits[n] += 1
    denominator = scored or 1
    return {
        "items": scored,
        "k": k,
        "right": total_right / denominator,
        "hr1": hits[0] / denominator,
        "hr2": hits[1] / denominator,
        "hr3": hits[2] / denominator,
        "gold_tags_per_item": total_gold / denominator,
        "missing_predictions": missing,
    }
