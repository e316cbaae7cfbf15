"""The cascade, as pure logic: which items (single-tag) or tags (multi-tag) the ranker settles, what the
LLM is asked, and the final confidence of what it judged; and the fit of all that on held-out LLM
outcomes of annotated items (never test items).

One :class:`RoutePlan` per store and settings (:func:`llm4tag.ranking.store_routing.route_plan`) answers, per
item, :func:`route_items`; the stage flow (llm4tag/flow.py), which the in-process pipeline and the
Serve ingress both drive, calls these functions, so an item is routed the same way wherever it is
tagged.

* ``tau is None`` (``pipeline.route: off``): every item goes to the LLM, which chooses among the
  ranker's best candidates (ranker order) and judges what it chose: the paper's stages.
* single-tag: an item whose top probability reaches ``tau`` takes the ranker's tag; the others go to
  the LLM whole (generation among the candidates, then the Yes/No judgment of the chosen tag).
* multi-tag, per tag: the item's shown tags (top ``emit``) at or above ``tau`` are accepted; if any is
  below, the LLM decides the rest: it generates among the candidates and judges, in the same
  conversation, the tags it generated (an uncertain shown tag it did not generate is not kept). The
  item's tags are then the accepted ones and the judged ones, ranked by their final confidence (at
  most ``emit`` kept). The LLM judges only what it generated so that the Generator replica, which
  judges its own batch in the same call (prompts.layout), and a separate Calibrator judge the same
  tags.

Final confidence: an accepted tag keeps the ranker's calibrated probability; a judged tag gets
:class:`FinalCalibration` of (the LLM's Yes-probability, the ranker's probability of the tag, whether
the LLM generated it), a logistic regression (Platt scaling over those features, scikit-learn) fitted
on held-out outcomes; without one it keeps the raw Yes-probability. Tags under the cut (the threshold,
or the cut reaching ``pipeline.target_precision`` on held-out data) are dropped.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from llm4tag.evaluation.tagging import expected_calibration_error
from llm4tag.ranking.models import ScoredTag
from llm4tag.ranking.routing import TauChoice, choose_tau, precision_cut

_EPS = 1e-4


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


class FinalCalibration:
    """P(tag right) from the LLM's Yes-probability, the ranker's probability and whether the LLM
    generated the tag (logistic regression on logits: Platt scaling with the ranker as a feature)."""

    def __init__(self, model):
        self.model = model

    @staticmethod
    def features(yes: Sequence[float], ranker: Sequence[float], generated: Sequence[bool]) -> np.ndarray:
        return np.column_stack([_logit(yes), _logit(ranker), np.asarray(generated, np.float64)])

    @classmethod
    def fit(
        cls,
        yes: Sequence[float],
        ranker: Sequence[float],
        generated: Sequence[bool],
        right: Sequence[bool],
        groups: Sequence[str],
        folds: int = 5,
    ) -> tuple[FinalCalibration | None, np.ndarray]:
        """The map, and out-of-fold predictions for every unit (folds by item). None (and the raw
        Yes-probabilities) when the outcomes are all right or all wrong: nothing to fit."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import GroupKFold

        x = cls.features(yes, ranker, generated)
        y = np.asarray(right, bool)
        groups = np.asarray(groups)
        if y.all() or not y.any() or len(set(groups.tolist())) < folds:
            return None, np.asarray(yes, np.float64)
        oof = np.zeros(len(y))
        for fit_rows, held_rows in GroupKFold(n_splits=folds).split(x, y, groups):
            if y[fit_rows].all() or not y[fit_rows].any():
                oof[held_rows] = y[fit_rows].mean()
                continue
            oof[held_rows] = (
                LogisticRegression().fit(x[fit_rows], y[fit_rows]).predict_proba(x[held_rows])[:, 1]
            )
        return cls(LogisticRegression().fit(x, y)), oof

    def predict(self, yes: Sequence[float], ranker: Sequence[float], generated: Sequence[bool]) -> np.ndarray:
        if not len(yes):
            return np.zeros(0)
        return self.model.predict_proba(self.features(yes, ranker, generated))[:, 1]


