"""The ranker: P(candidate tag is right) from its features, a scikit-learn gradient-boosted model
fitted on held-out (cross-fitted) candidates only, then calibrated.

Calibration is fitted on out-of-fold predictions: the candidate rows are split by item into
``calibration_folds``; a model fitted on the other parts scores each part, and an isotonic (or
Platt) map from those scores to the observed rightness is fitted on the rows a user will see (the
top ``emit`` candidates of each item: 1 for single-tag data, ``max_tags`` for multi-tag). The model
that is kept is then refitted on all rows. Calibrated probabilities are monotone in the raw score,
so candidates are ranked by the raw score (the map's plateaus would tie them).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from llm4tag.config_section import Section
from llm4tag.errors import LLM4TagError
from llm4tag.progress import step
from llm4tag.ranking.features import FEATURES
from llm4tag.ranking.provenance import LeakError, check_manifest, new_folder, write_manifest


class RankerConfig(Section):
    """The ranker: a gradient-boosted P(candidate right), cross-fitted and calibrated."""

    section: ClassVar[str] = "ranking.ranker"

    folds: int = Field(5, ge=2, description="cross-fitting folds of the annotated items")
    max_held_out: int | None = Field(
        20_000,
        ge=2,
        description="annotated items held out, at most (a stable sample above it, in fewer folds: each "
        "fold costs a fit of the learned recall); null: every item",
    )
    held_out_tags: float = Field(
        0.2,
        ge=0.0,
        lt=1.0,
        description="share of the annotated tags each cross-fitting fold is also built without, so the "
        "ranker sees right answers among tags nobody has annotated (new tags); 0: items only",
    )
    calibration_folds: int = Field(
        3, ge=2, description="folds of the held-out rows the calibration is fitted on"
    )
    calibration: Literal["isotonic", "sigmoid"] = Field(
        "isotonic", description="isotonic regression or Platt scaling (sigmoid) of the raw score"
    )
    emit: int | None = Field(
        None,
        ge=1,
        description="tags per item shown to users; null: 1 single-tag, pipeline.max_tags multi-tag",
    )
    max_iter: int = Field(300, ge=1, description="boosting iterations")
    learning_rate: float = Field(0.08, gt=0, description="boosting learning rate")
    max_leaf_nodes: int = Field(31, ge=2, description="leaves per tree")
    min_samples_leaf: int = Field(40, ge=1, description="rows per leaf, at least")
    l2_regularization: float = Field(1.0, ge=0, description="L2 regularisation of the leaves")
    seed: int = Field(0, description="random seed")


@dataclass
class Ranker:
    config: RankerConfig
    emit: int
    model: object
    calibrator: object
    encoder_id: str
    data_hash: str
    trained_ids: frozenset[str]
    features: tuple[str, ...] = FEATURES
    fit_seconds: float = 0.0
    metrics: dict = field(default_factory=dict)

    @classmethod
    def fit(
        cls,
        x: np.ndarray,
        y: np.ndarray,
        groups: Sequence[str],
        *,
        emit: int,
        encoder_id: str,
        data_hash: str,
        config: RankerConfig | None = None,
        extra: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[Ranker, np.ndarray]:
        """Fit on held-out candidate rows (``groups``: the item of each row). Returns the ranker and the
        out-of-fold raw score of every row (its order; ``probability`` of it for held-out metrics and
        routing fits: the calibration map was fitted on these rows, the scores themselves are
        out-of-fold). ``extra``: training-only rows (x, y) (synthetic examples' candidates), added to
        every model fitted here and never scored, so they never fit the calibration."""
        config = config or RankerConfig()
        x = np.asarray(x, np.float32)
        y = np.asarray(y, bool)
        groups = np.asarray(groups)
        if x.shape != (len(y), len(FEATURES)) or len(groups) != len(y):
            raise LLM4TagError(f"ranker rows must be (n, {len(FEATURES)}) with one label and item each")
        if y.all() or not y.any():
            raise LLM4TagError("the held-out candidates are all right or all wrong: nothing to learn")
        from sklearn.model_selection import GroupKFold

        extra_x = np.zeros((0, x.shape[1]), np.float32) if extra is None else np.asarray(extra[0], np.float32)
        extra_y = np.zeros(0, bool) if extra is None else np.asarray(extra[1], bool)
        started = time.perf_counter()
        raw_oof = np.zeros(len(y), np.float64)
        splitter = GroupKFold(n_splits=config.calibration_folds)
        for part, (fit_rows, held_rows) in enumerate(splitter.split(x, y, groups)):
            with step(
                f"calibration fold {part + 1}/{config.calibration_folds}: fit on {len(fit_rows):,} rows"
            ):
                model = _model(config).fit(
                    np.concatenate([x[fit_rows], extra_x]), np.r_[y[fit_rows], extra_y]
                )
                raw_oof[held_rows] = model.predict_proba(x[held_rows])[:, 1]
        shown = top_rows(raw_oof, groups, emit)
        calibrator = _calibrator(config, len(shown)).fit(raw_oof[shown], y[shown])
        with step(
            f"ranker on all {len(y):,} rows" + (f" and {len(extra_y):,} synthetic" if len(extra_y) else "")
        ):
            model = _model(config).fit(np.concatenate([x, extra_x]), np.r_[y, extra_y])
        ranker = cls(
            config=config,
            emit=emit,
            model=model,
            calibrator=calibrator,
            encoder_id=encoder_id,
            data_hash=data_hash,
            trained_ids=frozenset(groups.tolist()),
            fit_seconds=time.perf_counter() - started,
        )
        return ranker, raw_oof

    def raw(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        if not len(x):
            return np.zeros(0)
        return self.model.predict_proba(x)[:, 1]

    def probability(self, raw: np.ndarray) -> np.ndarray:
        return _apply(self.calibrator, raw)

    def assert_unseen(self, ids: Sequence[str]) -> None:
        seen = self.trained_ids.intersection(ids)
        if seen:
            raise LeakError(
                f"{len(seen)} item(s) to score were training items of the ranker, e.g. {sorted(seen)[0]!r}"
            )

    def save(self, folder: str | os.PathLike) -> Path:
        import joblib

        with new_folder(folder) as tmp:
            joblib.dump({"model": self.model, "calibrator": self.calibrator}, tmp / "ranker.joblib")
            (tmp / "trained_ids.json").write_text(json.dumps(sorted(self.trained_ids)))
            write_manifest(
                tmp,
                kind="ranker",
                encoder_id=self.encoder_id,
                data_hash=self.data_hash,
                settings=self.config.model_dump(),
                extra={
                    "features": list(self.features),
                    "emit": self.emit,
                    "fit_seconds": self.fit_seconds,
                    "metrics": self.metrics,
                },
            )
        return Path(folder)

    @classmethod
    def load(cls, folder: str | os.PathLike, *, expected_encoder_id: str) -> Ranker:
        import joblib

        folder = Path(folder)
        manifest = check_manifest(folder, kind="ranker", expected_encoder_id=expected_encoder_id)
        if tuple(manifest["features"]) != FEATURES:
            raise LLM4TagError(
                f"the ranker in {folder} was fitted on other features than this llm4tag computes; refit it"
            )
        parts = joblib.load(folder / "ranker.joblib")
        return cls(
            config=RankerConfig.load(manifest["settings"]),
            emit=int(manifest["emit"]),
            model=parts["model"],
            calibrator=parts["calibrator"],
            encoder_id=manifest["encoder_id"],
            data_hash=manifest["data_hash"],
            trained_ids=frozenset(json.loads((folder / "trained_ids.json").read_text())),
            fit_seconds=float(manifest.get("fit_seconds", 0.0)),
            metrics=dict(manifest.get("metrics") or {}),
        )


def top_rows(scores: np.ndarray, groups: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best-scored rows of each group (rows of a group need not be contiguous)."""
    order = np.lexsort((-np.asarray(scores), np.asarray(groups)))
    sorted_groups = np.asarray(groups)[order]
    starts = np.r_[0, np.flatnonzero(sorted_groups[1:] != sorted_groups[:-1]) + 1]
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    return np.sort(order[rank < k])


def _model(config: RankerConfig):
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(
        max_iter=config.max_iter,
        learning_rate=config.learning_rate,
        max_leaf_nodes=config.max_leaf_nodes,
        min_samples_leaf=config.min_samples_leaf,
        l2_regularization=config.l2_regularization,
        early_stopping=False,
        random_state=config.seed,
    )


def _calibrator(config: RankerConfig, rows: int):
    if config.calibration == "isotonic":
        from sklearn.isotonic import IsotonicRegression

        # A plateau whose calibration rows were all wrong (or all right) would claim a certainty that
        # n rows cannot show, and a 0.0 makes a tag untaggable at any cut: bound the map to Laplace's
        # (0 + 1) / (n + 2) and its mirror.
        bound = 1.0 / (rows + 2)
        return IsotonicRegression(y_min=bound, y_max=1.0 - bound, out_of_bounds="clip")
    from sklearn.linear_model import LogisticRegression

    return _Platt(LogisticRegression())


class _Platt:
    """Platt scaling: a logistic regression on the raw score (the shape IsotonicRegression has)."""

    def __init__(self, model):
        self.model = model

    def fit(self, raw, y):
        self.model.fit(np.asarray(raw).reshape(-1, 1), y)
        return self

    def predict(self, raw):
        return self.model.predict_proba(np.asarray(raw).reshape(-1, 1))[:, 1]


def _apply(calibrator, raw: np.ndarray) -> np.ndarray:
    raw = np.asarray(raw, np.float64)
    if not len(raw):
        return raw
    return np.clip(calibrator.predict(raw), 0.0, 1.0)
