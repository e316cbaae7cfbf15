"""The ranking package's entry points: fit the learned recall and the ranker from annotated items,
persist them beside a store, load them, and score new items' candidates.

    models = fit_ranking(data, graph_config)             # at build time (cross-fits, then refits)
    models.save(STORE / "ranking")                        # whole or not at all
    models = RankingModels.load(STORE / "ranking", expected_encoder_id=encoder.id)
    scored = models.score(store, texts, vectors, ids)     # per item: ScoredTag best first
    decision = route([s.tag for s in scored[0]], [s.probability for s in scored[0]], tau, multi)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from graph_store import GraphConfig, GraphStore, ShardedStore
from llm4tag.errors import LLM4TagError
from llm4tag.ranking.crossfit import Annotated, HeldOut, held_out_candidates
from llm4tag.ranking.features import CandidateFeatures, contents_of
from llm4tag.ranking.learned import LearnedConfig, LearnedRecall
from llm4tag.ranking.provenance import EncoderMismatch, check_manifest, data_hash, new_folder, write_manifest
from llm4tag.ranking.ranker import Ranker, RankerConfig, top_rows
from llm4tag.ranking.routing import precision_cut
from llm4tag.tag_metrics import expected_calibration_error

MULTI_TAG_MEAN = 1.2  # the pipeline's ``mode: auto`` rule: multi-tag above this many tags per item


@dataclass
class ScoredTag:
    tag: str
    probability: float  # calibrated P(tag is right)
    score: float  # the ranker's raw score (the ranking order)
    provenance: tuple[str, ...]  # c2t, c2c2t, learned

    def to_dict(self) -> dict:
        return {
            "tag": self.tag,
            "confidence": round(self.probability, 6),
            "score": round(self.score, 6),
            "source": "+".join(self.provenance),
        }


@dataclass
class RankingModels:
    learned: LearnedRecall
    ranker: Ranker
    multi: bool
    learned_k: int = 10
    target_precision: float = 0.95
    cut: float | None = None  # threshold reaching target_precision on held-out data
    metrics: dict = field(default_factory=dict)
    _features: tuple = field(default=(None, None), repr=False, compare=False)

    def features_for(self, store: GraphStore | ShardedStore) -> CandidateFeatures:
        """The feature computer of a store, reused across batches: it reads the store's tag vectors
        and annotation counts once, again only when the store has grown by new items."""
        key = (id(store), contents_of(store))
        cached_key, cached = self._features
        if cached_key != key:
            cached = CandidateFeatures(store, self.learned, learned_k=self.learned_k)
            self._features = (key, cached)
        return cached

    def assert_unseen(self, ids: Sequence[str]) -> None:
        self.learned.assert_unseen(ids)
        self.ranker.assert_unseen(ids)

    def score(
        self,
        store: GraphStore | ShardedStore,
        texts: Sequence[str],
        vectors: np.ndarray,
        ids: Sequence[str] | None = None,
    ) -> list[list[ScoredTag]]:
        """Every candidate of each item with its calibrated probability, best first. With ``ids`` the
        items are first checked not to be training items of the fitted models."""
        if ids is not None:
            self.assert_unseen(ids)
        sets = self.features_for(store).compute(texts, vectors)
        if not sets:
            return []
        raw = self.ranker.raw(np.concatenate([s.features for s in sets]))
        prob = self.ranker.probability(raw)
        out, start = [], 0
        for s in sets:
            end = start + len(s.tags)
            order = np.argsort(-raw[start:end], kind="stable")
            out.append(
                [
                    ScoredTag(s.tags[i], float(prob[start + i]), float(raw[start + i]), s.provenance[i])
                    for i in order.tolist()
                ]
            )
            start = end
        return out

    def rows(
        self, ids: Sequence[str], scored: Sequence[Sequence[ScoredTag]], emit: int | None = None
    ) -> list[dict]:
        """Tag-output rows (``{"id", "tags"}``) with the top ``emit`` tags (default: the ranker's)."""
        emit = emit or self.ranker.emit
        return [{"id": i, "tags": [t.to_dict() for t in s[:emit]]} for i, s in zip(ids, scored, strict=True)]

    # -- persistence ------------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> Path:
        with new_folder(folder) as tmp:
            self.learned.save(tmp / "learned")
            self.ranker.save(tmp / "ranker")
            write_manifest(
                tmp,
                kind="ranking",
                encoder_id=self.ranker.encoder_id,
                data_hash=self.ranker.data_hash,
                settings={
                    "multi": self.multi,
                    "learned_k": self.learned_k,
                    "target_precision": self.target_precision,
                    "cut": self.cut,
                },
                extra={"metrics": self.metrics},
            )
        return Path(folder)

    @classmethod
    def load(cls, folder: str | os.PathLike, *, expected_encoder_id: str) -> RankingModels:
        folder = Path(folder)
        manifest = check_manifest(folder, kind="ranking", expected_encoder_id=expected_encoder_id)
        settings = manifest["settings"]
        return cls(
            learned=LearnedRecall.load(folder / "learned", expected_encoder_id=expected_encoder_id),
            ranker=Ranker.load(folder / "ranker", expected_encoder_id=expected_encoder_id),
            multi=bool(settings["multi"]),
            learned_k=int(settings["learned_k"]),
            target_precision=float(settings["target_precision"]),
            cut=settings.get("cut"),
            metrics=dict(manifest.get("metrics") or {}),
        )


def is_multi(item_tags: Sequence[Sequence[str]]) -> bool:
    return float(np.mean([len(t) for t in item_tags])) > MULTI_TAG_MEAN if item_tags else False


def fit_ranking(
    data: Annotated,
    graph: GraphConfig | None = None,
    learned: LearnedConfig | None = None,
    ranker: RankerConfig | None = None,
    *,
    multi: bool | None = None,
    max_tags: int = 5,
    learned_k: int = 10,
    target_precision: float = 0.95,
    progress: Callable[[str], None] | None = None,
) -> tuple[RankingModels, HeldOut]:
    """Cross-fit held-out candidates, fit and calibrate the ranker on them, fit the precision cut on
    its out-of-fold probabilities, and fit the learned recall that serves on all the items."""
    graph = graph or GraphConfig()
    learned = learned or LearnedConfig()
    ranker = ranker or RankerConfig()
    multi = is_multi(data.item_tags) if multi is None else multi
    emit = ranker.emit or (max_tags if multi else 1)
    started = time.perf_counter()
    held = held_out_candidates(
        data, graph, learned, folds=ranker.folds, seed=ranker.seed, learned_k=learned_k, progress=progress
    )
    crossfit_s = time.perf_counter() - started
    digest = data_hash(data.ids, data.texts, data.item_tags)
    fitted, oof = Ranker.fit(
        held.x, held.y, held.groups, emit=emit, encoder_id=data.encoder_id, data_hash=digest, config=ranker
    )
    shown = top_rows(oof, held.groups, emit)
    top1 = top_rows(oof, held.groups, 1)
    cut = precision_cut(oof[top1], held.y[top1], target_precision)
    covered = float(np.mean(oof[top1] >= cut)) if cut is not None else 0.0
    fitted.metrics = {
        "held_out_items": len(held.item_ids),
        "held_out_rows": len(held.y),
        "gold_tags_missed_by_candidates": held.gold_missed,
        "top1_precision": float(held.y[top1].mean()),
        # In-sample for the isotonic map (fitted on these very rows): a check, not an estimate.
        "ece_shown_calibration_fit": expected_calibration_error(
            zip(oof[shown].tolist(), held.y[shown].tolist(), strict=True)
        )["ece"],
        "cut": cut,
        "cut_coverage": covered,
    }
    if progress:
        progress(f"ranker fitted on {len(held.y)} held-out rows: {json.dumps(fitted.metrics)}")
    final = LearnedRecall.fit(
        ids=data.ids,
        texts=data.texts,
        vectors=data.vectors,
        item_tags=data.item_tags,
        tags=data.tags,
        encoder_id=data.encoder_id,
        config=learned,
    )
    models = RankingModels(
        learned=final,
        ranker=fitted,
        multi=multi,
        learned_k=learned_k,
        target_precision=target_precision,
        cut=cut,
        metrics={
            **fitted.metrics,
            "crossfit_seconds": crossfit_s,
            "ranker_fit_seconds": fitted.fit_seconds,
            "learned_fit_seconds": final.fit_seconds,
            "ranker": asdict(ranker),
            "learned": asdict(learned),
        },
    )
    return models, held


__all__ = ["EncoderMismatch", "LLM4TagError", "RankingModels", "ScoredTag", "fit_ranking", "is_multi"]
