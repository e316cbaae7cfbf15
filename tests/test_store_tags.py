"""Tags added to a built store: durable through the journal, followed by every process, folded into the
next version, recallable at once; and what is refused."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import HAND_RECALL, TAG_ORDER, build_hand_store, vec

from graph_store import (
    EncoderMismatchError,
    GraphStore,
    RecallConfig,
    ShardedStore,
    StoreError,
    TagWatch,
    read_vocabulary,
)
from graph_store.journal import JOURNAL
from graph_store.metapaths import Hits, select
from llm4tag.ranking.features import FEW, CandidateFeatures, FewTags, TagStats

THETA = vec(0, 0, 0, 0, 0, 0, 1.0)  # e6: a direction no tag had, only contents


@pytest.fixture
def folder(tmp_path):
    build_hand_store().save(tmp_path / "s")
    return tmp_path / "s"


def theta_c2t(store) -> float | None:
    """Theta's C2T score for a query along theta (None: not a candidate)."""
    found = {c.tag: c for c in store.recall(THETA[None])[0]}
    return found["theta"].c2t_score if "theta" in found else None


def test_an_added_tag_is_recalled_at_once_by_every_process_and_survives_a_save(folder):
    one, two = GraphStore.load(folder), GraphStore.load(folder)
    assert theta_c2t(one) is None
    one.add_tags(["theta"], THETA[None], ["about theta"], encoder_id="hand-encoder")
    assert one.graph.tag_names == [*TAG_ORDER, "theta"]
    assert theta_c2t(one) == 1.0  # C2T: the query is the tag's own vector
    # A process that reads only the vocabulary (an LLM stage) lists it from the journal.
    assert read_vocabulary(folder).tags == [*TAG_ORDER, "theta"]
    assert read_vocabulary(folder).descriptions[-1] == "about theta"
    assert "theta" not in two.graph.tag_pos  # until it syncs (a replica syncs before each search)
    assert two.sync() == 1 and theta_c2t(two) == 1.0
    # An item annotated with the new tag after the add replays after it (journal order).
    one.record(["n1"], vec(0, 0, 0, 0, 0, 0, 0.8, 0.6)[None], [["theta"]], ["a theta item"])
    assert read_vocabulary(folder).tags == [*TAG_ORDER, "theta"]  # item records are skipped unparsed
    fresh = GraphStore.load(folder)
    assert fresh.graph.tag_names == [*TAG_ORDER, "theta"]
    assert fresh.graph.tag_descriptions[-1] == "about theta"
    assert [fresh.graph.tag_names[t] for t in fresh.graph.det_tags(fresh.graph.content_pos["n1"])] == [
        "theta"
    ]
    # The next save folds it into the version: its journal starts empty, the vocabulary lists it.
    fresh.save(folder)
    assert not [line for line in (folder / JOURNAL).read_text().splitlines()[1:] if line.strip()]
    vocabulary = read_vocabulary(folder)
    assert vocabulary.tags == [*TAG_ORDER, "theta"] and vocabulary.descriptions[-1] == "about theta"
    saved = GraphStore.load(folder)
    assert saved.tag_index.size == 7 and theta_c2t(saved) == 1.0
    assert two.sync() == 0 and theta_c2t(two) == 1.0  # two reloaded the new version


def test_replaying_a_tag_record_again_changes_nothing(folder):
    store = GraphStore.load(folder)
    store.add_tags(["theta"], THETA[None])
    record = {"kind": "tag", "tag": "theta", "description": None, "vector": THETA.tolist()}
    store._upsert([record])
    assert store.graph.num_tags == 7 and store.tag_index.size == 7


def test_an_in_memory_store_takes_tags_and_saves_them(tmp_path):
    store = build_hand_store()
    store.add_tags(["theta"], THETA[None], ["about theta"])
    assert theta_c2t(store) == 1.0
    store.save(tmp_path / "s")
    assert read_vocabulary(tmp_path / "s").tags == [*TAG_ORDER, "theta"]


