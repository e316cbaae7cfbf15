"""The ranking package's entry points: fit the learned recall and the ranker from annotated items,
persist them beside a store, load them, and rank new items' candidates.

    models, held = fit_ranking(data, graph_config)        # at build time (cross-fits, then refits)
    models.save(STORE / "ranking")                         # whole or not at all
    models = RankingModels.load(STORE / "ranking", expected_encoder_id=encoder.id)
    scored = models.rank(texts, vectors, hits, recall)     # per item: ScoredTag best first
    scored = models.score(store, texts, vectors, ids)      # the same, searching the store first

The folder also keeps every annotated item's out-of-fold candidates (``heldout.jsonl.gz``): the
precision cut for any target and the LLM's held-out outcomes (ranking/cascade.py: fit_cascade) are computed
from them, never from items the models were trained on.
"""

from __future__ import annotations

import gzip
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from graph_store import Candidate, GraphConfig, GraphStore, RecallConfig, ShardedStore
from graph_store.durable import durable_file
from graph_store.metapaths import Hits
from llm4tag.errors import LLM4TagError
from llm4tag.evaluation.tagging import expected_calibration_error
from llm4tag.progress import step
from llm4tag.ranking.crossfit import Annotated, HeldOut, fit_learned, held_out_candidates
from llm4tag.ranking.features import CandidateFeatures, FewTags, TagStats, search_hits
from llm4tag.ranking.learned import LearnedConfig, LearnedRecall, for_store
from llm4tag.ranking.provenance import check_manifest, data_hash, new_folder, write_manifest
from llm4tag.ranking.ranker import Ranker, RankerConfig, top_rows
from llm4tag.ranking.routing import CUT_CONFIDENCE, precision_cut
from llm4tag.ranking.shown_tags import ShownTags, fit_shown_tags, single_tag_rule
from llm4tag.tag_mode import resolve_mode

HELD_OUT = "heldout.jsonl.gz"
TAG_STATS = "tag_stats.npz"
HELD_OUT_CANDIDATES = 30  # out-of-fold candidates kept per annotated item (the LLM reads 20)


@dataclass
class ScoredTag:
    """A candidate of an item: the ranker's calibrated probability (NaN: no ranker scored it) and raw
    score, the recall paths that found it, and graph recall's own detail where it came from there."""

    tag: str
    probability: float  # calibrated P(tag is right); NaN without a ranker
    score: float  # the order's score: the ranker's raw score, or graph recall's fused score
    provenance: tuple[str, ...]  # c2t, c2c2t, learned
    recall_score: float | None = None  # graph recall's fused score (unranked candidates)
    via: tuple[str, ...] = ()  # the neighbours whose annotation led graph recall here (C2C2T)

    @classmethod
    def of_candidate(cls, candidate: Candidate) -> ScoredTag:
        """Graph recall's candidate, unranked."""
        return cls(
            candidate.tag,
            float("nan"),
            float(candidate.score),
            tuple(candidate.paths),
            float(candidate.score),
            tuple(candidate.via),
        )

    def to_dict(self) -> dict:
        """``confidence``: the ranker's probability, None where no ranker scored the candidate."""
        out: dict = {
            "tag": self.tag,
            "confidence": round(self.probability, 6) if self.probability == self.probability else None,
            "score": round(self.score, 6),
            "source": "+".join(self.provenance),
        }
        if self.via:
            out["via"] = list(self.via)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> ScoredTag:
        source = data.get("source") or ""
        confidence = data.get("confidence")
        return cls(
            data["tag"],
            float("nan") if confidence is None else float(confidence),
            float(data["score"]),
            tuple(p for p in source.split("+") if p),
        )


@dataclass
class HeldOutItem:
    """An annotated item's out-of-fold candidates: ranked and scored by models that never saw it."""

    id: str
    fold: int
    scored: list[ScoredTag]
    gold: list[str]

    def to_json(self) -> str:
        return json.dumps(
            {
                "id": self.id,
                "fold": self.fold,
                "gold": self.gold,
                "scored": [s.to_dict() for s in self.scored],
            }
        )

    @classmethod
    def from_json(cls, line: str) -> HeldOutItem:
        row = json.loads(line)
        return cls(row["id"], int(row["fold"]), [ScoredTag.from_dict(s) for s in row["scored"]], row["gold"])


