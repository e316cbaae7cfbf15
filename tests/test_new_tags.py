"""Tags with few annotations (issue 27): the candidate slots reserved for them and the cross-fit that
holds tags out as well as items. Pure logic over synthetic unit vectors (no encoder, no LLM)."""

from __future__ import annotations

import numpy as np
import pytest

from graph_store import GraphConfig, RecallConfig
from graph_store.metapaths import Hits
from llm4tag.errors import ConfigError
from llm4tag.ranking import (
    FEATURES,
    FEW,
    Annotated,
    CandidateFeatures,
    FewTags,
    LeakError,
    LearnedConfig,
    RankerConfig,
    fit_ranking,
    held_out_candidates,
    plan_held_out_tags,
)
from llm4tag.ranking.crossfit import fold_parts
from llm4tag.ranking.features import TagStats

DIM = 16
COL = {name: i for i, name in enumerate(FEATURES)}


def unit(rng, n: int) -> np.ndarray:
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def hits_for(vector: np.ndarray, tag_vectors: np.ndarray, k: int = 35) -> Hits:
    sims = tag_vectors @ vector
    order = np.argsort(-sims, kind="stable")[:k]
    return Hits(tag_pos=order.astype(np.int64), tag_sims=sims[order].astype(np.float64))


# ------------------------------------------------------------------------- the reserved slots
def test_few_tag_slots_propose_the_closest_unannotated_tags_beside_graph_recall():
    rng = np.random.default_rng(0)
    tags = [f"t{i}" for i in range(40)]
    tag_vectors = unit(rng, len(tags))
    popularity = np.full(len(tags), 50.0)
    popularity[[3, 7, 11, 19]] = [0, 0, 2, 0]  # few annotations: fewer than 3
    popularity[25] = 3  # not few
    stats = TagStats(tags, tag_vectors, popularity, contents=1000)
    # The item sits closest to the annotated tags; the few-annotation tags rank lower by cosine.
    item = (3 * tag_vectors[0] + 2 * tag_vectors[1] + 0.6 * tag_vectors[7] + 0.4 * tag_vectors[19]).astype(
        np.float32
    )
    item /= np.linalg.norm(item)
    recall = RecallConfig(max_c2t=1, min_c2t=1, num_candidates=2, fill=False, c2c_search_k=0)
    hits = hits_for(item, tag_vectors)

    without = CandidateFeatures(stats, None, recall, few=FewTags(slots=0)).compute(["x"], item[None], [hits])[
        0
    ]
    assert not {"t3", "t7", "t11", "t19"} & set(without.tags)

    few = FewTags(slots=2)
    with_slots = CandidateFeatures(stats, None, recall, few=few).compute(["x"], item[None], [hits])[0]
    sims = {t: float(tag_vectors[tags.index(t)] @ item) for t in ("t3", "t7", "t11", "t19")}
    expected = sorted(sims, key=lambda t: -sims[t])[:2]
    added = [t for t, p in zip(with_slots.tags, with_slots.provenance, strict=True) if FEW in p]
    assert added == expected
    assert with_slots.tags[: len(without.tags)] == without.tags  # graph recall's candidates come first
    x = with_slots.features
    for row, tag in enumerate(with_slots.tags):
        is_few = tag in sims
        assert x[row, COL["few"]] == is_few and x[row, COL["in_few"]] == (tag in added)
        if is_few:
            assert x[row, COL["few_rank"]] == sorted(sims, key=lambda t: -sims[t]).index(tag)
    assert np.allclose(x[:, COL["item_few_top"]], max(sims.values()), atol=1e-5)
    annotated = [float(tag_vectors[i] @ item) for i, t in enumerate(tags) if t not in sims]
    assert np.allclose(x[:, COL["item_known_top"]], max(annotated), atol=1e-5)


def test_few_tag_settings_are_checked():
    with pytest.raises(ConfigError, match="slots"):
        FewTags.load({"slots": -1})
    with pytest.raises(ConfigError, match="held_out_tags"):
        RankerConfig.load({"held_out_tags": 1.0})


# --------------------------------------------------------------------- tags held out of a fold
def test_plan_holds_out_a_seeded_share_of_the_annotated_tags_per_fold():
    item_tags = [[f"t{i % 50}", f"t{(i * 7) % 50}"] for i in range(500)]
    plan = plan_held_out_tags(item_tags, folds=5, share=0.2)
    assert plan == plan_held_out_tags(item_tags, folds=5, share=0.2)  # seeded
    assert [len(p) for p in plan] == [10] * 5
    assert len(set(plan)) > 1  # an independent draw per fold
    assert set().union(*plan) <= {t for row in item_tags for t in row}
    assert plan_held_out_tags(item_tags, folds=5, share=0.2, seed=1) != plan
    assert plan_held_out_tags(item_tags, folds=3, share=0.0) == [frozenset()] * 3
    with pytest.raises(ValueError, match="share"):
        plan_held_out_tags(item_tags, folds=5, share=1.0)