@pytest.mark.parametrize(
    ("names", "vectors", "kwargs", "message"),
    [
        (["gamma"], THETA[None], {}, "tag 'gamma' is already in the store's vocabulary"),
        (["  "], THETA[None], {}, "a tag name must be a string with a non-space character"),
        (["theta", "theta"], np.stack([THETA, THETA]), {}, "tag 'theta' is given twice"),
        (["theta"], np.ones((1, 4), np.float32) / 2, {}, "tag vectors must have shape (1, 8)"),
        (["theta"], 2 * THETA[None], {}, "the vector of tag 'theta' is not a unit vector"),
        (["theta"], THETA[None], {"descriptions": ["a", "b"]}, "2 descriptions for 1 tags"),
        ([], np.zeros((0, 8), np.float32), {}, "no tags to add"),
    ],
)
def test_a_tag_that_cannot_be_added_is_refused_and_nothing_is_written(
    folder, names, vectors, kwargs, message
):
    store = GraphStore.load(folder)
    before = (folder / JOURNAL).read_bytes()
    with pytest.raises(StoreError) as error:
        store.add_tags(names, vectors, **kwargs)
    assert message in str(error.value)
    assert (folder / JOURNAL).read_bytes() == before and store.graph.num_tags == len(TAG_ORDER)


def test_vectors_of_another_encoder_are_refused(folder):
    with pytest.raises(EncoderMismatchError, match=r"encoder 'other'.*'hand-encoder'"):
        GraphStore.load(folder).add_tags(["theta"], THETA[None], encoder_id="other")


def test_a_version_that_is_not_live_refuses_tags(folder):
    first = (folder / "CURRENT").read_text().strip()
    GraphStore.load(folder).save(folder)
    with pytest.raises(StoreError, match="read-only view"):
        GraphStore.load(folder, version=first).add_tags(["theta"], THETA[None])


def test_a_caller_that_read_the_vocabulary_before_the_add_is_not_given_the_new_tag(folder):
    store = GraphStore.load(folder)
    old_names = list(store.graph.tag_names)
    store.add_tags(["theta"], THETA[None])
    store.record(["n1"], THETA[None], [["theta", "zeta"]], [None])
    hits = store.search(THETA[None], HAND_RECALL)[0]
    assert 6 in hits.tag_pos.tolist()
    tags = [c.tag for c in select(hits, old_names, HAND_RECALL)]  # no IndexError on position 6
    assert "theta" not in tags and "zeta" in tags  # n1's other tag still votes


def sharded(tmp_path) -> ShardedStore:
    ShardedStore(build_hand_store().split(2)).save(tmp_path / "sh")
    return ShardedStore.load(tmp_path / "sh")


def test_a_sharded_store_adds_the_tag_to_every_shard(tmp_path):
    store = sharded(tmp_path)
    store.add_tags(["theta"], THETA[None], ["about theta"])
    again = ShardedStore.load(tmp_path / "sh")
    assert [s.graph.tag_names[-1] for s in again.shards] == ["theta", "theta"]
    assert read_vocabulary(tmp_path / "sh").tags[-1] == "theta"
    assert theta_c2t(again) == 1.0
    with pytest.raises(StoreError, match="already in the store's vocabulary"):
        again.add_tags(["theta"], THETA[None])


def test_shards_whose_vocabularies_are_not_one_grown_list_are_refused():
    shards = build_hand_store().split(2)
    shards[0].add_tags(["theta"], THETA[None])
    shards[1].add_tags(["omega"], vec(0, 0, 0, 0, 0, 0, 0, 1.0)[None])
    with pytest.raises(StoreError, match="shards disagree on the tag vocabulary"):
        ShardedStore(shards)


def test_an_add_cut_short_between_shards_is_completed_by_adding_the_tag_again(tmp_path):
    store = sharded(tmp_path)
    store.shards[0].add_tags(["theta"], THETA[None])  # as if the process died before shard 1
    cut = ShardedStore.load(tmp_path / "sh")
    assert cut.incomplete_tags() == ["theta"] and cut.tag_names[-1] == "theta"
    other = vec(0, 0, 0, 0, 0, 0, 0, 1.0)
    with pytest.raises(StoreError, match="cut short: tags 'theta' are in some shards only"):
        cut.add_tags(["omega"], other[None])
    cut.add_tags(["theta", "omega"], np.stack([THETA, other]))
    done = ShardedStore.load(tmp_path / "sh")
    assert done.incomplete_tags() == []
    assert [s.graph.tag_names[-2:] for s in done.shards] == [["theta", "omega"]] * 2