def shown_outcomes(items: Sequence[HeldOutItem], emit: int) -> tuple[np.ndarray, np.ndarray]:
    """(probability, right) of the tags users are shown: the top ``emit`` of each item."""
    p = [s.probability for item in items for s in item.scored[:emit]]
    right = [s.tag in item.gold for item in items for s in item.scored[:emit]]
    return np.asarray(p, np.float64), np.asarray(right, bool)


@dataclass
class RankingModels:
    learned: LearnedRecall
    ranker: Ranker
    stats: TagStats
    multi: bool
    learned_k: int = 10
    few: FewTags = field(default_factory=FewTags)
    metrics: dict = field(default_factory=dict)
    folder: Path | None = None  # where it was loaded from (held-out candidates are read on demand)
    _held_out: list[HeldOutItem] | None = field(default=None, repr=False, compare=False)
    _features: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def emit(self) -> int:
        return self.ranker.emit

    @property
    def cut(self) -> float | None:
        """The held-out cut for the target precision the models were fitted with (None: unreachable);
        :meth:`precision_cut` gives it for any other target."""
        return self.metrics.get("cut")

    @property
    def shown(self) -> ShownTags | None:
        """The store's output rule fitted on held-out folds (None: models fitted before it existed)."""
        data = self.metrics.get("shown")
        return ShownTags.from_dict(data) if data else None

    def assert_unseen(self, ids: Sequence[str]) -> None:
        self.learned.assert_unseen(ids)
        self.ranker.assert_unseen(ids)

    def follow(self, tag_names: Sequence[str], tag_vectors: np.ndarray) -> None:
        """Rank among the store's vocabulary as it is now: tags added since the fit are candidates with
        0 annotations (:meth:`TagStats.following`)."""
        stats = self.stats.following(tag_names, tag_vectors)
        if stats is not self.stats:
            self.stats, self._features = stats, {}

    def features(self, recall: RecallConfig) -> CandidateFeatures:
        key = recall.model_dump_json()
        if key not in self._features:
            self._features[key] = CandidateFeatures(
                self.stats, self.learned, recall, self.learned_k, self.few
            )
        return self._features[key]

    def rank(
        self,
        texts: Sequence[str],
        vectors: np.ndarray,
        hits: Sequence[Hits],
        recall: RecallConfig,
        ids: Sequence[str] | None = None,
    ) -> list[list[ScoredTag]]:
        """Every candidate of each item (graph recall's from ``hits``, and the learned recall's) with
        its calibrated probability, best first. With ``ids`` the items are first checked not to be
        training items of the fitted models."""
        if ids is not None:
            self.assert_unseen(ids)
        sets = self.features(recall).compute(texts, vectors, hits)
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

    def score(
        self,
        store: GraphStore | ShardedStore,
        texts: Sequence[str],
        vectors: np.ndarray,
        ids: Sequence[str] | None = None,
    ) -> list[list[ScoredTag]]:
        """``rank`` after searching ``store`` (every shard, merged)."""
        recall = store.config.recall
        return self.rank(
            texts, vectors, search_hits(store, np.asarray(vectors, np.float32), recall), recall, ids
        )

    # -- held-out data ------------------------------------------------------------------------------
    @property
    def held_out(self) -> list[HeldOutItem]:
        if self._held_out is None:
            if self.folder is None or not (self.folder / HELD_OUT).exists():
                raise LLM4TagError("these ranking models carry no held-out candidates")
            with gzip.open(self.folder / HELD_OUT, "rt", encoding="utf-8") as fh:
                self._held_out = [HeldOutItem.from_json(line) for line in fh if line.strip()]
        return self._held_out

    def precision_cut(self, target: float, confidence: float | None = CUT_CONFIDENCE) -> float | None:
        """The lowest probability at which the tags shown (top 1, or top ``emit`` multi-tag) reach
        ``target`` precision on the held-out candidates (with ``confidence``: see
        :func:`~llm4tag.ranking.routing.precision_cut`); None when no threshold reaches it."""
        p, right = shown_outcomes(self.held_out, self.emit)
        return precision_cut(p, right, target, confidence)

    # -- persistence --------------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike, held_out: Sequence[HeldOutItem] | None = None) -> Path:
        held_out = self._held_out if held_out is None else list(held_out)
        with new_folder(folder) as tmp:
            self.learned.save(tmp / "learned")
            self.ranker.save(tmp / "ranker")
            self.stats.save(tmp / TAG_STATS)
            if held_out is not None:
                with durable_file(tmp / HELD_OUT) as raw, gzip.open(raw, "wt", encoding="utf-8") as fh:
                    for item in held_out:
                        fh.write(item.to_json() + "\n")
            write_manifest(
                tmp,
                kind="ranking",
                encoder_id=self.ranker.encoder_id,
                data_hash=self.ranker.data_hash,
                settings={
                    "multi": self.multi,
                    "learned_k": self.learned_k,
                    "few_tags": self.few.model_dump(),
                },
                extra={"metrics": self.metrics},
            )
        self.folder, self._held_out = Path(folder), held_out
        return Path(folder)

    @classmethod
    def load(cls, folder: str | os.PathLike, *, expected_encoder_id: str) -> RankingModels:
        folder = Path(folder)
        manifest = check_manifest(folder, kind="ranking", expected_encoder_id=expected_encoder_id)
        settings = manifest["settings"]
        return cls(
            learned=LearnedRecall.load(folder / "learned", expected_encoder_id=expected_encoder_id),
            ranker=Ranker.load(folder / "ranker", expected_encoder_id=expected_encoder_id),
            stats=TagStats.load(folder / TAG_STATS),
            multi=bool(settings["multi"]),
            learned_k=int(settings["learned_k"]),
            few=FewTags.load(settings.get("few_tags")),
            metrics=dict(manifest.get("metrics") or {}),
            folder=folder,
        )