@dataclass
class RoutePlan:
    """How one store's items are routed under one configuration (resolved once, used everywhere).
    A store without a ranking has the :meth:`unranked` plan: every item to the LLM, with graph
    recall's candidates."""

    tau: float | None  # None: route off
    multi: bool
    emit: int  # tags shown per item (1 single-tag)
    num_candidates: int  # candidates the LLM chooses among
    ranker_cut: float  # ranker tags under it are dropped
    llm_cut: float  # judged tags under it are dropped
    calibration: FinalCalibration | None = None
    reason: str = ""
    ranked: bool = True  # False: no ranker scored the candidates (the paper's pipeline)

    @classmethod
    def unranked(cls, num_candidates: int, threshold: float) -> RoutePlan:
        """The plan of a store without a fitted ranking: the LLM chooses among recall's candidates
        and keeps what its judgment reaches ``threshold`` with (as many as it generated)."""
        return cls(
            tau=None,
            multi=False,
            emit=0,
            num_candidates=num_candidates,
            ranker_cut=threshold,
            llm_cut=threshold,
            reason="no ranking: every item goes to the LLM with graph recall's candidates",
            ranked=False,
        )

    # The ranker's first min_tags tags of an item it settles alone are kept under ranker_cut too (the
    # store's fitted output rule, ranking/shown_tags.py; 0 with an explicit threshold).
    min_tags: int = 0

    @property
    def sends_nothing(self) -> bool:
        """Every item takes the ranker's tags (no LLM is needed)."""
        return self.tau is not None and self.tau <= 0.0

    @property
    def shown(self) -> int | None:
        """Tags kept per item at most (None: as many as the LLM generated and kept)."""
        if not self.ranked:
            return None
        return self.emit if self.multi else 1

    def describe(self) -> dict:
        return {
            "route": ("off" if self.ranked else "off (no ranking)") if self.tau is None else self.tau,
            "multi": self.multi,
            "emit": self.emit,
            "ranker_cut": self.ranker_cut,
            "min_tags": self.min_tags,
            "llm_cut": self.llm_cut,
            "final_calibration": self.calibration is not None,
            "reason": self.reason,
        }


@dataclass
class ItemRoute:
    """One item's route: the ranker's scored candidates, what it settles, what the LLM is asked."""

    scored: list[ScoredTag]
    accepted: list[ScoredTag] = field(default_factory=list)
    judge: list[str] = field(default_factory=list)  # uncertain shown tags the LLM decides (multi-tag)
    candidates: list[str] = field(default_factory=list)  # what the LLM chooses among; [] if not sent
    to_llm: bool = False  # sent to the LLM (with route off even when recall found no candidate)

    @property
    def needs_llm(self) -> bool:
        return self.to_llm

    def to_dict(self) -> dict:
        """Lossless (full float precision), for a route that crosses processes (the bulk stages)."""
        return {
            "scored": [
                [s.tag, s.probability, s.score, list(s.provenance), s.recall_score, list(s.via)]
                for s in self.scored
            ],
            "accepted": [s.tag for s in self.accepted],
            "judge": self.judge,
            "candidates": self.candidates,
            "to_llm": self.to_llm,
        }

    @classmethod
    def from_dict(cls, data: dict) -> ItemRoute:
        scored = [
            ScoredTag(t, float(p), float(r), tuple(v), None if rs is None else float(rs), tuple(via))
            for t, p, r, v, rs, via in data["scored"]
        ]
        by_tag = {s.tag: s for s in scored}
        return cls(
            scored,
            [by_tag[t] for t in data["accepted"]],
            list(data["judge"]),
            list(data["candidates"]),
            bool(data["to_llm"]),
        )


def route_items(scored: Sequence[Sequence[ScoredTag]], plan: RoutePlan) -> list[ItemRoute]:
    return [_route(list(item), plan) for item in scored]


def _route(scored: list[ScoredTag], plan: RoutePlan) -> ItemRoute:
    candidates = [s.tag for s in scored[: plan.num_candidates]]
    if plan.tau is None:
        return ItemRoute(scored, candidates=candidates, to_llm=True)
    if not scored:
        return ItemRoute(scored)
    if not plan.multi:
        if scored[0].probability >= plan.tau:
            return ItemRoute(scored, accepted=[scored[0]])
        return ItemRoute(scored, candidates=candidates, to_llm=True)
    shown = scored[: plan.emit]
    accepted = [s for s in shown if s.probability >= plan.tau]
    judge = [s.tag for s in shown if s.probability < plan.tau]
    sent = bool(judge)
    return ItemRoute(
        scored, accepted=accepted, judge=judge, candidates=candidates if sent else [], to_llm=sent
    )


def judged_tags(route: ItemRoute, generated: Sequence[str]) -> list[str]:
    """What the LLM judges for a sent item: the tags it generated, but those the ranker accepted."""
    accepted = {s.tag for s in route.accepted}
    return list(dict.fromkeys(t for t in generated if t not in accepted))