# ------------------------------------------------------------------ a ranking fitted before the add
def test_the_ranking_statistics_follow_a_grown_vocabulary_and_offer_the_added_tag_in_the_few_slots():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(7, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    fitted = TagStats([f"t{i}" for i in range(6)], vectors[:6], np.full(6, 20.0), contents=100)
    assert fitted.following(fitted.tag_names, vectors[:6]) is fitted
    grown = fitted.following([*fitted.tag_names, "new"], vectors)
    assert (
        grown.tag_names[-1] == "new" and grown.popularity[-1] == 0 and np.allclose(grown.tag_vectors, vectors)
    )
    with pytest.raises(ValueError, match="not the one its ranking was fitted on"):
        fitted.following(["t1", "t0", "t2", "t3", "t4", "t5", "new"], vectors)
    # An item along the new tag: the searching store knew 7 tags; features over the grown statistics
    # propose it in a few slot, those over the fitted ones leave it out (no position past their end).
    item = vectors[6]
    sims = vectors @ item
    order = np.argsort(-sims, kind="stable")
    hits = Hits(tag_pos=order.astype(np.int64), tag_sims=sims[order].astype(np.float64), num_tags=7)
    recall = RecallConfig(max_c2t=1, min_c2t=1, num_candidates=1, fill=False, c2c_search_k=0)
    ranked = CandidateFeatures(grown, None, recall, few=FewTags(slots=1)).compute(["x"], item[None], [hits])[
        0
    ]
    assert "new" in ranked.tags and FEW in ranked.provenance[ranked.tags.index("new")]
    stale = CandidateFeatures(fitted, None, recall, few=FewTags(slots=1)).compute(["x"], item[None], [hits])[
        0
    ]
    assert "new" not in stale.tags


def test_the_vocabulary_read_follows_a_journal_kept_outside_the_store(folder, tmp_path):
    GraphStore.load(folder, journal_dir=tmp_path / "shared").add_tags(["theta"], THETA[None])
    assert read_vocabulary(folder).tags == TAG_ORDER  # the store folder's own journal has no record
    assert read_vocabulary(folder, tmp_path / "shared").tags == [*TAG_ORDER, "theta"]


# ------------------------------------------------------------------------------ `llm4tag vocab add`
def test_vocab_add_refuses_a_blank_name_and_a_description_beside_a_tags_file_before_opening_the_store(
    tmp_path, capsys
):
    from llm4tag.cli import main

    missing = str(tmp_path / "no-store")  # never opened: the refusals come first
    assert main(["vocab", "add", "--store", missing, "--tag", "  "]) == 2
    assert "llm4tag vocab: error: tag 1: must not be empty" in capsys.readouterr().err
    (tmp_path / "t.jsonl").write_text('{"tag": "x"}\n')
    assert (
        main(["vocab", "add", "--store", missing, "--tags", str(tmp_path / "t.jsonl"), "--description", "d"])
        == 2
    )
    assert "--description goes with --tag" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one of --tag and --tags is required
        main(["vocab", "add", "--store", missing])


def test_a_tag_watch_sees_added_tags_and_new_versions_but_not_item_writes(tmp_path, folder):
    watch = TagWatch(folder)  # what the Serve ingress asks before each answer
    assert not watch.moved()
    store = GraphStore.load(folder)
    store.record(["n1"], vec(0, 0, 0, 0, 0, 0, 0.8, 0.6)[None], [["zeta"]], ["an item"])
    assert not watch.moved()  # an item write (feedback) leaves the vocabulary as it was
    store.add_tags(["theta"], THETA[None], ["about theta"], encoder_id="hand-encoder")
    assert watch.moved() and not watch.moved()  # once per change
    store.save(folder)  # a new version made live: read the vocabulary again
    assert watch.moved() and not watch.moved()
    sh = sharded(tmp_path)
    shards_watch = TagWatch(tmp_path / "sh")
    sh.add_tags(["theta"], THETA[None], ["about theta"])
    assert shards_watch.moved()
