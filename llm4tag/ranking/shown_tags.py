"""How many of an item's ranked tags are shown, and from what probability: fitted per store on the
out-of-fold probabilities of its annotated items (never test items), as Annif's ``optimize`` and
``hyperopt`` choose a project's ``limit`` and ``threshold``.

Multi-tag: the ``(limit, threshold, min_tags)`` with the best document-averaged F1 of the tags shown
(at most 5 are read: F1@5, the subject-indexing measure of Annif's users and SemEval-2025 Task 5).
An item shows its best tags down to ``threshold``, at least ``min_tags`` and at most ``limit`` of them.
Document-averaged F1 scores an item shown nothing as 0, so a store where many items' best probability
is low (a large vocabulary with few annotations per tag: 0.2-0.5 is a good probability there) shows
their top tag rather than nothing, which a single cut fitted for precision would not.

Single-tag: the top tag, kept at ``pipeline.threshold`` (the rule BANKING77's and Flipkart's figures
were measured under); nothing is fitted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

OBJECTIVE_K = 5  # F1@5: the first 5 tags shown are read
_THRESHOLDS = 200  # candidate thresholds: quantiles of the held-out probabilities


@dataclass(frozen=True)
class ShownTags:
    """The output rule of one store: at most ``limit`` tags, those at or above ``threshold``, but at
    least ``min_tags``. ``threshold`` None: the configured ``pipeline.threshold`` (single-tag)."""

    limit: int
    threshold: float | None
    min_tags: int = 0
    rule: str = ""
    held_out: dict = field(default_factory=dict)  # the objective and coverage on the held-out items

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ShownTags:
        threshold = data.get("threshold")
        return cls(
            limit=int(data["limit"]),
            threshold=None if threshold is None else float(threshold),
            min_tags=int(data.get("min_tags", 0)),
            rule=str(data.get("rule", "")),
            held_out=dict(data.get("held_out") or {}),
        )


def single_tag_rule() -> ShownTags:
    return ShownTags(
        limit=1, threshold=None, min_tags=0, rule="single-tag: the top tag, cut at pipeline.threshold"
    )


def outcome_matrix(
    probabilities: Sequence[Sequence[float]], right: Sequence[Sequence[bool]], width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Items' first ``width`` probabilities (best first; -inf past an item's last candidate), whether
    each is right, and how many candidates each item has (at most ``width``)."""
    n = len(probabilities)
    p = np.full((n, width), -np.inf)
    r = np.zeros((n, width), bool)
    available = np.zeros(n, np.int64)
    for i, (probs, rights) in enumerate(zip(probabilities, right, strict=True)):
        k = min(len(probs), width)
        p[i, :k] = probs[:k]
        r[i, :k] = rights[:k]
        available[i] = k
    return p, r, available


def shown_scores(
    p: np.ndarray, r: np.ndarray, gold_counts: np.ndarray, counts: np.ndarray
) -> dict[str, float]:
    """Document-averaged P, R, F1 of showing each item's first ``counts`` tags, and coverage@1."""
    right = np.take_along_axis(np.c_[np.zeros(len(r)), np.cumsum(r, axis=1)], counts[:, None], 1)[:, 0]
    gold = np.maximum(gold_counts, 1)
    return {
        "p@5": float(np.mean(np.where(counts > 0, right / np.maximum(counts, 1), 0.0))),
        "r@5": float(np.mean(right / gold)),
        "f1@5": float(np.mean(2 * right / (counts + gold))),
        "coverage@1": float(np.mean(counts > 0)),
        "tags_per_item": float(np.mean(counts)),
    }


def fit_shown_tags(
    probabilities: Sequence[Sequence[float]],
    right: Sequence[Sequence[bool]],
    gold_counts: Sequence[int],
    max_limit: int,
    *,
    compare_threshold: float | None = None,
) -> ShownTags:
    """The F1@5-optimal ``(limit, threshold, min_tags)`` on held-out items: ``probabilities`` of each
    item's candidates best first, whether each is right, and the item's number of gold tags (gold
    tags no candidate covered count against recall). ``compare_threshold``: also report the fixed
    rule (the first ``max_limit`` tags at that threshold) on the same items."""
    if not len(probabilities):
        raise ValueError("no held-out items to fit the shown tags on")
    max_limit = min(max_limit, OBJECTIVE_K)
    p, r, available = outcome_matrix(probabilities, right, max_limit)
    gold = np.asarray(gold_counts, np.float64)
    finite = p[np.isfinite(p)]
    candidates = (
        np.unique(np.r_[0.0, np.quantile(finite, np.linspace(0, 1, _THRESHOLDS))]) if len(finite) else [0.0]
    )
    cum = np.c_[np.zeros(len(r)), np.cumsum(r, axis=1)]
    denominator = np.maximum(gold, 1)
    best = (-1.0, 0, 0.0, 0)
    # Highest threshold first, then fewer tags: a tie goes to the rule showing less.
    for threshold in candidates[::-1]:
        passing = (p >= threshold).sum(axis=1)
        for min_tags in (0, 1):
            for limit in range(1, max_limit + 1):
                counts = np.minimum(np.minimum(np.maximum(passing, min_tags), limit), available)
                f1 = float(
                    np.mean(2 * np.take_along_axis(cum, counts[:, None], 1)[:, 0] / (counts + denominator))
                )
                if f1 > best[0] + 1e-12:
                    best = (f1, limit, float(threshold), min_tags)
    _, limit, threshold, min_tags = best
    counts = np.minimum(np.minimum(np.maximum((p >= threshold).sum(axis=1), min_tags), limit), available)
    held_out = {"items": len(p), **shown_scores(p, r, gold, counts)}
    if compare_threshold is not None:
        fixed = np.minimum((p >= compare_threshold).sum(axis=1), available)
        held_out[f"fixed_top{max_limit}_at_{compare_threshold:g}"] = shown_scores(p, r, gold, fixed)
    rule = (
        f"multi-tag: the best {limit} at most, those at or above {threshold:.4g}"
        + (f", at least {min_tags}" if min_tags else "")
        + f" (F1@{OBJECTIVE_K}-optimal on held-out folds)"
    )
    return ShownTags(limit, threshold, min_tags, rule, held_out)


__all__ = ["OBJECTIVE_K", "ShownTags", "fit_shown_tags", "outcome_matrix", "shown_scores", "single_tag_rule"]