@dataclass
class FinalTag:
    tag: str
    confidence: float
    kept: bool
    by: str  # "ranker" or "llm"
    ranker_probability: float | None
    provenance: tuple[str, ...]
    yes: float | None = None  # the LLM's raw Yes-probability, for judged tags
    recall_score: float | None = None  # graph recall's fused score (unranked candidates)
    via: tuple[str, ...] = ()  # the neighbours whose annotation led graph recall to it

    def to_dict(self) -> dict:
        row = {
            "tag": self.tag,
            "confidence": None if self.confidence != self.confidence else round(self.confidence, 6),
            "source": "+".join(self.provenance) or "llm",
            "by": self.by,
        }
        if self.ranker_probability is not None:
            row["ranker"] = round(self.ranker_probability, 6)
        if self.yes is not None and self.yes == self.yes:
            row["yes"] = round(self.yes, 6)
        if self.recall_score is not None:
            row["recall_score"] = round(self.recall_score, 6)
        if self.via:
            row["via"] = list(self.via)
        return row


def _ranker_probability(scored: ScoredTag | None) -> float | None:
    if scored is None or scored.probability != scored.probability:
        return None  # not a candidate, or no ranker scored it
    return scored.probability


def ranker_tag(scored: ScoredTag, plan: RoutePlan, rank: int | None = None) -> FinalTag:
    """A tag the ranker decides: its calibrated probability is the confidence. ``rank``: its place
    among the item's tags where the ranker settles the item alone (``plan.min_tags`` keep the first)."""
    return FinalTag(
        scored.tag,
        scored.probability,
        scored.probability >= plan.ranker_cut or (rank is not None and rank < plan.min_tags),
        "ranker",
        scored.probability,
        scored.provenance,
        recall_score=scored.recall_score,
        via=scored.via,
    )


def final_tags(
    route: ItemRoute,
    plan: RoutePlan,
    generated: Sequence[str] = (),
    yes: Mapping[str, float] | None = None,
) -> list[FinalTag]:
    """The item's tags, kept ones first by confidence, then the dropped ones. ``yes``: the LLM's
    Yes-probability of each judged tag (NaN when nothing calibrates)."""
    by_tag = {s.tag: s for s in route.scored}
    out: list[FinalTag] = []
    if route.needs_llm:
        for s in route.accepted:
            out.append(ranker_tag(s, plan))
        judged = judged_tags(route, generated)
        generated_set = set(generated)
        raw = [float((yes or {}).get(t, float("nan"))) for t in judged]
        ranker_p = [by_tag[t].probability if t in by_tag else 0.0 for t in judged]
        confidence = list(raw)
        usable = [i for i, v in enumerate(raw) if v == v]
        if plan.calibration is not None and usable:
            mapped = plan.calibration.predict(
                [raw[i] for i in usable],
                [ranker_p[i] for i in usable],
                [judged[i] in generated_set for i in usable],
            )
            for i, value in zip(usable, mapped.tolist(), strict=True):
                confidence[i] = value
        for tag, conf, y in zip(judged, confidence, raw, strict=True):
            kept = conf != conf or conf >= plan.llm_cut  # NaN: nothing calibrated, every tag is kept
            found = by_tag.get(tag)
            out.append(
                FinalTag(
                    tag,
                    conf,
                    kept,
                    "llm",
                    _ranker_probability(found),
                    found.provenance if found else (),
                    y,
                    found.recall_score if found else None,
                    found.via if found else (),
                )
            )
    else:
        for rank, s in enumerate(route.accepted if not plan.multi else route.scored[: plan.emit]):
            out.append(ranker_tag(s, plan, rank))
    order = sorted(
        range(len(out)),
        key=lambda i: (
            not out[i].kept,
            -(out[i].confidence if out[i].confidence == out[i].confidence else -1),
            i,
        ),
    )
    ranked = [out[i] for i in order]
    limit = plan.shown
    kept = 0
    for i, t in enumerate(ranked):
        if t.kept:
            kept += 1
            if limit is not None and kept > limit:
                ranked[i] = dataclasses.replace(t, kept=False)
    return ranked


# --- the fit on held-out LLM outcomes


@dataclass
class HeldOutOutcome:
    """What the LLM did with one held-out annotated item (its candidates scored out-of-fold)."""

    id: str
    scored: list[ScoredTag]
    gold: list[str]
    generated: list[str]
    yes: dict[str, float]  # Yes-probability of each judged (generated) tag
    seconds: float = 0.0  # LLM seconds
    samples: list[str] = field(default_factory=list)  # the retrieved samples its prompt showed

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "gold": self.gold,
            "generated": self.generated,
            "yes": self.yes,
            "seconds": self.seconds,
            "samples": self.samples,
            "scored": [s.to_dict() for s in self.scored],
        }

    @classmethod
    def from_dict(cls, row: dict) -> HeldOutOutcome:
        return cls(
            row["id"],
            [ScoredTag.from_dict(s) for s in row["scored"]],
            list(row["gold"]),
            list(row["generated"]),
            {k: float(v) for k, v in row["yes"].items()},
            float(row.get("seconds", 0.0)),
            list(row.get("samples") or ()),
        )


