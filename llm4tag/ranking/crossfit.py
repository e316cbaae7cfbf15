"""Cross-fitting: the held-out candidates the ranker learns from.

The annotated items are split into folds; for each fold a graph store and a learned recall are
built from the other folds only, and the fold's items get their candidates and features from them.
Every training row of the ranker thus describes an item as new to the store as a real one will be
(the same scheme as ``llm4tag train-data``).

Tags are held out as well (``held_out_tags``): each fold's store and learned recall are also built
without any annotation of a seeded random share of the tags (:func:`plan_held_out_tags`), which stay
in the vocabulary. The fold's items of those tags then have their right answer among tags nobody
has annotated, as an item of a tag added to the vocabulary yesterday has; without such rows the
ranker only ever sees unannotated tags being wrong, and learns that they always are.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from graph_store import GraphConfig, GraphStore
from llm4tag.progress import step
from llm4tag.ranking.features import (
    FEATURES,
    LEARNED,
    CandidateFeatures,
    CandidateSet,
    FewTags,
    TagStats,
    search_hits,
)
from llm4tag.ranking.learned import LearnedConfig, LearnedRecall
from llm4tag.ranking.provenance import LeakError
from llm4tag.synthetic import check_not_synthetic

_FEATURE_BATCH = 2048  # held-out items searched and featurised at a time (the bar moves per batch)


def assign_folds(ids: Sequence[str], folds: int, seed: int = 0) -> np.ndarray:
    """A fold per item from a stable hash of its id: the same item lands in the same fold on every
    machine and run, and growing the data does not move the items already there."""
    if folds < 2:
        raise ValueError(f"cross-fitting needs at least 2 folds, got {folds}")
    return np.fromiter(
        (zlib.crc32(f"{seed}:{item_id}".encode()) % folds for item_id in ids), np.int64, len(ids)
    )


@dataclass(frozen=True)
class FoldPlan:
    """Which annotated items are held out, and in which fold: each fold's items get their candidates
    from a store and a learned recall fitted on every other item (the items never held out included).

    Up to ``max_held_out`` items, every item is held out once, in ``folds`` folds (each fit reads
    (folds - 1) / folds of the items). Above, a stable sample of ``max_held_out`` items is held out,
    in as few folds as keep each fit's share of the items at least what ``folds`` gives (one fold
    from ``folds * max_held_out`` items on): the fits are what a build's time goes to, and the
    ranker, its calibration and the output rule learn as well from that many held-out items.
    """

    fold_of: np.ndarray  # per item: its fold, or -1 if it is never held out
    folds: int

    @classmethod
    def of(cls, ids: Sequence[str], folds: int, seed: int = 0, max_held_out: int | None = None) -> FoldPlan:
        n = len(ids)
        if max_held_out is None or n <= max_held_out:
            return cls(assign_folds(ids, folds, seed), folds)
        if max_held_out < folds:
            raise ValueError(f"max_held_out ({max_held_out}) must allow one item per fold ({folds})")
        fewer = max(1, math.ceil(folds * max_held_out / n))
        # A stable hash picks the sample, as it picks folds: growing the data keeps most of it.
        keys = np.fromiter((zlib.crc32(f"held:{seed}:{i}".encode()) for i in ids), np.int64, n)
        chosen = np.sort(np.argsort(keys, kind="stable")[:max_held_out])
        fold_of = np.full(n, -1, np.int64)
        fold_of[chosen] = assign_folds([ids[i] for i in chosen], fewer, seed) if fewer > 1 else 0
        return cls(fold_of, fewer)

    @property
    def held_rows(self) -> np.ndarray:
        """Every held-out item's position, in data order."""
        return np.flatnonzero(self.fold_of >= 0)

    def held(self, fold: int) -> np.ndarray:
        return np.flatnonzero(self.fold_of == fold)

    def rest(self, fold: int) -> np.ndarray:
        return np.flatnonzero(self.fold_of != fold)


