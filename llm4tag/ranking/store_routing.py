"""A store's fitted ranking: where it lives (``STORE/ranking``), the cascade fit beside it
(``STORE/ranking/cascade``), and the one resolution of ``pipeline.route`` / ``threshold`` /
``target_precision`` into a :class:`RoutePlan` that every way of tagging uses.

    STORE/ranking/            RankingModels (learned/, ranker/, tag_stats.npz, heldout.jsonl.gz, manifest)
    STORE/ranking/llm_heldout.jsonl   the LLM's outcomes on held-out items, appended as they come
    STORE/ranking/cascade/    the fit on them: calibration.joblib, outcomes.npz, manifest.json

A refit replaces ``STORE/ranking`` whole, outcomes and cascade included: they were measured on the
previous models' candidates.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from graph_store.durable import durable_file
from llm4tag.errors import ConfigError
from llm4tag.ranking.cascade import CascadeFit, FinalCalibration, RoutePlan
from llm4tag.ranking.models import RankingModels
from llm4tag.ranking.provenance import check_manifest, new_folder, write_manifest
from llm4tag.ranking.routing import CUT_CONFIDENCE, TauChoice

log = logging.getLogger(__name__)

RANKING_DIR = "ranking"
CASCADE_DIR = "cascade"
LLM_OUTCOMES = "llm_heldout.jsonl"


def ranking_dir(store_dir: str | os.PathLike) -> Path:
    return Path(store_dir) / RANKING_DIR


@dataclass
class StoredRanking:
    models: RankingModels
    cascade: CascadeFit | None = None


def save_cascade(folder: str | os.PathLike, fit: CascadeFit, models: RankingModels) -> Path:
    import joblib

    target = Path(folder) / CASCADE_DIR
    with new_folder(target) as tmp:
        if fit.calibration is not None:
            with durable_file(tmp / "calibration.joblib") as fh:
                joblib.dump(fit.calibration.model, fh)
        with durable_file(tmp / "outcomes.npz") as fh:
            np.savez(fh, llm_confidence=fit.llm_confidence, llm_right=fit.llm_right)
        write_manifest(
            tmp,
            kind="cascade",
            encoder_id=models.ranker.encoder_id,
            data_hash=models.ranker.data_hash,
            settings={
                "tau": fit.tau.tau,
                "llm_share": fit.tau.llm_share,
                "accuracy": fit.tau.accuracy,
                "reason": fit.tau.reason,
            },
            extra={"metrics": fit.metrics},
        )
    return target


def load_cascade(folder: str | os.PathLike, models: RankingModels) -> CascadeFit | None:
    """The cascade fit of these models, if one was made (a fit of other models is ignored)."""
    import joblib

    target = Path(folder) / CASCADE_DIR
    if not target.exists():
        return None
    manifest = check_manifest(target, kind="cascade", expected_encoder_id=models.ranker.encoder_id)
    if manifest["data_hash"] != models.ranker.data_hash:
        log.warning("%s was fitted for other ranking models: ignored (refit it)", target)
        return None
    s = manifest["settings"]
    calibration = None
    if (target / "calibration.joblib").exists():
        calibration = FinalCalibration(joblib.load(target / "calibration.joblib"))
    with np.load(target / "outcomes.npz") as data:
        confidence, right = data["llm_confidence"], data["llm_right"]
    tau = TauChoice(float(s["tau"]), float(s["llm_share"]), float(s["accuracy"]), str(s["reason"]))
    return CascadeFit(calibration, tau, confidence, right, dict(manifest.get("metrics") or {}))


def load_ranking(store_dir: str | os.PathLike, encoder_id: str) -> StoredRanking | None:
    """The store's fitted ranking, or None when it has none."""
    folder = ranking_dir(store_dir)
    if not (folder / "manifest.json").exists():
        return None
    models = RankingModels.load(folder, expected_encoder_id=encoder_id)
    return StoredRanking(models, load_cascade(folder, models))


def parse_route(value) -> str | float:
    """``pipeline.route``: "off", "auto", or a threshold in [0, 1]."""
    if isinstance(value, str) and value in ("off", "auto"):
        return value
    try:
        tau = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"pipeline.route must be off, auto or a number in [0, 1], got {value!r}") from None
    if not 0.0 <= tau <= 1.0:
        raise ConfigError(f"pipeline.route must be within [0, 1], got {tau}")
    return tau


