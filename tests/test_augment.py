"""`llm4tag augment` on the ranked sample store with the tiny LLM (its examples are noise: this checks
the plumbing): examples written and stored, a rerun is a no-op, a run killed mid-way completes when run
again, and a refit fits the learned recall on the examples but never holds them out. Loads the real
encoder and the tiny LLM (marker ``model``)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from llm4tag.cli import main
from llm4tag.config import load_settings
from llm4tag.ranking.models import RankingModels
from llm4tag.store_builder import refit_store_ranking
from llm4tag.synthetic import SyntheticExamples, is_synthetic

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "banking77.yaml"
TWO = ["card_arrival", "exchange_rate"]
EIGHT = [
    *TWO,
    "card_linking",
    "top_up_failed",
    "lost_or_stolen_card",
    "pin_blocked",
    "age_limit",
    "apple_pay_or_google_pay",
]


def augment(folder: Path, tags: list[str], capsys) -> dict:
    capsys.readouterr()
    argv = ["augment", "--store", str(folder), "--k", "2", "--tags", *tags, "--model", "tiny"]
    assert main([*argv, "--config", str(CONFIG)]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def check_file(store: SyntheticExamples) -> None:
    """Every line a whole record; no example id twice."""
    records = [json.loads(line) for line in store.path.read_text().splitlines()]
    ids = [r["id"] for r in records if r["kind"] == "example"]
    assert len(ids) == len(set(ids)) and store.path.read_bytes().endswith(b"\n")


def test_augment_writes_examples_once_and_a_refit_trains_on_them(ranked_store, tmp_path, capsys):
    folder = tmp_path / "store"
    shutil.copytree(ranked_store[0], folder)
    first = augment(folder, TWO, capsys)
    assert first["tags_augmented"] == 2 and first["llm_calls"] == 2
    store = SyntheticExamples(folder)
    examples = store.read()
    assert len(examples) == first["examples_written"] and 1 <= len(examples) <= 4
    assert {e.tag for e in examples} <= set(TWO) and store.asked() == dict.fromkeys(TWO, 2)
    assert all(e.model == "tiny" and e.provenance == "synthetic" and e.text.strip() for e in examples)
    check_file(store)

    before = store.path.read_bytes()
    again = augment(folder, TWO, capsys)
    assert again["llm_calls"] == 0 and again["tags_skipped"] == 2 and again["examples_written"] == 0
    assert store.path.read_bytes() == before

    # A refit fits the learned recall on them (the tags have 4 to 8 real annotations, fewer than
    # augment.min_annotations here), and none is among the held-out rows its ranker and calibration
    # are fitted on.
    settings = load_settings(CONFIG).with_overrides(
        {"ranking": {"enabled": "on", "ranker": {"folds": 3}}, "augment": {"min_annotations": 10}}
    )
    summary = refit_store_ranking(folder, settings)
    assert summary["ranking"]["synthetic_examples"] == len(examples)
    models = RankingModels.load(folder / "ranking", expected_encoder_id=ranked_store[1]["encoder"])
    assert {e.id for e in examples} <= models.learned.trained_ids
    assert models.metrics["synthetic_examples"] == len(examples)
    assert not any(is_synthetic(item.id) for item in models.held_out)

    # Without --tags: the tags under --min-annotations (none here: every tag has 4 or more).
    capsys.readouterr()
    assert main(["augment", "--store", str(folder), "--min-annotations", "4", "--model", "tiny"]) == 0
    none = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert none["tags_wanted"] == 0 and none["llm_calls"] == 0
    assert main(["augment", "--store", str(folder), "--tags", "no_such_tag"]) == 2
    assert "'no_such_tag' is not in the store's vocabulary" in capsys.readouterr().err

    assert main(["augment", "--store", str(folder), "--remove", TWO[0]]) == 0
    assert {e.tag for e in store.read()} <= {TWO[1]} and TWO[0] not in store.asked()


def test_augment_killed_mid_run_completes_when_run_again(ranked_store, tmp_path, capsys):
    folder = tmp_path / "store"
    shutil.copytree(ranked_store[0], folder)
    store = SyntheticExamples(folder)
    argv = ["augment", "--store", str(folder), "--k", "2", "--tags", *EIGHT, "--model", "tiny"]
    job = subprocess.Popen(
        [sys.executable, "-m", "llm4tag", *argv, "--config", str(CONFIG)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while not store.asked():
            assert job.poll() is None, "augment ended before its first tag was written"
            assert time.monotonic() < deadline, "no tag written within 240 s"
            time.sleep(0.05)
        assert job.poll() is None, "augment finished before it could be interrupted"
        job.send_signal(signal.SIGKILL)
        job.wait(30)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait(30)
    done = store.asked()
    assert 0 < len(done) < len(EIGHT)
    kept = store.read()

    rerun = augment(folder, EIGHT, capsys)
    assert rerun["tags_skipped"] == len(done) and rerun["llm_calls"] == len(EIGHT) - len(done)
    assert store.asked() == dict.fromkeys(EIGHT, 2)
    assert store.read()[: len(kept)] == kept  # what the killed run wrote stays as it was
    check_file(store)
