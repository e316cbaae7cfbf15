"""The thresholds of routing, as pure functions fitted on held-out data (never test): ``tau`` for
``route: auto`` and the cut that reaches a target precision. The routing rule itself (which items or
tags the ranker settles) is :func:`llm4tag.ranking.cascade.route_items`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass
class TauChoice:
    tau: float
    llm_share: float  # share of items (or tags) sent to the LLM on the held-out data
    accuracy: float  # expected accuracy on the held-out data with this tau
    reason: str


# One-sided 95%: the LLM's net gain over the ranker on the units it would take must stand out from
# the coin flips of the units where the two disagree (a sign test), or nothing is sent. Without it,
# a gain of one unit in five hundred sent 43% of debtags' tags to the LLM (docs/performance.md).
EVIDENCE_Z = 1.645

# The observed precision of the lowest threshold reaching a target is the luckiest of many draws: a
# cut fitted that way falls short of its target on new items about half the time (docs/performance.md,
# "The cut for a target precision"). A cut must reach the target with this one-sided confidence.
CUT_CONFIDENCE = 0.95


def choose_tau(
    probabilities: Sequence[float],
    ranker_right: Sequence[bool],
    llm_right: Sequence[bool] | None,
    max_llm_share: float = 1.0,
    evidence_z: float = EVIDENCE_Z,
) -> TauChoice:
    """``route: auto``: the tau that maximises held-out accuracy when the units (items, or tags for
    multi-tag) under tau take the LLM's answer and the rest the ranker's; ties go to the tau that
    sends fewer. A tau counts only where the LLM's net gain on the units it sends (wins - losses)
    reaches ``evidence_z`` times the square root of the units where the two disagree (a one-sided
    sign test); otherwise, and without LLM outcomes on held-out data, nothing is sent.
    """
    p = np.asarray(probabilities, np.float64)
    ranker = np.asarray(ranker_right, np.float64)
    if len(p) != len(ranker):
        raise ValueError("probabilities and ranker_right must have the same length")
    if not len(p):
        return TauChoice(0.0, 0.0, float("nan"), "no held-out data: nothing is sent to the LLM")
    base = float(ranker.mean())
    if llm_right is None:
        return TauChoice(0.0, 0.0, base, "no LLM outcomes on held-out data: nothing is sent to the LLM")
    llm = np.asarray(llm_right, np.float64)
    if len(llm) != len(p):
        raise ValueError("llm_right must have one outcome per held-out unit")
    order = np.argsort(p, kind="stable")
    p_sorted, gain = p[order], (llm - ranker)[order]
    # Sending the j lowest units changes accuracy by the sum of their gains; tau must cut between
    # distinct probabilities, so only prefixes that end where p changes count.
    cum = np.r_[0.0, np.cumsum(gain)]
    disagree = np.r_[0.0, np.cumsum(gain != 0)]
    ends = np.r_[0, np.flatnonzero(np.r_[p_sorted[1:] != p_sorted[:-1], True]) + 1]
    ends = ends[ends <= max_llm_share * len(p) + 1e-9]
    best = _most_gain(cum, ends)
    if best == 0:
        return TauChoice(0.0, 0.0, base, "the LLM does not add accuracy on held-out data: nothing is sent")
    sure = _most_gain(cum, ends[cum[ends] > evidence_z * np.sqrt(disagree[ends])])
    if sure == 0:
        wins = int(np.sum(gain[:best] > 0))
        losses = wins - int(cum[best])
        return TauChoice(
            0.0,
            0.0,
            base,
            f"the LLM's held-out gain is within noise ({_count(wins, 'unit')} won, {losses} lost of the "
            f"{best} least confident): nothing is sent",
        )
    best = sure
    tau = float(p_sorted[best]) if best < len(p) else float(np.nextafter(p_sorted[-1], np.inf))
    return TauChoice(tau, best / len(p), base + cum[best] / len(p), f"sends the {best} least confident units")


def _most_gain(cum: np.ndarray, ends: np.ndarray) -> int:
    """The prefix end with the highest cumulative gain, the fewest sent among equal gains; 0 (send
    nothing) when no end gains."""
    ends = np.r_[0, ends[ends > 0]]
    return int(ends[np.argmax(cum[ends] - 1e-12 * ends)])


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def precision_cut(
    probabilities: Sequence[float],
    right: Sequence[bool],
    target: float = 0.95,
    confidence: float | None = CUT_CONFIDENCE,
) -> float | None:
    """The lowest threshold whose accepted set (probability >= threshold) reaches ``target`` precision
    on held-out data, so it keeps the most; ``None`` when no threshold reaches it.

    With ``confidence``, a threshold counts only where the one-sided Clopper-Pearson lower bound of
    its precision reaches ``target`` (so ``target`` 1.0 is never reached). ``None`` takes the observed
    precision itself: an oracle cut, right only for the very items it is measured on."""
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target precision must be in (0, 1], got {target}")
    if confidence is not None and not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    p = np.asarray(probabilities, np.float64)
    r = np.asarray(right, np.float64)
    if len(p) != len(r):
        raise ValueError("probabilities and right must have the same length")
    if not len(p):
        return None
    order = np.argsort(-p, kind="stable")
    p_sorted = p[order]
    hits = np.cumsum(r[order])
    kept = np.arange(1, len(p) + 1)
    if confidence is None:
        precision = hits / kept
    else:
        with np.errstate(invalid="ignore"):  # no hit: beta(0, n+1) is undefined, its bound is 0
            precision = np.nan_to_num(stats.beta.ppf(1.0 - confidence, hits, kept - hits + 1))
    # A threshold keeps every unit tied with it: only the last position of each distinct value counts.
    last = np.r_[p_sorted[1:] != p_sorted[:-1], True]
    ok = np.flatnonzero(last & (precision >= target))
    if not len(ok):
        return None
    return float(p_sorted[ok[-1]])