def synthetic(rng, n_items: int = 300, n_tags: int = 12, second_tags: bool = True) -> Annotated:
    """Items near their tag's vector, with a word of the tag's own in the text (the learned recall's
    TF-IDF) and (``second_tags``) a second tag on every fifth item."""
    tags = [f"tag{k}" for k in range(n_tags)]
    tag_vectors = unit(rng, n_tags)
    ids, texts, vectors, item_tags = [], [], [], []
    for i in range(n_items):
        k = i % n_tags
        v = tag_vectors[k] + 0.35 * unit(rng, 1)[0]
        vectors.append(v / np.linalg.norm(v))
        labels = [tags[k]] + ([tags[(k + 1) % n_tags]] if second_tags and i % 5 == 0 else [])
        ids.append(f"item{i}")
        texts.append(" ".join(f"word{t[3:]} filler{rng.integers(30)}" for t in labels))
        item_tags.append(labels)
    return Annotated(
        ids, texts, np.asarray(vectors, np.float32), item_tags, tags, tag_vectors, "synthetic@0/d16"
    )


def test_without_tags_removes_every_annotation_of_the_tags_and_keeps_the_vocabulary():
    data = synthetic(np.random.default_rng(1))
    reduced = data.without_tags(frozenset({"tag0", "tag1"}))
    assert reduced.tags == data.tags
    assert not any({"tag0", "tag1"} & set(row) for row in reduced.item_tags)
    assert all(reduced.item_tags)  # items left without a tag are left out
    assert len(reduced.ids) < len(data.ids)
    assert data.without_tags(frozenset()) is data


LEARNED = LearnedConfig(kind="linear", embeddings=False)


def test_held_out_tags_are_unannotated_in_their_folds_and_right_answers_there():
    data = synthetic(np.random.default_rng(2))
    held = held_out_candidates(
        data, GraphConfig(), LEARNED, folds=3, held_out_tags=0.25, few=FewTags(slots=3)
    )
    assert [len(t) for t in held.held_tags] == [3, 3, 3]
    few_right = 0
    for item_id, fold, candidate_set, gold in zip(
        held.item_ids, held.folds, held.sets, data.item_tags, strict=True
    ):
        for tag, row in zip(candidate_set.tags, candidate_set.features, strict=True):
            if tag in held.held_tags[fold]:
                assert row[COL["popularity"]] == 0 and row[COL["few"]] == 1, (item_id, tag)
                few_right += tag in gold
    # The fold's items of its held-out tags find them among the candidates: rows where a tag nobody
    # annotated is the right answer, which the ranker never saw before.
    of_held_tags = sum(
        bool(set(gold) & held.held_tags[fold]) for gold, fold in zip(data.item_tags, held.folds, strict=True)
    )
    assert few_right > 0.5 * of_held_tags
    items_only = held_out_candidates(data, GraphConfig(), LEARNED, folds=3)
    assert items_only.held_tags == [frozenset()] * 3


def test_a_fold_built_with_its_held_out_tags_annotated_is_caught():
    data = synthetic(np.random.default_rng(3))

    def leaky_parts(rest, held_ids, graph, learned):
        # The fold's store and learned recall from every other item with all its annotations.
        keep = np.asarray([i for i, item_id in enumerate(data.ids) if item_id not in set(held_ids)])
        return fold_parts(data.subset(keep), held_ids, graph, learned)

    with pytest.raises(LeakError, match="held-out tag"):
        held_out_candidates(data, GraphConfig(), LEARNED, folds=3, held_out_tags=0.25, parts=leaky_parts)


@pytest.mark.slow  # out of the fast loop (several processes, or a fit)
def test_the_ranker_learns_that_an_unannotated_tag_can_be_right():
    rng = np.random.default_rng(4)
    data = synthetic(rng, n_items=600, n_tags=20, second_tags=False)
    new = "tag5"
    train = data.without_tags(frozenset({new}))
    held_out = [i for i, tags in enumerate(data.item_tags) if tags[0] == new][:10]
    probe = data.subset(np.asarray(held_out))
    from llm4tag.ranking.crossfit import build_store

    def top_is_new(ranker_config):
        models, _ = fit_ranking(
            train, graph=GraphConfig(), learned=LEARNED, ranker=ranker_config, few=FewTags()
        )
        store = build_store(train, GraphConfig())
        scored = models.score(store, probe.texts, probe.vectors)
        return np.mean([item[0].tag == new for item in scored])

    before = top_is_new(RankerConfig(folds=3, held_out_tags=0.0, min_samples_leaf=5))
    after = top_is_new(RankerConfig(folds=3, held_out_tags=0.25, min_samples_leaf=5))
    assert after > before and after >= 0.5, (before, after)