def plan_held_out_tags(
    item_tags: Sequence[Sequence[str]], folds: int, share: float, seed: int = 0
) -> list[frozenset[str]]:
    """Per fold, the tags whose every annotation that fold's store and learned recall are built
    without: an independent seeded draw of ``share`` of the annotated tags for each fold (so every
    tag is held out somewhere with probability ``1 - (1 - share) ** folds``)."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"the share of tags held out must be in [0, 1), got {share}")
    annotated = sorted({t for row in item_tags for t in row})
    count = round(share * len(annotated))
    rng = np.random.default_rng([seed, folds, count])
    return [frozenset(rng.choice(annotated, count, replace=False).tolist()) for _ in range(folds)]


@dataclass
class Annotated:
    """Annotated items with their vectors, and the vocabulary (the inputs every fit reads).

    ``synthetic``: synthetic example items (llm4tag/synthetic.py), training data of the learned recall
    only: every learned recall fitted from these data (each fold's and the final one) reads them, no
    graph store holds them, and they are never held out (only ``ids`` are)."""

    ids: list[str]
    texts: list[str]
    vectors: np.ndarray
    item_tags: list[list[str]]
    tags: list[str]
    tag_vectors: np.ndarray
    encoder_id: str
    synthetic: Annotated | None = None

    def __post_init__(self) -> None:
        if not (len(self.ids) == len(self.texts) == len(self.vectors) == len(self.item_tags)):
            raise ValueError("ids, texts, vectors and item_tags must have the same length")
        if len(set(self.ids)) != len(self.ids):
            raise ValueError("item ids must be unique")
        if self.synthetic is not None and self.synthetic.synthetic is not None:
            raise ValueError("synthetic examples carry no synthetic examples of their own")

    def for_learned(self) -> Annotated:
        """The items a learned recall is fitted on: the annotated ones, then the synthetic examples."""
        extra = self.synthetic
        if extra is None or not extra.ids:
            return dataclasses.replace(self, synthetic=None)
        return dataclasses.replace(
            self,
            ids=[*self.ids, *extra.ids],
            texts=[*self.texts, *extra.texts],
            vectors=np.concatenate([self.vectors, extra.vectors]),
            item_tags=[*self.item_tags, *extra.item_tags],
            synthetic=None,
        )

    def subset(self, rows: np.ndarray) -> Annotated:
        rows = np.asarray(rows, np.int64)
        return dataclasses.replace(
            self,
            ids=[self.ids[i] for i in rows],
            texts=[self.texts[i] for i in rows],
            vectors=self.vectors[rows],
            item_tags=[self.item_tags[i] for i in rows],
        )

    def without_tags(self, tags: frozenset[str]) -> Annotated:
        """Every annotation of ``tags`` removed (they stay in the vocabulary); items left without a
        tag are left out."""
        if not tags:
            return self
        kept = [[t for t in row if t not in tags] for row in self.item_tags]
        rows = np.asarray([i for i, row in enumerate(kept) if row], np.int64)
        synthetic = self.synthetic.without_tags(tags) if self.synthetic is not None else None
        return dataclasses.replace(self.subset(rows), item_tags=[kept[i] for i in rows], synthetic=synthetic)


@dataclass
class HeldOut:
    """Held-out candidates of the held-out items (every annotated item, or the plan's sample of them):
    one row per (item, candidate)."""

    item_ids: list[str]  # per held-out item
    folds: np.ndarray  # per held-out item
    sets: list[CandidateSet]  # per held-out item
    x: np.ndarray  # rows
    y: np.ndarray  # rows: candidate in the item's gold tags
    groups: np.ndarray  # rows: item id
    gold_missed: int  # gold tags of held-out items that no candidate covered
    rows: np.ndarray | None = None  # per held-out item: its position among the annotated items
    held_tags: list[frozenset[str]] = dataclasses.field(default_factory=list)  # per fold
    # Training-only rows: the candidates of the synthetic examples, each scored in its fold by a
    # learned recall fitted without it. The ranker learns from them; they never calibrate or measure.
    synthetic_x: np.ndarray | None = None
    synthetic_y: np.ndarray | None = None


def fit_learned(data: Annotated, config: LearnedConfig, exclude_ids: Sequence[str] = ()) -> LearnedRecall:
    """The learned recall fitted on ``data`` and its synthetic examples (none of ``exclude_ids`` among
    them: LeakError)."""
    data = data.for_learned()
    return LearnedRecall.fit(
        ids=data.ids,
        texts=data.texts,
        vectors=data.vectors,
        item_tags=data.item_tags,
        tags=data.tags,
        encoder_id=data.encoder_id,
        config=config,
        exclude_ids=exclude_ids,
    )


def build_store(data: Annotated, graph: GraphConfig) -> GraphStore:
    # Recall of new items does not read the similarity edges among stored items; skipping them
    # makes a fold's store a few seconds to build.
    config = graph.with_overrides({"materialize_similarity": False})
    return GraphStore.build(
        item_ids=data.ids,
        item_vectors=data.vectors,
        item_tags=data.item_tags,
        tags=data.tags,
        tag_vectors=data.tag_vectors,
        encoder_id=data.encoder_id,
        config=config,
    )


def fold_parts(
    data: Annotated, held_ids: Sequence[str], graph: GraphConfig, learned: LearnedConfig
) -> tuple[GraphStore, LearnedRecall]:
    """The store and learned recall a held-out fold is scored against, checked free of its items."""
    store = build_store(data, graph)
    leaked = [i for i in held_ids if i in store.graph.content_pos]
    if leaked:
        raise LeakError(f"{len(leaked)} held-out item(s) are in the fold's store, e.g. {leaked[0]!r}")
    model = fit_learned(data, learned, exclude_ids=held_ids)
    return store, model


def check_tags_held_out(stats: TagStats, computed: Sequence[CandidateSet], held_tags: frozenset[str]) -> None:
    """A held-out tag must have no annotation in the fold's store and never be proposed by the fold's
    learned recall (which only proposes tags it was trained on): LeakError otherwise, for the fold's
    rows of such a tag would not be those of a new tag."""
    pos = {t: i for i, t in enumerate(stats.tag_names)}
    annotated = sorted(t for t in held_tags if stats.popularity[pos[t]] > 0)
    if annotated:
        raise LeakError(
            f"{len(annotated)} held-out tag(s) are annotated in the fold's store, e.g. {annotated[0]!r}"
        )
    learned = sorted(
        {
            tag
            for candidate_set in computed
            for tag, paths in zip(candidate_set.tags, candidate_set.provenance, strict=True)
            if tag in held_tags and LEARNED in paths
        }
    )
    if learned:
        raise LeakError(
            f"{len(learned)} held-out tag(s) are proposed by the fold's learned recall, e.g. {learned[0]!r}"
        )


def held_out_candidates(
    data: Annotated,
    graph: GraphConfig,
    learned: LearnedConfig,
    folds: int = 5,
    seed: int = 0,
    learned_k: int = 10,
    progress: Callable[[str], None] | None = None,
    parts: Callable[..., tuple[GraphStore, LearnedRecall]] = fold_parts,
    max_held_out: int | None = None,
    plan: FoldPlan | None = None,
    held_out_tags: float = 0.0,
    few: FewTags | None = None,
) -> HeldOut:
    """Out-of-fold candidates and features of the held-out items of ``plan`` (default:
    ``FoldPlan.of(data.ids, folds, seed, max_held_out)``), fold by fold. ``held_out_tags``: the share
    of the tags each fold is also built without (see the module's docstring); ``few``: the candidate
    slots of tags with few annotations."""
    plan = plan or FoldPlan.of(data.ids, folds, seed, max_held_out)
    check_not_synthetic((data.ids[i] for i in plan.held_rows), "the cross-fit's held-out rows")
    held_tags = plan_held_out_tags(data.item_tags, plan.folds, held_out_tags, seed)
    synthetic = data.synthetic
    syn_fold = np.zeros(0 if synthetic is None else len(synthetic.ids), np.int64)
    if synthetic is not None and plan.folds > 1:  # one fold (a sample held out): every example in it
        syn_fold = assign_folds(synthetic.ids, plan.folds, seed)
    sets: dict[int, CandidateSet] = {}
    syn_xs, syn_ys = [], []
    for fold in range(plan.folds):
        held, rest = plan.held(fold), plan.rest(fold)
        if not len(held) or not len(rest):
            raise ValueError(
                f"fold {fold} of {plan.folds} is empty or holds every item: too few items to cross-fit"
            )
        with step(f"fold {fold + 1}/{plan.folds}: fit on {len(rest):,} items, score {len(held):,}"):
            held_ids = [data.ids[i] for i in held]
            fit_data = data.subset(rest)
            syn_held = np.flatnonzero(syn_fold == fold)
            if synthetic is not None:
                # The fold's synthetic examples are scored like its items, by a learned recall fitted
                # without them.
                fit_data.synthetic = synthetic.subset(np.flatnonzero(syn_fold != fold))
                syn_held = np.asarray(
                    [i for i in syn_held if not set(synthetic.item_tags[i]) & held_tags[fold]], np.int64
                )
            with step("graph store and learned recall"):
                store, model = parts(fit_data.without_tags(held_tags[fold]), held_ids, graph, learned)
            with step("candidates and features", total=len(held)) as bar:
                stats = TagStats.from_store(store)
                features = CandidateFeatures(stats, model, graph.recall, learned_k, few)
                for start in range(0, len(held), _FEATURE_BATCH):
                    part = held[start : start + _FEATURE_BATCH]
                    vectors = data.vectors[part]
                    computed = features.compute(
                        [data.texts[i] for i in part], vectors, search_hits(store, vectors, graph.recall)
                    )
                    check_tags_held_out(stats, computed, held_tags[fold])
                    sets.update(zip(part.tolist(), computed, strict=True))
                    bar.update(len(part))
                if len(syn_held):
                    vectors = synthetic.vectors[syn_held]
                    texts = [synthetic.texts[i] for i in syn_held]
                    for i, candidate_set in zip(
                        syn_held.tolist(),
                        features.compute(texts, vectors, search_hits(store, vectors, graph.recall)),
                        strict=True,
                    ):
                        syn_xs.append(candidate_set.features)
                        syn_ys.append(
                            np.asarray([t in synthetic.item_tags[i] for t in candidate_set.tags], bool)
                        )
        if progress:
            progress(
                f"fold {fold + 1}/{plan.folds}: {len(rest)} items fitted, {len(held)} held out, "
                f"{len(held_tags[fold])} tags held out"
            )
    rows = plan.held_rows
    xs, ys, groups = [], [], []
    missed = 0
    for i in rows.tolist():
        candidate_set, gold = sets[i], data.item_tags[i]
        xs.append(candidate_set.features)
        right = np.asarray([t in gold for t in candidate_set.tags], bool)
        ys.append(right)
        groups.append(np.full(len(right), data.ids[i], dtype=object))
        missed += len(set(gold) - set(candidate_set.tags))
    return HeldOut(
        item_ids=[data.ids[i] for i in rows],
        folds=plan.fold_of[rows],
        sets=[sets[i] for i in rows.tolist()],
        x=np.concatenate(xs) if xs else np.zeros((0, len(FEATURES)), np.float32),
        y=np.concatenate(ys) if ys else np.zeros(0, bool),
        groups=np.concatenate(groups) if groups else np.zeros(0, object),
        gold_missed=missed,
        rows=rows,
        held_tags=held_tags,
        synthetic_x=np.concatenate(syn_xs) if syn_xs else None,
        synthetic_y=np.concatenate(syn_ys) if syn_ys else None,
    )