def is_multi(item_tags: Sequence[Sequence[str]]) -> bool:
    return resolve_mode("auto", [len(t) for t in item_tags]) == "multi"


def held_out_items(
    held: HeldOut, raw: np.ndarray, probability: np.ndarray, gold: Sequence[Sequence[str]]
) -> list:
    """Each held-out item's out-of-fold candidates, best first by the out-of-fold raw score
    (``gold``: per held-out item)."""
    out, start = [], 0
    for item_id, fold, candidate_set, item_gold in zip(
        held.item_ids, held.folds, held.sets, gold, strict=True
    ):
        end = start + len(candidate_set.tags)
        order = np.argsort(-raw[start:end], kind="stable")[:HELD_OUT_CANDIDATES]
        scored = [
            ScoredTag(
                candidate_set.tags[i],
                float(probability[start + i]),
                float(raw[start + i]),
                candidate_set.provenance[i],
            )
            for i in order.tolist()
        ]
        out.append(HeldOutItem(item_id, int(fold), scored, sorted(item_gold)))
        start = end
    return out


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
    stats: TagStats | None = None,
    threshold: float = 0.5,
    few: FewTags | None = None,
) -> tuple[RankingModels, HeldOut]:
    """Cross-fit held-out candidates, fit and calibrate the ranker on them, measure the precision cut
    and fit the output rule (how many tags are shown, from what probability: ranking/shown_tags.py)
    on its out-of-fold probabilities, and fit the learned recall that serves on all the items.
    ``stats``: the vocabulary statistics of the store the models serve beside (default: those of
    the annotated items); ``threshold``: the configured cut the fitted rule is compared with; ``few``:
    the candidate slots of tags with few annotations."""
    few = few or FewTags()
    graph = graph or GraphConfig()
    learned = for_store(learned or LearnedConfig(), len(data.ids))
    ranker = ranker or RankerConfig()
    multi = is_multi(data.item_tags) if multi is None else multi
    emit = ranker.emit or (max_tags if multi else 1)
    started = time.perf_counter()
    with step("cross-fit: held-out candidates"):
        held = held_out_candidates(
            data,
            graph,
            learned,
            folds=ranker.folds,
            seed=ranker.seed,
            learned_k=learned_k,
            progress=progress,
            max_held_out=ranker.max_held_out,
            held_out_tags=ranker.held_out_tags,
            few=few,
        )
    crossfit_s = time.perf_counter() - started
    trained = data.for_learned()  # the annotated items and the synthetic examples
    digest = data_hash(trained.ids, trained.texts, trained.item_tags)
    with step(f"ranker and its calibration ({len(held.y):,} held-out rows)"):
        fitted, raw_oof = Ranker.fit(
            held.x,
            held.y,
            held.groups,
            emit=emit,
            encoder_id=data.encoder_id,
            data_hash=digest,
            config=ranker,
            extra=None if held.synthetic_y is None else (held.synthetic_x, held.synthetic_y),
        )
    oof = fitted.probability(raw_oof)
    shown = top_rows(raw_oof, held.groups, emit)
    top1 = top_rows(raw_oof, held.groups, 1)
    cut = precision_cut(
        oof[top1 if not multi else shown], held.y[top1 if not multi else shown], target_precision
    )
    covered = float(np.mean(oof[top1] >= cut)) if cut is not None else 0.0
    fitted.metrics = {
        "held_out_items": len(held.item_ids),
        "held_out_rows": len(held.y),
        "synthetic_examples": len(trained.ids) - len(data.ids),
        "synthetic_rows": 0 if held.synthetic_y is None else len(held.synthetic_y),
        "gold_tags_missed_by_candidates": held.gold_missed,
        "top1_precision": float(held.y[top1].mean()),
        # In-sample for the isotonic map (fitted on these very rows): a check, not an estimate.
        "ece_shown_calibration_fit": expected_calibration_error(
            zip(oof[shown].tolist(), held.y[shown].tolist(), strict=True)
        )["ece"],
        "target_precision": target_precision,
        "cut": cut,
        "cut_coverage": covered,
    }
    if progress:
        progress(f"ranker fitted on {len(held.y)} held-out rows: {json.dumps(fitted.metrics)}")
    with step(f"learned recall on all {len(data.ids):,} items"):
        final = fit_learned(data, learned)
    if stats is None:
        counts = np.zeros(len(data.tags), np.float64)
        pos = {t: i for i, t in enumerate(data.tags)}
        for item in data.item_tags:
            for tag in set(item):
                if tag in pos:
                    counts[pos[tag]] += 1
        stats = TagStats(list(data.tags), np.asarray(data.tag_vectors, np.float32), counts, len(data.ids))
    models = RankingModels(
        learned=final,
        ranker=fitted,
        stats=stats,
        multi=multi,
        learned_k=learned_k,
        few=few,
        metrics={
            **fitted.metrics,
            "crossfit_seconds": crossfit_s,
            "ranker_fit_seconds": fitted.fit_seconds,
            "learned_fit_seconds": final.fit_seconds,
            "ranker": ranker.model_dump(),
            "learned": learned.model_dump(),
        },
    )
    held_gold = [data.item_tags[i] for i in held.rows] if held.rows is not None else data.item_tags
    models._held_out = held_out_items(held, raw_oof, oof, held_gold)
    with step("output rule: tags shown and their cut, on the held-out items"):
        models.metrics["shown"] = _shown_rule(models._held_out, multi, emit, threshold).to_dict()
    return models, held


def _shown_rule(held_out: Sequence[HeldOutItem], multi: bool, emit: int, threshold: float) -> ShownTags:
    return (
        fit_shown_tags(
            [[s.probability for s in item.scored] for item in held_out],
            [[s.tag in item.gold for s in item.scored] for item in held_out],
            [len(set(item.gold)) for item in held_out],
            emit,
            compare_threshold=threshold,
        )
        if multi
        else single_tag_rule()
    )


__all__ = [
    "HeldOutItem",
    "RankingModels",
    "ScoredTag",
    "fit_ranking",
    "is_multi",
    "shown_outcomes",
]