def route_plan(
    ranking: StoredRanking | None,
    *,
    route,
    threshold: float,
    target_precision: float | None,
    num_candidates: int,
    threshold_set: bool = True,
) -> RoutePlan:
    """The plan for a store's items; without a ranking, :meth:`RoutePlan.unranked` (recall's own
    candidates go to the LLM, the paper's pipeline). ``route: auto`` without a cascade fit sends
    nothing to the LLM (nothing says it adds accuracy), and says so. The ranker's tags are cut at
    ``target_precision``'s cut if one is asked for, else at ``threshold`` if it was set
    (``threshold_set``: the user gave ``pipeline.threshold``), else by the store's fitted output rule (how
    many tags, from what probability: ranking/shown_tags.py) where it has one (multi-tag), else at
    ``threshold``."""
    route = parse_route(route)
    if ranking is None:
        if isinstance(route, float):
            raise ConfigError(
                f"pipeline.route {route} needs a ranker, and this store has none: fit one with "
                "`llm4tag refit` (or set route: off)"
            )
        return RoutePlan.unranked(num_candidates, threshold)
    models, cascade = ranking.models, ranking.cascade
    tau, reason = _tau(route, cascade.tau if cascade is not None else None)
    ranker_cut = llm_cut = threshold
    emit, min_tags = models.emit, 0
    shown = models.shown
    if target_precision is None and not threshold_set and shown is not None and shown.threshold is not None:
        ranker_cut, emit, min_tags = shown.threshold, shown.limit, shown.min_tags
        reason += f"; ranker's tags: {shown.rule}"
    if target_precision is not None:
        ranker_cut = _cut(models.precision_cut(target_precision), target_precision, "ranker")
        if cascade is not None:
            llm_cut = _cut(cascade.precision_cut(target_precision), target_precision, "LLM")
        else:
            log.warning("no held-out LLM outcomes: the LLM's tags are cut at the threshold %s", threshold)
        reason += f"; cuts for precision {target_precision}: ranker {ranker_cut:.4g}, LLM {llm_cut:.4g}"
    return RoutePlan(
        tau=tau,
        multi=models.multi,
        emit=emit,
        num_candidates=num_candidates,
        ranker_cut=ranker_cut,
        llm_cut=llm_cut,
        calibration=cascade.calibration if cascade is not None else None,
        reason=reason,
        min_tags=min_tags,
    )


def _tau(route: str | float, fitted: TauChoice | None) -> tuple[float | None, str]:
    """tau (None: route off) and why, for a store with a ranking; ``fitted``: the cascade fit's."""
    if route == "off":
        return None, "route: off (every item goes to the LLM)"
    if route == "auto":
        if fitted is None:
            return 0.0, "route: auto without held-out LLM outcomes: nothing is sent to the LLM"
        return fitted.tau, f"route: auto, fitted on held-out items: {fitted.reason}"
    return route, f"route: {route}"


def routes_nothing(store_dir: str | os.PathLike, encoder_id: str, *, route) -> bool:
    """Whether the store's route plan sends nothing to the LLM (``RoutePlan.sends_nothing``), read from
    the manifests alone: what a deployer decides on (whether LLM replicas start) without loading the
    models. The same resolution as :func:`route_plan`."""
    route = parse_route(route)
    folder = ranking_dir(store_dir)
    if not (folder / "manifest.json").exists():
        return False  # no ranking: every item goes to the LLM
    models = check_manifest(folder, kind="ranking", expected_encoder_id=encoder_id)
    fitted = None
    if (folder / CASCADE_DIR / "manifest.json").exists():
        cascade = check_manifest(folder / CASCADE_DIR, kind="cascade", expected_encoder_id=encoder_id)
        if cascade["data_hash"] == models["data_hash"]:  # as load_cascade: a fit of other models is ignored
            s = cascade["settings"]
            fitted = TauChoice(float(s["tau"]), float(s["llm_share"]), float(s["accuracy"]), str(s["reason"]))
    tau, _ = _tau(route, fitted)
    return tau is not None and tau <= 0.0