def llm_units(outcomes: Sequence[HeldOutOutcome]) -> dict[str, np.ndarray]:
    """One row per judged (item, tag): the tags the LLM generated."""
    cols: dict[str, list] = {"item": [], "tag": [], "yes": [], "ranker": [], "generated": [], "right": []}
    for o in outcomes:
        by_tag = {s.tag: s.probability for s in o.scored}
        for tag in dict.fromkeys(o.generated):
            if tag not in o.yes:
                continue
            cols["item"].append(o.id)
            cols["tag"].append(tag)
            cols["yes"].append(o.yes[tag])
            cols["ranker"].append(by_tag.get(tag, 0.0))
            cols["generated"].append(tag in o.generated)
            cols["right"].append(tag in o.gold)
    return {k: np.asarray(v) for k, v in cols.items()}


@dataclass
class CascadeFit:
    """The held-out fit: the final calibration, the automatic tau and what they were measured on."""

    calibration: FinalCalibration | None
    tau: TauChoice
    # Out-of-fold final confidences of the LLM's tags on held-out items, and whether each was right:
    # the cut for any target precision is fitted on them.
    llm_confidence: np.ndarray
    llm_right: np.ndarray
    metrics: dict = field(default_factory=dict)

    def precision_cut(self, target: float) -> float | None:
        return precision_cut(self.llm_confidence, self.llm_right, target)


def fit_cascade(
    outcomes: Sequence[HeldOutOutcome], multi: bool, emit: int, threshold: float = 0.5
) -> CascadeFit:
    """Fit the final calibration (out-of-fold by item) and choose tau on held-out outcomes.

    single-tag, per item: the ranker is right when its top tag is, the LLM when the tag it chose is.
    multi-tag, per shown tag: each side decides keep (confidence >= ``threshold``) or drop, and is
    right when that matches the gold annotation; the LLM's side uses its out-of-fold final confidence.
    """
    units = llm_units(outcomes)
    calibration, oof = FinalCalibration.fit(
        units["yes"], units["ranker"], units["generated"], units["right"], units["item"]
    )
    key = {
        (i, t): k for k, (i, t) in enumerate(zip(units["item"].tolist(), units["tag"].tolist(), strict=True))
    }
    if multi:
        p, ranker_right, llm_right = [], [], []
        for o in outcomes:
            for s in o.scored[:emit]:
                k = key.get((o.id, s.tag))
                truth = s.tag in o.gold
                p.append(s.probability)
                ranker_right.append((s.probability >= threshold) == truth)
                # A shown tag the LLM did not generate is not kept on its side.
                llm_right.append((k is not None and oof[k] >= threshold) == truth)
        llm_conf, llm_ok = oof, units["right"].astype(bool)
    else:
        p = [o.scored[0].probability if o.scored else 0.0 for o in outcomes]
        ranker_right = [bool(o.scored) and o.scored[0].tag in o.gold for o in outcomes]
        llm_right = [bool(o.generated) and o.generated[0] in o.gold for o in outcomes]
        gen = units["generated"].astype(bool)
        llm_conf, llm_ok = oof[gen], units["right"].astype(bool)[gen]
    tau = choose_tau(p, ranker_right, llm_right)
    seconds = [o.seconds for o in outcomes]
    metrics = {
        "items": len(outcomes),
        "units": len(p),
        "judged_tags": len(units["yes"]),
        "ranker_accuracy": float(np.mean(ranker_right)) if len(p) else math.nan,
        "llm_accuracy": float(np.mean(llm_right)) if len(p) else math.nan,
        "cascade_accuracy": tau.accuracy,
        "llm_share": tau.llm_share,
        "tau": tau.tau,
        "tau_reason": tau.reason,
        "ece_yes": expected_calibration_error(
            zip(units["yes"].tolist(), units["right"].tolist(), strict=True)
        )["ece"]
        if len(units["yes"])
        else math.nan,
        "ece_final_out_of_fold": expected_calibration_error(
            zip(oof.tolist(), units["right"].tolist(), strict=True)
        )["ece"]
        if len(oof)
        else math.nan,
        "llm_seconds_per_item": float(np.mean(seconds)) if seconds else math.nan,
    }
    return CascadeFit(calibration, tau, np.asarray(llm_conf, np.float64), np.asarray(llm_ok, bool), metrics)
