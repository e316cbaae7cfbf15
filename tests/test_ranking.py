"""The ranking package: routing rules (pure logic) and real fits on the bundled samples (slow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from graph_store import EncoderMismatchError, GraphConfig
from llm4tag.data import read_items, read_tags
from llm4tag.encoded_text import item_text, tag_text
from llm4tag.ranking import (
    FEATURES,
    Annotated,
    LeakError,
    LearnedConfig,
    LearnedRecall,
    RankerConfig,
    RankingModels,
    assign_folds,
    choose_tau,
    fit_ranking,
    precision_cut,
)
from llm4tag.ranking.cascade import RoutePlan, final_tags, route_items
from llm4tag.ranking.crossfit import FoldPlan, build_store, fit_learned, fold_parts, held_out_candidates
from llm4tag.ranking.learned import for_store
from llm4tag.ranking.models import ScoredTag
from llm4tag.ranking.ranker import Ranker, top_rows
from llm4tag.ranking.shown_tags import ShownTags, fit_shown_tags, single_tag_rule

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"


# ------------------------------------------------------------------------------------ pure logic
def _scored(tags, probabilities):
    return [ScoredTag(t, p, p, ("c2t",)) for t, p in zip(tags, probabilities, strict=True)]


def _plan(tau, multi, emit=1):
    return RoutePlan(tau=tau, multi=multi, emit=emit, num_candidates=20, ranker_cut=0.0, llm_cut=0.0)


def test_route_single_accepts_a_confident_item_and_sends_the_rest_whole():
    plan = _plan(0.8, multi=False)
    sure, unsure, empty = route_items(
        [_scored(["a", "b"], [0.9, 0.05]), _scored(["a", "b"], [0.6, 0.3]), []], plan
    )
    assert [s.tag for s in sure.accepted] == ["a"] and not sure.needs_llm
    assert unsure.accepted == [] and unsure.candidates == ["a", "b"] and unsure.needs_llm
    assert not empty.needs_llm
    off = route_items([_scored(["a", "b"], [0.99, 0.05])], _plan(None, multi=False))[0]
    assert off.needs_llm and off.candidates == ["a", "b"]  # route: off sends every item


def test_route_multi_decides_per_shown_tag():
    plan = _plan(0.9, multi=True, emit=3)
    item = route_items([_scored(["a", "b", "c", "d"], [0.97, 0.6, 0.95, 0.1])], plan)[0]
    assert [s.tag for s in item.accepted] == ["a", "c"]
    assert item.judge == ["b"]  # "d" is not among the shown tags
    settled = route_items([_scored(["a", "b"], [0.99, 0.95])], plan)[0]
    assert not settled.needs_llm


def test_choose_tau_sends_nothing_without_llm_outcomes_or_when_the_llm_does_not_add():
    p = [0.2, 0.4, 0.6, 0.9]
    assert choose_tau(p, [0, 1, 1, 1], None).llm_share == 0.0
    worse = choose_tau(p, [1, 1, 1, 1], [0, 0, 1, 1])
    assert worse.llm_share == 0.0 and worse.tau == 0.0 and "does not add" in worse.reason


def test_choose_tau_sends_the_units_where_the_llm_is_better():
    # 30 units: the ranker is wrong on the 10 least sure and the LLM right on the first 9 of them
    # (the 10th is a tie, so it is not sent); above them the LLM only loses.
    p = [i / 30 for i in range(30)]
    ranker = [0] * 10 + [1] * 20
    llm = [1] * 9 + [0] + [1] * 5 + [0] + [1] * 14
    choice = choose_tau(p, ranker, llm)
    assert choice.tau == pytest.approx(9 / 30) and choice.llm_share == pytest.approx(9 / 30)
    assert choice.accuracy == pytest.approx(29 / 30)
    capped = choose_tau(p, ranker, llm, max_llm_share=0.2)
    assert capped.tau == pytest.approx(6 / 30) and capped.llm_share == pytest.approx(0.2)


def test_choose_tau_sends_nothing_when_the_gain_is_within_noise():
    # The LLM wins 11 and loses 10 of the 21 least sure units: +1 is a coin flip, not a gain.
    p = [i / 100 for i in range(100)]
    ranker = [1] * 10 + [0] * 11 + [1] * 79
    llm = [0] * 10 + [1] * 11 + [1] * 79
    choice = choose_tau(p, ranker, llm)
    assert choice.llm_share == 0.0 and choice.tau == 0.0
    assert "within noise (11 units won, 10 lost of the 21 least confident)" in choice.reason
    single = choose_tau([0.1, 0.2, 0.3, 0.4], [0, 1, 1, 1], [1, 1, 1, 1])
    assert "(1 unit won, 0 lost of the 1 least confident)" in single.reason
    assert choose_tau(p, ranker, llm, evidence_z=0.0).llm_share > 0  # the same data, no evidence asked


def test_choose_tau_never_splits_tied_probabilities():
    # Units 1 and 2 tie: a threshold sends both or neither.
    choice = choose_tau([0.1, 0.5, 0.5, 0.9], [0, 1, 0, 1], [1, 0, 1, 1], evidence_z=0.0)
    assert choice.tau in (0.5, 0.9) and choice.llm_share in (0.25, 0.75)


def test_precision_cut_keeps_the_most_at_the_target():
    p = [0.99, 0.95, 0.9, 0.8, 0.7, 0.6]
    right = [1, 1, 1, 1, 0, 0]
    assert precision_cut(p, right, 1.0, confidence=None) == 0.8
    assert precision_cut(p, right, 0.8, confidence=None) == 0.7
    assert precision_cut([0.5, 0.4], [0, 0], 0.95) is None
    with pytest.raises(ValueError):
        precision_cut(p, right, 0.0)
    with pytest.raises(ValueError):
        precision_cut(p, right, 0.9, confidence=1.0)


def test_precision_cut_asks_for_the_lower_bound_to_reach_the_target():
    # 4/4 right: observed precision 1.0, but its one-sided 95% Clopper-Pearson bound is 0.05**(1/4).
    p = [0.99, 0.95, 0.9, 0.8, 0.7, 0.6]
    right = [1, 1, 1, 1, 0, 0]
    assert precision_cut(p, right, 0.47) == 0.8
    assert precision_cut(p, right, 0.48) is None
    assert precision_cut(p, right, 1.0) is None  # no finite sample shows certainty
    many = np.r_[np.ones(100), 0]  # 100/101: the bound is 0.954
    assert precision_cut(np.linspace(1, 0, 101), many, 0.95) == 0.0


def test_precision_cut_fitted_on_one_half_holds_on_the_other():
    rng = np.random.default_rng(0)
    p = rng.beta(5, 1, 40_000)
    right = rng.random(p.size) < p  # calibrated by construction
    cut = precision_cut(p[:20_000], right[:20_000], 0.95)
    kept = p[20_000:] >= cut
    assert right[20_000:][kept].mean() >= 0.94 and kept.mean() > 0.3


def test_precision_cut_on_few_items_rarely_misses_the_target():
    # Calibrated probabilities, so a threshold t keeps precision E[p | p >= t] on new items: cuts fitted
    # on 300 held-out items, 400 times over, fall short of 0.9 about half the time on the observed
    # precision and seldom with the lower bound.
    rng = np.random.default_rng(1)
    grid = np.sort(rng.beta(4, 1, 200_000))[::-1]
    true_precision = np.cumsum(grid) / np.arange(1, grid.size + 1)  # of the set kept at grid[i]

    def short(confidence):
        misses = 0
        for _ in range(400):
            p = rng.beta(4, 1, 300)
            cut = precision_cut(p, rng.random(300) < p, 0.9, confidence=confidence)
            if cut is not None:
                misses += true_precision[np.searchsorted(-grid, -cut, side="right") - 1] < 0.9
        return misses / 400

    assert short(None) > 0.3
    assert short(0.95) < 0.1


def test_top_rows_picks_the_best_rows_of_each_item():
    scores = np.array([0.1, 0.9, 0.5, 0.7, 0.2, 0.3])
    groups = np.array(["a", "a", "a", "b", "b", "b"])
    assert top_rows(scores, groups, 1).tolist() == [1, 3]
    assert top_rows(scores, groups, 2).tolist() == [1, 2, 3, 5]


def test_calibrated_probabilities_never_claim_certainty():
    # A feature that separates perfectly: isotonic calibration alone maps the low plateau to exactly
    # 0 (no cut could then keep such a tag) and the high one to exactly 1.
    rng = np.random.default_rng(0)
    items = 200
    groups = np.repeat([f"item-{i}" for i in range(items)], 4)
    x = rng.random((len(groups), len(FEATURES))).astype(np.float32)
    y = x[:, 0] > 0.5
    ranker, raw = Ranker.fit(
        x, y, groups, emit=1, encoder_id="e", data_hash="h", config=RankerConfig(max_iter=20)
    )
    p = ranker.probability(np.r_[raw, -1.0, 2.0])
    bound = 1 / (items + 2)  # the calibration sees the top row of each item
    assert p.min() == pytest.approx(bound) and p.max() == pytest.approx(1 - bound)


def test_folds_are_stable_and_balanced():
    ids = [f"item-{i}" for i in range(5000)]
    folds = assign_folds(ids, 5)
    assert folds.tolist() == assign_folds(list(ids), 5).tolist()
    assert assign_folds(ids[:10], 5).tolist() == folds[:10].tolist()  # growing data moves no item
    assert np.bincount(folds).min() > 900


def test_fold_plan_holds_out_every_item_up_to_the_cap_and_a_stable_sample_above():
    ids = [f"item-{i}" for i in range(10_000)]
    small = FoldPlan.of(ids[:1000], 5, max_held_out=2000)
    assert small.folds == 5 and (small.fold_of >= 0).all()
    assert small.fold_of.tolist() == assign_folds(ids[:1000], 5).tolist()  # as without a cap
    big = FoldPlan.of(ids, 5, max_held_out=2000)
    # 2,000 of 10,000 held out: one fold, fitted on the other 8,000 (the share 5 folds give).
    assert big.folds == 1 and len(big.held_rows) == 2000 and len(big.rest(0)) == 8000
    middle = FoldPlan.of(ids[:5000], 5, max_held_out=2000)
    assert middle.folds == 2 and len(middle.held_rows) == 2000
    assert set(middle.held(0)) | set(middle.held(1)) == set(middle.held_rows.tolist())
    assert len(middle.rest(0)) == 5000 - len(middle.held(0))  # never-held items are always fitted on
    # Growing the data keeps most of the sample (a stable hash picks it).
    grown = FoldPlan.of([*ids, *(f"new-{i}" for i in range(1000))], 5, max_held_out=2000)
    kept = {ids[i] for i in big.held_rows} & {f"item-{i}" for i in range(10_000) if grown.fold_of[i] >= 0}
    assert len(kept) > 0.85 * 2000


def _brute_f1(probabilities, right, gold, limit, threshold, min_tags):
    total = 0.0
    for probs, rights, g in zip(probabilities, right, gold, strict=True):
        shown = [
            r
            for k, (p, r) in enumerate(zip(probs, rights, strict=True))
            if k < limit and (p >= threshold or k < min_tags)
        ]
        # A prefix: once a tag is under the threshold (past min_tags) the rest are too.
        total += 2 * sum(shown) / (len(shown) + g)
    return total / len(gold)


def test_the_shown_tags_rule_is_the_f1_optimum_on_held_out_items():
    rng = np.random.default_rng(0)
    probabilities, right, gold = [], [], []
    for _ in range(400):
        if rng.random() < 0.5:  # a sure item with two right tags
            probs = [0.9, 0.8, 0.1]
            rights = [True, bool(rng.random() < 0.8), bool(rng.random() < 0.1)]
            g = 2
        else:  # an unsure one: its best tag right 3 times in 10, nothing else
            probs = [0.3, 0.05]
            rights = [bool(rng.random() < 0.3), False]
            g = 1
        probabilities.append(probs)
        right.append(rights)
        gold.append(g)
    rule = fit_shown_tags(probabilities, right, gold, max_limit=5, compare_threshold=0.5)
    # The unsure items still show their best tag (better than nothing under F1), the 0.1 tags do not.
    assert rule.min_tags == 1 and 0.1 < rule.threshold <= 0.8 and rule.limit >= 2
    got = _brute_f1(probabilities, right, gold, rule.limit, rule.threshold, rule.min_tags)
    assert rule.held_out["f1@5"] == pytest.approx(got)
    for limit in range(1, 6):
        for threshold in (0.0, 0.05, 0.1, 0.3, 0.8, 0.9, 1.0):
            for min_tags in (0, 1):
                assert got >= _brute_f1(probabilities, right, gold, limit, threshold, min_tags) - 1e-12
    fixed = rule.held_out["fixed_top5_at_0.5"]
    assert fixed["coverage@1"] == pytest.approx(np.mean([p[0] >= 0.5 for p in probabilities]))
    assert ShownTags.from_dict(rule.to_dict()) == rule


def test_min_tags_keeps_the_first_tags_of_an_item_the_ranker_settles():
    plan = RoutePlan(tau=0.0, multi=True, emit=3, num_candidates=20, ranker_cut=0.5, llm_cut=0.5, min_tags=2)
    route = route_items([_scored(["a", "b", "c", "d"], [0.6, 0.3, 0.2, 0.1])], plan)[0]
    assert [(t.tag, t.kept) for t in final_tags(route, plan)] == [("a", True), ("b", True), ("c", False)]
    strict = RoutePlan(tau=0.0, multi=True, emit=3, num_candidates=20, ranker_cut=0.5, llm_cut=0.5)
    assert [t.kept for t in final_tags(route, strict)] == [True, False, False]


def _stored(shown: ShownTags | None, multi: bool = True):
    from types import SimpleNamespace

    from llm4tag.ranking.store_routing import StoredRanking

    metrics = {"shown": shown.to_dict()} if shown is not None else {}
    models = RankingModels(
        learned=None, ranker=SimpleNamespace(emit=5), stats=None, multi=multi, metrics=metrics
    )
    return StoredRanking(models)


def test_the_route_plan_takes_the_fitted_rule_unless_the_threshold_was_set():
    from llm4tag.ranking.store_routing import route_plan

    rule = ShownTags(limit=3, threshold=0.27, min_tags=1, rule="fitted")
    args = {"route": "auto", "threshold": 0.5, "target_precision": None, "num_candidates": 20}
    fitted = route_plan(_stored(rule), **args, threshold_set=False)
    assert (fitted.emit, fitted.ranker_cut, fitted.min_tags, fitted.llm_cut) == (3, 0.27, 1, 0.5)
    assert "fitted" in fitted.reason
    explicit = route_plan(_stored(rule), **args, threshold_set=True)
    assert (explicit.emit, explicit.ranker_cut, explicit.min_tags) == (5, 0.5, 0)
    # Models fitted before the rule existed, and single-tag stores, keep the threshold.
    for stored in (_stored(None), _stored(single_tag_rule(), multi=False)):
        plan = route_plan(stored, **args, threshold_set=False)
        assert (plan.emit, plan.ranker_cut, plan.min_tags) == (5, 0.5, 0)


# ------------------------------------------------------------------------------ real small fits
@pytest.fixture(scope="module")
def encoder():
    from llm4tag.encoder import Encoder

    return Encoder()


def _annotated(encoder, folder: str, drop_tag: str | None = None) -> tuple[Annotated, list]:
    tags = read_tags(SAMPLE / folder / "tags.jsonl")
    items = read_items(SAMPLE / folder / "train.jsonl", vocabulary={t.tag for t in tags}).items
    item_tags = [[t for t in i.tags or () if t != drop_tag] for i in items]
    keep = [k for k, t in enumerate(item_tags) if t]
    data = Annotated(
        ids=[items[k].id for k in keep],
        texts=[item_text(items[k]) for k in keep],
        vectors=encoder.encode([item_text(items[k]) for k in keep]),
        item_tags=[item_tags[k] for k in keep],
        tags=[t.tag for t in tags],
        tag_vectors=encoder.encode([tag_text(t) for t in tags]),
        encoder_id=encoder.id,
    )
    return data, items


@pytest.fixture(scope="module")
def banking(encoder):
    return _annotated(encoder, "banking77")[0]


@pytest.fixture(scope="module")
def queries():
    return read_items(SAMPLE / "banking77" / "queries.jsonl").items


@pytest.fixture(scope="module")
def fitted(banking):
    return fit_ranking(banking, GraphConfig(), LearnedConfig(), RankerConfig(folds=4))


def test_large_stores_append_a_projection_of_the_embedding_to_every_fit():
    config = LearnedConfig()
    assert for_store(config, config.embedding_dims_above).embedding_dims is None  # the whole embedding
    assert for_store(config, config.embedding_dims_above + 1).embedding_dims == config.embedding_dims
    assert for_store(LearnedConfig(embedding_dims=None), 10**6).embedding_dims is None


@pytest.mark.slow
def test_a_projected_embedding_persists_with_the_learned_recall(banking, tmp_path):
    model = fit_learned(banking, LearnedConfig(embedding_dims=16, embedding_dims_above=0))
    assert model.projection.shape == (16, banking.vectors.shape[1])
    before = model.predict(banking.texts[:20], banking.vectors[:20], 5)
    model.save(tmp_path / "learned")
    loaded = LearnedRecall.load(tmp_path / "learned", expected_encoder_id=banking.encoder_id)
    assert np.array_equal(loaded.projection, model.projection)
    after = loaded.predict(banking.texts[:20], banking.vectors[:20], 5)
    # The same tags in the same order; omikuji's reloaded weights may move a score in its 8th digit.
    assert [[t for t, _ in item] for item in after] == [[t for t, _ in item] for item in before]
    assert np.allclose(
        [s for item in after for _, s in item], [s for item in before for _, s in item], rtol=1e-6
    )


@pytest.mark.slow
def test_ranker_is_fitted_on_held_out_candidates_only(banking, fitted):
    models, held = fitted
    assert held.x.shape == (len(held.y), len(FEATURES))
    assert set(held.item_ids) == set(banking.ids)
    # Every candidate set of an item came from parts built without the item's fold.
    for fold in range(4):
        rest = np.flatnonzero(held.folds != fold)
        store = build_store(banking.subset(rest), GraphConfig())
        in_fold = [i for i, f in zip(banking.ids, held.folds, strict=True) if f == fold]
        assert not any(i in store.graph.content_pos for i in in_fold)
    assert models.learned.trained_ids == frozenset(banking.ids)  # the learned recall that serves
    assert models.ranker.trained_ids == frozenset(banking.ids)
    assert 0.5 < models.metrics["top1_precision"] <= 1.0
    assert models.ranker.emit == 1 and not models.multi


@pytest.mark.slow
def test_a_planted_leak_is_caught(banking, fitted, queries, encoder):
    models, _ = fitted
    folds = assign_folds(banking.ids, 4)
    held = [i for i, f in zip(banking.ids, folds, strict=True) if f == 0]
    # A fold whose store and learned recall were built with its own items.
    with pytest.raises(LeakError):
        fold_parts(banking, held, GraphConfig(), LearnedConfig())
    with pytest.raises(LeakError):
        LearnedRecall.fit(
            ids=banking.ids,
            texts=banking.texts,
            vectors=banking.vectors,
            item_tags=banking.item_tags,
            tags=banking.tags,
            encoder_id=banking.encoder_id,
            exclude_ids=held[:1],
        )

    def leaky_parts(rest, held_ids, graph, learned):
        return fold_parts(banking, [], graph, learned)  # fits on every item, the held-out ones too

    leaky = held_out_candidates(banking, GraphConfig(), LearnedConfig(), folds=4, parts=leaky_parts)
    honest = held_out_candidates(banking, GraphConfig(), LearnedConfig(), folds=4)
    # A leak shows: candidates built with the items' own annotations are right far more often.
    assert leaky.y.mean() > honest.y.mean()
    # Scoring training items (e.g. a test split that was copied into training) is refused.
    with pytest.raises(LeakError):
        models.score(
            build_store(banking, GraphConfig()), banking.texts[:3], banking.vectors[:3], banking.ids[:3]
        )
    vectors = encoder.encode([q.text for q in queries])
    scored = models.score(
        build_store(banking, GraphConfig()), [q.text for q in queries], vectors, [q.id for q in queries]
    )
    assert len(scored) == len(queries) and all(scored)


@pytest.mark.slow
def test_models_persist_and_are_refused_under_another_encoder(fitted, banking, queries, encoder, tmp_path):
    models, _ = fitted
    store = build_store(banking, GraphConfig())
    texts = [q.text for q in queries]
    vectors = encoder.encode(texts)
    before = models.score(store, texts, vectors)
    models.save(tmp_path / "ranking")
    loaded = RankingModels.load(tmp_path / "ranking", expected_encoder_id=encoder.id)
    after = loaded.score(store, texts, vectors)
    assert [[(s.tag, round(s.probability, 9)) for s in item] for item in before] == [
        [(s.tag, round(s.probability, 9)) for s in item] for item in after
    ]
    assert loaded.cut == models.cut and loaded.multi == models.multi
    with pytest.raises(EncoderMismatchError):
        RankingModels.load(tmp_path / "ranking", expected_encoder_id="another-encoder@0/d384")
    with pytest.raises(EncoderMismatchError):
        LearnedRecall.load(tmp_path / "ranking" / "learned", expected_encoder_id="another-encoder@0/d384")
    # A second save replaces the first whole.
    models.save(tmp_path / "ranking")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ranking"]


@pytest.mark.slow
def test_a_failed_save_leaves_the_previous_models(fitted, encoder, tmp_path, monkeypatch):
    models, _ = fitted
    models.save(tmp_path / "ranking")
    before = (tmp_path / "ranking" / "manifest.json").read_text()

    def disk_full(folder):
        raise OSError("No space left on device")

    monkeypatch.setattr(models.ranker, "save", disk_full)
    with pytest.raises(OSError):
        models.save(tmp_path / "ranking")
    assert (tmp_path / "ranking" / "manifest.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ranking"]  # no half-written folder left
    assert RankingModels.load(tmp_path / "ranking", expected_encoder_id=encoder.id).cut == models.cut


@pytest.mark.slow
def test_single_tag_top_one_accuracy_on_held_out_queries(fitted, banking, queries, encoder):
    models, _ = fitted
    store = build_store(banking, GraphConfig())
    scored = models.score(store, [q.text for q in queries], encoder.encode([q.text for q in queries]))
    right = np.mean([s[0].tag in q.tags for s, q in zip(scored, queries, strict=True)])
    graph = store.recall(encoder.encode([q.text for q in queries]))
    graph_right = np.mean([c[0].tag in q.tags for c, q in zip(graph, queries, strict=True)])
    # 400 annotated items for 77 intents: the ranker must at least not lose to graph recall's order.
    assert right >= graph_right - 0.05 and right > 0.5


@pytest.mark.slow
def test_target_precision_is_honoured_on_held_out_items(encoder):
    # Every item is held out once: one fold of ~80 items can be much harder than the rest (its top-1
    # accuracy ranged 0.66-0.81 across fold draws) and omikuji's fits are unseeded, so one fold alone
    # made this test a coin toss near the target. 0.85, not 0.9: at 0.9 a fit on 320 items often
    # shows no cut with 95% confidence, and all five folds may keep nothing.
    data, _ = _annotated(encoder, "banking77")
    folds = assign_folds(data.ids, 5, seed=1)
    kept, cuts = [], []
    for fold in range(5):
        fit_rows, held_rows = np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)
        models, _ = fit_ranking(data.subset(fit_rows), ranker=RankerConfig(folds=4), target_precision=0.85)
        cuts.append(models.cut)
        if models.cut is None:  # 320 items may not show 0.85 with 95% confidence: nothing kept
            continue
        store = build_store(data.subset(fit_rows), GraphConfig())
        held = data.subset(held_rows)
        scored = models.score(store, held.texts, held.vectors, held.ids)
        kept += [
            s[0].tag in gold
            for s, gold in zip(scored, held.item_tags, strict=True)
            if s[0].probability >= models.cut
        ]
    assert len(kept) >= 40, f"the cuts {cuts} keep {len(kept)} of {len(data.ids)} held-out items"
    # Allow the binomial noise of the accepted items.
    assert np.mean(kept) >= 0.85 - 2 * np.sqrt(0.85 * 0.15 / len(kept)), (cuts, len(kept))


@pytest.mark.slow
def test_a_tag_without_annotations_is_still_recalled_and_scored(encoder, queries):
    data, _ = _annotated(encoder, "banking77", drop_tag="card_arrival")
    assert not any("card_arrival" in t for t in data.item_tags)
    models, _ = fit_ranking(data, ranker=RankerConfig(folds=4))
    store = build_store(data, GraphConfig())
    asking = [q for q in queries if q.tags == ("card_arrival",)]
    assert asking
    scored = models.score(store, [q.text for q in asking], encoder.encode([q.text for q in asking]))
    for item in scored:
        found = [s for s in item if s.tag == "card_arrival"]
        assert found, "a tag without annotations must still reach the candidates (C2T)"
        assert "c2t" in found[0].provenance and found[0].probability > 0.0


@pytest.mark.slow
def test_multi_tag_sample_emits_several_tags(encoder):
    data, _ = _annotated(encoder, "debtags")
    models, _ = fit_ranking(data, ranker=RankerConfig(folds=3))
    assert models.multi and models.ranker.emit == 5
    store = build_store(data, GraphConfig())
    scored = models.score(store, data.texts[:2], data.vectors[:2])
    plan = RoutePlan(tau=0.0, multi=True, emit=models.emit, num_candidates=20, ranker_cut=0.0, llm_cut=0.0)
    finals = [final_tags(r, plan) for r in route_items(scored, plan)]
    assert all(len(f) == 5 and all(t.kept and t.by == "ranker" for t in f) for f in finals)
    assert all(0.0 <= t.confidence <= 1.0 for f in finals for t in f)