def open_routing(
    store_dir: str | os.PathLike,
    encoder_id: str,
    *,
    route,
    threshold: float,
    target_precision: float | None,
    num_candidates: int,
    threshold_set: bool = True,
) -> tuple[StoredRanking | None, RoutePlan]:
    """The store's ranking (refused under another encoder) and the plan every way of tagging routes
    its items by: the in-process pipeline and the Serve ingress both open it through here."""
    ranking = load_ranking(store_dir, encoder_id)
    plan = route_plan(
        ranking,
        route=route,
        threshold=threshold,
        target_precision=target_precision,
        num_candidates=num_candidates,
        threshold_set=threshold_set,
    )
    log.info("routing for %s: %s", store_dir, plan.reason)
    return ranking, plan


def ranking_fingerprint(store_dir: str | os.PathLike) -> tuple:
    """What changes when a refit or a cascade fit replaces the store's ranking (each is a folder
    renamed into place, so its manifest is a new file)."""
    folder = ranking_dir(store_dir)
    marks = []
    for path in (folder / "manifest.json", folder / CASCADE_DIR / "manifest.json"):
        try:
            stat = path.stat()
        except FileNotFoundError:
            marks.append(None)
        else:
            marks.append((stat.st_ino, stat.st_mtime_ns, stat.st_size))
    return tuple(marks)


class FollowedRouting:
    """A long-running service's view of the store's ranking and plan: reopened when a refit or a
    cascade fit replaces them (``llm4tag refit`` against a served store), so items start reaching the
    LLM (or stop) without a redeploy. ``due`` is a cheap check, at most every ``every_s``; ``refresh``
    reopens (seconds: it loads the models) and swaps the pair in one assignment, so a caller that took
    ``current`` keeps a consistent ranking and plan."""

    def __init__(self, store_dir: str | os.PathLike, encoder_id: str, every_s: float = 5.0, **plan_args):
        self.store_dir, self.encoder_id, self.every_s = store_dir, encoder_id, every_s
        self.plan_args = plan_args
        self._seen = ranking_fingerprint(store_dir)
        self.current: tuple[StoredRanking | None, RoutePlan] = open_routing(
            store_dir, encoder_id, **plan_args
        )
        self._checked = time.monotonic()
        self.reloads = 0

    def due(self) -> bool:
        """Whether the stored ranking changed since it was opened (checked at most every ``every_s``)."""
        now = time.monotonic()
        if now - self._checked < self.every_s:
            return False
        self._checked = now
        return ranking_fingerprint(self.store_dir) != self._seen

    def refresh(self) -> bool:
        """Reopen the ranking and plan if they changed; True when they were replaced. A ranking that
        does not open (a fit being written by hand, another encoder) keeps the one in use, logged."""
        seen = ranking_fingerprint(self.store_dir)
        if seen == self._seen:
            return False
        try:
            opened = open_routing(self.store_dir, self.encoder_id, **self.plan_args)
        except Exception as exc:  # keep serving with what is in memory
            log.error("the store's new ranking does not open, the previous one stays: %s", exc)
            self._seen = seen
            return False
        self.current, self._seen = opened, seen
        self.reloads += 1
        log.info("the store's ranking changed: reopened (%s)", opened[1].reason)
        return True


def _cut(cut: float | None, target: float, who: str) -> float:
    if cut is None:
        log.warning(
            "no threshold reaches precision %s with %.0f%% confidence on the %s's held-out data (too few "
            "held-out items, or a target above what it reaches): none of its tags is kept",
            target,
            100 * CUT_CONFIDENCE,
            who,
        )
        return math.inf
    return cut


def summary(ranking: StoredRanking | None) -> dict:
    if ranking is None:
        return {"ranking": None}
    out = {"ranking": {k: v for k, v in ranking.models.metrics.items() if not isinstance(v, dict)}}
    if ranking.cascade is not None:
        out["cascade"] = ranking.cascade.metrics
    return json.loads(json.dumps(out, default=str))


__all__ = [
    "CASCADE_DIR",
    "LLM_OUTCOMES",
    "RANKING_DIR",
    "FollowedRouting",
    "StoredRanking",
    "load_cascade",
    "load_ranking",
    "open_routing",
    "parse_route",
    "ranking_dir",
    "ranking_fingerprint",
    "route_plan",
    "routes_nothing",
    "save_cascade",
    "summary",
]
