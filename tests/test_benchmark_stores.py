"""The benchmarks' store cache (benchmarks/_stores.py), its pure logic: what the key covers, and the
working copies a script may write into (no store is built here: no model, no Ray)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks._stores import RECORD, store_key, working_copy
from llm4tag.config import Settings
from llm4tag.data import Item, Tag

TRAIN = [Item("a", "first text", ("x",)), Item("b", "second text", ("y", "x"))]
TAGS = [Tag("x", "the x tag"), Tag("y")]
VECTORS = np.eye(2, 4, dtype=np.float32)
ENCODER = SimpleNamespace(id="encoder@1/d4")  # store_key reads only the encoder's id


def key(settings=None, train=TRAIN, tags=TAGS, encoder=ENCODER, vectors=VECTORS) -> str:
    return store_key(train, tags, settings or Settings(), encoder, vectors, vectors[:2], ())


def test_the_key_covers_what_the_build_reads_and_nothing_that_only_tagging_reads():
    base = key()
    assert key() == base
    for tagging_only in (
        {"llm": {"model": "tiny"}},
        {"prompts": {"layout": "paper"}},
        {"pipeline": {"route": 0.0, "threshold": 0.7, "num_samples": 0, "batch_size": 4}},
        {"bulk": {"rows_per_file": 10}},
    ):
        assert key(Settings().with_overrides(tagging_only)) == base, tagging_only
    for build in (
        {"graph": {"materialize_similarity": False}},
        {"graph": {"recall": {"num_candidates": 10}}},
        {"ranking": {"enabled": "off"}},
        {"ranking": {"ranker": {"folds": 3}}},
        {"pipeline": {"mode": "multi"}},
        {"texts": {"tag_description_chars": 10}},
    ):
        assert key(Settings().with_overrides(build)) != base, build
    assert key(train=[TRAIN[0], Item("b", "second text", ("y",))]) != base
    assert key(tags=[TAGS[0], Tag("y", "now described")]) != base
    assert key(encoder=SimpleNamespace(id="encoder@2/d4")) != base
    assert key(vectors=VECTORS * 0.5) != base


def _cached(folder, build_id: str):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "graph.bin").write_text(build_id)
    (folder / RECORD).write_text(json.dumps({"build_id": build_id}))
    return folder


def test_a_working_copy_is_made_once_and_never_of_another_build(tmp_path):
    cached = _cached(tmp_path / "cache" / "banking77-abc", "first")
    copy = tmp_path / "out" / "banking77" / "store"
    assert working_copy(cached, copy) == copy
    assert (copy / "graph.bin").read_text() == "first"
    (copy / "cascade").mkdir()  # what the script wrote into its copy stays
    assert working_copy(cached, copy) == copy and (copy / "cascade").is_dir()
    _cached(cached, "rebuilt")
    with pytest.raises(SystemExit, match="copy of another build"):
        working_copy(cached, copy)
    older = tmp_path / "old" / "store"  # a copy from before stores were cached: used as it is
    older.mkdir(parents=True)
    assert working_copy(cached, older) == older and not (older / RECORD).exists()
