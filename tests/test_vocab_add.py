"""`llm4tag vocab add` on the ranked sample store: the new tag is recalled at once, in a pipeline opened
after the add and in a store opened before it (after its sync), and the ranking fitted before the
add scores it. Loads the real encoder (marker ``model``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from graph_store import open_store
from llm4tag.cli import main
from llm4tag.config import load_settings
from llm4tag.data import Item
from llm4tag.pipeline import TaggingPipeline
from llm4tag.ranking.features import FEW

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "banking77.yaml"
NEW = "mortgage_application"
ABOUT = "Applying for a mortgage or a home loan to buy a house."
ITEM = Item("q1", "I want to buy a house: how do I apply for a mortgage with you?")


def test_a_tag_added_with_vocab_add_is_recalled_at_once_and_ranked(ranked_store, tmp_path, capsys):
    folder = tmp_path / "store"
    shutil.copytree(ranked_store[0], folder)
    replica = open_store(folder)  # a process that follows the store, opened before the add
    capsys.readouterr()
    assert main(["vocab", "add", "--store", str(folder), "--tag", NEW, "--description", ABOUT]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["added"] == [NEW] and summary["tags"] == 78 and summary["snippets"] == 1

    pipeline = TaggingPipeline.open(folder, load_settings(CONFIG), load_engine=False)
    assert pipeline.tag_names[-1] == NEW
    contents, vectors = pipeline.encode([ITEM])
    recalled = {c.tag: c for c in pipeline.recall(vectors)[0]}
    assert NEW in recalled and recalled[NEW].c2t_score is not None  # C2T: the tag's own text
    scored = {s.tag: s for s in pipeline.ranking.models.score(pipeline.recaller.store, contents, vectors)[0]}
    assert NEW in scored and FEW in scored[NEW].provenance  # 0 annotations: a few-tag slot offers it
    assert 0.0 < scored[NEW].probability < 1.0
    assert pipeline.knowledge.get(f"tag:{NEW}") is not None  # its description is a domain snippet

    assert NEW not in [c.tag for c in replica.recall(vectors)[0]]
    assert replica.sync() == 1 and NEW in [c.tag for c in replica.recall(vectors)[0]]

    assert main(["vocab", "add", "--store", str(folder), "--tag", NEW]) == 2
    assert f"tag '{NEW}' is already in the store's vocabulary" in capsys.readouterr().err


def test_an_llm_stage_opened_before_the_add_names_the_tag_from_its_next_batch(ranked_store, tmp_path):
    """An LLM replica reads the vocabulary once (no graph, no encoder); before each batch it follows
    the store's tag records, so a tag added later gets its readable label and its description."""
    from graph_store import TagWatch

    folder = tmp_path / "store"
    shutil.copytree(ranked_store[0], folder)
    watch = TagWatch(folder)  # as the Generator and Calibrator replicas: opened before the read
    stage = TaggingPipeline.open(folder, load_settings(CONFIG), load_engine=False, load_graph=False)
    assert not stage.follow_vocabulary(watch, folder)
    assert main(["vocab", "add", "--store", str(folder), "--tag", NEW, "--description", ABOUT]) == 0

    assert NEW not in stage.descriptions and stage.labels.labels([NEW]) == [NEW]
    assert stage.follow_vocabulary(watch, folder)
    assert stage.descriptions[NEW] == ABOUT and stage.labels.labels([NEW]) == ["mortgage application"]
    assert stage.tag_names[-1] == NEW and NEW in stage.options.tag_names
    assert not stage.follow_vocabulary(watch, folder)  # nothing new since
