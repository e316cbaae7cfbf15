"""The learned ranking wired into tagging: `llm4tag build` fits it beside the store, and the one routing
rule (llm4tag/flow.py with llm4tag/ranking/cascade.py) decides the same items the same way in process
and in Serve. A real store over the BANKING77 sample, the real encoder, the tiny LLM (its answers are
noise: these tests check where items go, not how good the LLM's tags are)."""

from __future__ import annotations

import shutil

import pytest
import yaml
from test_bulk import SETTINGS as BULK
from test_bulk import _same
from test_serve import DOMAIN, QUERIES, REPO, call, free_port

from graph_store import EncoderMismatchError
from llm4tag.config import load_settings
from llm4tag.data import read_items
from llm4tag.errors import ConfigError
from llm4tag.pipeline import TaggingPipeline
from llm4tag.ranking.store_routing import load_ranking, ranking_dir

SAMPLE = REPO / "data" / "sample"
ITEMS = 8


def settings_for(route) -> object:
    # Batches of 4 everywhere (test_bulk.SETTINGS): the LLM pads and sorts within a batch, so equal
    # rows need equal batches.
    return load_settings(DOMAIN).with_overrides({**BULK, "pipeline": {"route": route, "batch_size": 4}})


def split_tau(store) -> tuple[float, dict[str, float]]:
    """A tau between the items' top probabilities, so that some are routed and some are sent."""
    pipeline = TaggingPipeline.open(store, settings_for("off"), load_engine=False)
    items = read_items(QUERIES).items[:ITEMS]
    contents, vectors = pipeline.encode(items)
    scored = pipeline.ranking.models.score(pipeline.recaller.store, contents, vectors)
    tops = {item.id: s[0].probability for item, s in zip(items, scored, strict=True)}
    ordered = sorted(set(tops.values()))
    assert len(ordered) >= 2, "the sample queries need different top probabilities"
    return ordered[len(ordered) // 2], tops


def test_build_fits_the_ranking_and_refuses_it_under_another_encoder(ranked_store, encoder):
    store, summary = ranked_store
    assert summary["ranking"]["held_out_items"] == 400 and summary["ranking"]["multi"] is False
    assert (ranking_dir(store) / "manifest.json").exists()
    assert load_ranking(store, encoder.id) is not None
    with pytest.raises(EncoderMismatchError):
        load_ranking(store, "another-encoder@0/d384")


def test_a_store_without_enough_annotations_has_no_ranking(sample_store):
    # The shared sample store was built with the defaults: 400 items < ranking.min_items.
    assert not ranking_dir(sample_store).exists()
    plan = TaggingPipeline.open(sample_store, settings_for("auto"), load_engine=False).plan
    assert not plan.ranked and plan.tau is None and "no ranking" in plan.reason
    with pytest.raises(ConfigError, match="needs a ranker"):
        TaggingPipeline.open(sample_store, settings_for(0.5), load_engine=False)


def test_routing_in_process_sends_only_the_unsure_items(ranked_store):
    store, _ = ranked_store
    tau, tops = split_tau(store)
    pipeline = TaggingPipeline.open(store, settings_for(tau))
    rows = pipeline.tag(read_items(QUERIES).items[:ITEMS], with_dropped=True)
    expected_sent = sum(p < tau for p in tops.values())
    assert 0 < expected_sent < ITEMS and pipeline.times.sent_to_llm == expected_sent
    for row in rows:
        if tops[row["id"]] >= tau:
            assert row["route"] == "ranker" and row["generated"] == []
            assert [t["by"] for t in row["tags"] + row["dropped"]] == ["ranker"]
            assert (row["tags"] + row["dropped"])[0]["confidence"] == pytest.approx(tops[row["id"]], abs=1e-6)
        else:
            assert row["route"] == "llm" and row["generated"]
            assert all(t["by"] == "llm" for t in row["tags"] + row["dropped"])
    # route: auto without held-out LLM outcomes: the ranker settles everything, and says so.
    auto = TaggingPipeline.open(store, settings_for("auto"), load_engine=False)
    assert "nothing is sent to the LLM" in auto.plan.reason
    assert {r["route"] for r in auto.tag(read_items(QUERIES).items[:ITEMS])} == {"ranker"}
    assert auto.times.sent_to_llm == 0


def test_tag_prints_one_json_document_on_a_ranked_store(ranked_store, tmp_path):
    """Omikuji's Rust core logs to file descriptor 1 when it loads a model; that must not reach the
    summary that scripts read from `llm4tag tag`'s stdout (a benchmark's parse broke on it)."""
    import json
    import subprocess
    import sys

    store, _ = ranked_store
    out = tmp_path / "rows.jsonl"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "llm4tag",
            "tag",
            "--store",
            str(store),
            "--input",
            str(QUERIES),
            "--limit",
            "3",
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        check=True,
    )
    assert json.loads(done.stdout)["items"] == 3
    assert len(out.read_text().splitlines()) == 3


def test_routing_decisions_equal_in_process_and_in_serve(ranked_store, ray_cluster, tmp_path):
    from ray import serve

    from deployments.launch import deploy, wait_ready

    store, _ = ranked_store
    tau, _ = split_tau(store)
    items = read_items(QUERIES).items[:ITEMS]
    local = TaggingPipeline.open(store, settings_for(tau)).tag(items)

    config = yaml.safe_load((REPO / "serve_config.cpu.yaml").read_text())
    config["http_options"]["port"] = free_port()
    app = config["applications"][0]
    app["args"]["config"] = str(DOMAIN)
    app["args"]["service"]["limits"] = {"max_items": ITEMS, "max_text_chars": 2000, "max_body_bytes": 65536}
    for deployment in app["deployments"]:
        deployment.pop("autoscaling_config", None)
        deployment["num_replicas"] = 1
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    served = tmp_path / "store"
    shutil.copytree(store, served)
    url = deploy(path, store=str(served), settings={"llm": BULK["llm"], "pipeline": {"route": tau}})
    try:
        wait_ready(url, timeout=300)
        status, _, answer = call(f"{url}/v1/tag", {"items": [{"id": i.id, "text": i.text} for i in items]})
    finally:
        serve.shutdown()
    assert status == 200
    assert [r["route"] for r in answer["items"]] == [r["route"] for r in local]
    for online, offline in zip(answer["items"], local, strict=True):
        assert online["generated"] == offline["generated"]
        assert [t["tag"] for t in online["tags"]] == [t["tag"] for t in offline["tags"]]
        for a, b in zip(online["tags"], offline["tags"], strict=True):
            assert a["by"] == b["by"]
            assert a["confidence"] == pytest.approx(b["confidence"], abs=0.02)


def test_routing_decisions_equal_in_process_and_in_bulk(ranked_store, ray_cluster, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cluster.bulk import run_bulk
    from cluster.bulk_files import output_files, read_output

    store, _ = ranked_store
    tau, _ = split_tau(store)
    items = read_items(QUERIES).items[:ITEMS]
    settings = settings_for(tau)
    local = {row["id"]: row for row in TaggingPipeline.open(store, settings).tag_rows(items)}
    source = tmp_path / "items.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": i.id, "text": i.text} for i in items]), source)
    report = run_bulk(source, tmp_path / "out", store, settings)
    assert report.tagged == ITEMS
    assert "route" in pq.read_schema(output_files(tmp_path / "out")[0]).names
    rows = read_output(tmp_path / "out")
    assert {r["id"]: r["route"] for r in rows} == {k: r["route"] for k, r in local.items()}
    assert {r["route"] for r in rows} == {"ranker", "llm"}
    for row in rows:
        assert _same(row, local[row["id"]]), (row, local[row["id"]])
    # Only the routed items went through the LLM actors; the ranker's rows went straight to the output.
    assert report.sent_to_llm == sum(r["route"] == "llm" for r in rows)
    assert not (tmp_path / "out" / ".routed").exists()  # kept only until the LLM pass wrote their rows


def test_refit_fits_again_on_the_grown_store(ranked_store, tmp_path, capsys):
    import json

    from llm4tag.cli import main
    from llm4tag.ranking.provenance import read_manifest

    store, _ = ranked_store
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    before = read_manifest(ranking_dir(copy))["data_hash"]
    corrections = tmp_path / "corrections.jsonl"
    row = {"id": "new-1", "text": "where is my new card", "tags": ["card_arrival"]}
    corrections.write_text(json.dumps(row))
    assert main(["feedback", "--store", str(copy), "--input", str(corrections)]) == 0
    config = tmp_path / "refit.yaml"
    config.write_text(yaml.safe_dump({"ranking": {"enabled": "on", "ranker": {"folds": 3}}}))
    capsys.readouterr()
    assert main(["refit", "--store", str(copy), "--config", str(config)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["annotated_items"] == 401 and summary["ranking"]["held_out_items"] == 401
    assert read_manifest(ranking_dir(copy))["data_hash"] != before


def test_the_cascade_is_fitted_on_held_out_llm_outcomes_and_route_auto_uses_it(ranked_store, tmp_path):
    from llm4tag.cascade_fit import fit_store_cascade
    from llm4tag.ranking.heldout_llm import OUTCOMES, read_outcomes

    store, _ = ranked_store
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    settings = settings_for("auto")
    summary = fit_store_cascade(copy, settings, 12)
    log = ranking_dir(copy) / OUTCOMES
    outcomes = read_outcomes(log)
    held = {i.id: i for i in load_ranking(copy, _encoder_id(copy)).models.held_out}
    assert summary["held_out_items"] == 12 and len(outcomes) == 12
    for outcome in outcomes.values():
        # Out-of-fold candidates only, and never the item itself among the samples its prompt showed.
        assert [s.tag for s in outcome.scored] == [s.tag for s in held[outcome.id].scored[:20]]
        assert outcome.id not in outcome.samples
        assert set(outcome.generated) <= {s.tag for s in outcome.scored}
    assert sum(bool(o.samples) for o in outcomes.values()) >= 10  # the check above is not vacuous
    ranking = load_ranking(copy, _encoder_id(copy))
    assert ranking.cascade is not None and ranking.cascade.metrics["items"] == 12
    plan = TaggingPipeline.open(copy, settings, load_engine=False).plan
    assert plan.tau == ranking.cascade.tau.tau and "fitted on held-out items" in plan.reason
    # More items later: the first 12 are read back, not run again.
    before = log.read_bytes()
    fit_store_cascade(copy, settings, 14)
    assert len(read_outcomes(log)) == 14 and log.read_bytes().startswith(before)


def _encoder_id(store) -> str:
    from graph_store import read_vocabulary

    return read_vocabulary(store).encoder_id
