"""Serving a store with a fitted ranker, the production case, on every shipped configuration: the app
becomes ready with no LLM replica at all (route: auto without a cascade fit sends nothing to it, so
the LLM stages are scaled to zero), the ranker answers, feedback and the review UI's knowledge work
without an LLM replica, and a later cascade fit that routes items to the LLM is picked up by the
running app, whose LLM stages start a replica then, with no request failing for it.

The shipped configs keep their application settings (prompts layout, which LLM stages exist, write-back,
limits); only what a 2-core test machine cannot give is replaced: resources, the engine (the tiny
model on llama.cpp instead of vLLM on a GPU) and the port.
"""

from __future__ import annotations

import shutil
import time
import urllib.parse

import numpy as np
import pytest
import yaml
from conftest import IN_SCOPE, OUT_OF_SCOPE
from test_routing import ITEMS
from test_serve import ADMIN, DOMAIN, QUERIES, REPO, WRITER, call, free_port, start, write_config
from test_vocab_add import ABOUT, ITEM, NEW

from graph_store import open_store
from llm4tag.cli import main
from llm4tag.data import read_items
from llm4tag.ranking.cascade import CascadeFit
from llm4tag.ranking.routing import TauChoice
from llm4tag.ranking.store_routing import load_ranking, ranking_dir, save_cascade

pytestmark = pytest.mark.slow

HOUSE = "house_purchase"  # a second tag the test item fits, added with `llm4tag vocab add`
# What `llm4tag serve` waits for (deployments/launch.py:wait_ready); a ready app answers well within it.
START_S = 300
# The cluster manifests' application is serve_config.yaml's but for the store's path and retries
# (tests/test_cluster_manifests.py checks it), so its readiness is serve_config.yaml's.
CONFIGS = ["serve_config.cpu.yaml", "serve_config.yaml"]


def shipped(name: str, folder) -> tuple[str, bool]:
    """The shipped config with this machine's resources; whether it has a Calibrator deployment."""
    config = yaml.safe_load((REPO / name).read_text())
    config["http_options"].update(host="127.0.0.1", port=free_port())
    config["proxy_location"] = "HeadOnly"
    app = config["applications"][0]
    app["args"]["config"] = str(DOMAIN)
    app["args"]["service"]["auth"] = "off"
    # The first routed request waits for an LLM replica to start: on a busy 2-core test machine that
    # can take longer than the shipped minute.
    app["args"]["service"]["deadline_s"] = 300
    app["args"]["settings"]["llm"] = {"model": "tiny", "engine": "llamacpp", "threads": 1, "batch_size": 4}
    for deployment in app.get("deployments", []):
        deployment.pop("autoscaling_config", None)
        deployment.pop("max_replicas_per_node", None)
        deployment["num_replicas"] = 1
        deployment["ray_actor_options"] = {"num_cpus": 0.1}
    path = folder / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    layout = (app["args"]["settings"].get("prompts") or {}).get("layout", "auto")
    return str(path), layout == "paper"


def route_everything_to_the_llm(store) -> None:
    """A cascade fit as `llm4tag refit --cascade-items` saves one, whose tau sends every item to the
    LLM (no calibrated probability reaches 1)."""
    from graph_store import read_vocabulary

    models = load_ranking(store, read_vocabulary(store).encoder_id).models
    tau = TauChoice(1.0, 1.0, 0.0, "test: every item to the LLM")
    fit = CascadeFit(None, tau, np.zeros(0), np.zeros(0), {})
    save_cascade(ranking_dir(store), fit, models)


@pytest.mark.parametrize("name", CONFIGS)
def test_a_ranker_store_is_ready_on_every_shipped_config(name, ranked_store, ray_cluster, tmp_path):
    from ray import serve

    from deployments.launch import deploy, wait_ready

    store = tmp_path / "store"
    shutil.copytree(ranked_store[0], store)
    path, separate_calibrator = shipped(name, tmp_path)
    items = [{"id": i.id, "text": i.text} for i in read_items(QUERIES).items[:ITEMS]]
    url = deploy(path, store=str(store))
    try:
        started = time.monotonic()
        ready = wait_ready(url, timeout=START_S)  # what `llm4tag serve` waits on
        assert ready["ready"] is True, ready
        stages = ready["stages"]
        assert stages["generator"]["llm"].startswith("scaled to zero: route sends nothing"), stages
        assert stages["calibrator"]["llm"].startswith("scaled to zero: route sends nothing"), stages
        assert ("colocated_with" in stages["calibrator"]) is not separate_calibrator
        assert "nothing is sent to the LLM" in ready["routing"]["reason"]
        assert llm_replicas() == {"Generator": 0} | ({"Calibrator": 0} if separate_calibrator else {})
        status, _, answer = call(f"{url}/v1/tag", {"items": items})
        assert status == 200, answer
        assert {row["route"] for row in answer["items"]} == {"ranker"}
        assert all(t["by"] == "ranker" for row in answer["items"] for t in row["tags"])
        print(f"{name}: ready after {time.monotonic() - started:.1f} s")
        # Feedback's sample and the review UI's retrieved entries need no LLM replica either.
        status, _, recorded = call(
            f"{url}/v1/feedback", {"id": "fb-ranked", "text": items[0]["text"], "tags": ["card_arrival"]}
        )
        assert (status, recorded["samples"]) == (200, 1), recorded
        status, _, found = call(f"{url}/v1/knowledge?samples=fb-ranked,missing")
        assert status == 200 and list(found["samples"]) == ["fb-ranked"], found
        assert found["samples"]["fb-ranked"]["correct"] == ["card_arrival"]
        time.sleep(2)  # a replica Serve had started for them would show by now
        assert set(llm_replicas().values()) == {0}, "feedback or the knowledge page started an LLM replica"
        if name == CONFIGS[-1]:
            return  # a later fit is checked once, on the CPU config: an LLM replica start is slow

        # A later fit routes every item to the LLM: the ingress follows the store's ranking, the first
        # routed request waits for an LLM replica to start (within its deadline), and no request fails.
        route_everything_to_the_llm(store)
        deadline = time.monotonic() + 60
        routes: set[str] = set()
        while time.monotonic() < deadline:
            status, _, answer = call(f"{url}/v1/tag", {"items": items[:2]})
            assert status == 200, answer
            routes = {row["route"] for row in answer["items"]}
            if routes == {"llm"}:
                break
            time.sleep(1)
        assert routes == {"llm"}, "the running app did not follow the store's new cascade fit"
        assert all(row["generated"] for row in answer["items"])
        stages = wait_ready(url, timeout=30)["stages"]
        assert stages["generator"]["llm"] == "loaded" and stages["calibrator"]["llm"] == "loaded", stages
        assert set(llm_replicas().values()) == {1}
        # The sample written while no LLM replica was up is in the replica that started since.
        assert stages["generator"]["samples"] == 401, stages
    finally:
        serve.shutdown()


def llm_replicas() -> dict[str, int]:
    """Running replicas of the LLM deployments (Serve's status)."""
    from ray import serve

    (application,) = serve.status().applications.values()
    return {
        name: deployment.replica_states.get("RUNNING", 0)
        for name, deployment in application.deployments.items()
        if name in ("Generator", "Calibrator")
    }


@pytest.fixture(scope="module")
def served_ranked(ranked_store, ray_cluster, tmp_path_factory):
    """tests/test_serve.py's app (auth on) on a copy of the ranked store, with two ingress and two recall
    replicas."""
    from ray import serve

    folder = tmp_path_factory.mktemp("served-ranked")
    store = folder / "store"
    shutil.copytree(ranked_store[0], store)
    config = write_config(folder, free_port())
    written = yaml.safe_load(config.read_text())
    ingress = next(d for d in written["applications"][0]["deployments"] if d["name"] == "Ingress")
    ingress["num_replicas"] = 2
    config.write_text(yaml.safe_dump(written))
    yield {"url": start(config, store), "store": store}
    serve.shutdown()


def test_an_item_no_tag_fits_is_answered_with_no_tag_and_why(served_ranked):
    url = served_ranked["url"]
    status, _, answer = call(f"{url}/v1/tag", {"items": [*OUT_OF_SCOPE, IN_SCOPE]})
    assert status == 200, answer
    off, on = answer["items"][:-1], answer["items"][-1]
    assert all(row["tags"] == [] and row["no_tag"].startswith("no tag reaches the cut") for row in off), off
    assert on["tags"] and "no_tag" not in on
    form = urllib.parse.urlencode({"text": OUT_OF_SCOPE[0]["text"]}).encode()
    status, _, suggested = call(
        f"{url}/v1/projects/llm4tag/suggest", raw=form, content_type="application/x-www-form-urlencoded"
    )
    assert (status, suggested) == (200, {"results": []})


def test_a_tag_added_over_http_is_recalled_at_once_by_every_replica(served_ranked):
    """POST /v1/admin/tags on the ranked store (the production shape): the next tagging on any ingress
    replica ranks the new tag; it is durable in the store."""
    url, store = served_ranked["url"], served_ranked["store"]
    body = {"id": ITEM.id, "text": ITEM.text, "candidates": True}
    status, _, before = call(f"{url}/v1/tag", body)
    assert status == 200 and NEW not in [c["tag"] for c in before["items"][0]["candidates"]], before
    new = [{"tag": NEW, "description": ABOUT}]
    assert call(f"{url}/v1/admin/tags", new, key=WRITER)[0] == 403  # a write key is not an admin's
    status, _, added = call(f"{url}/v1/admin/tags", new)
    assert status == 200, added
    assert added["added"] == [NEW] and added["tags"] == 78 and added["snippets"] == 1
    assert "/" not in added["store"]  # no server path in an answer
    for _ in range(8):  # the proxy spreads them over both ingress replicas
        status, _, answer = call(f"{url}/v1/tag", body)
        (row,) = answer["items"]
        assert status == 200 and row["route"] == "ranker", answer
        assert NEW in [c["tag"] for c in row["candidates"]], row["candidates"]
    # `llm4tag vocab add` against the store the service runs on: the same, from the next request on.
    argv = [
        "vocab",
        "add",
        "--store",
        str(store),
        "--tag",
        HOUSE,
        "--description",
        "Buying a house or a home.",
    ]
    assert main(argv) == 0
    for _ in range(4):
        status, _, answer = call(f"{url}/v1/tag", body)
        assert status == 200 and HOUSE in [c["tag"] for c in answer["items"][0]["candidates"]], answer
    status, _, found = call(f"{url}/v1/vocabulary?tag={NEW}")
    assert status == 200 and [(t["tag"], t["new"]) for t in found["tags"]] == [(NEW, True)], found
    status, _, again = call(f"{url}/v1/admin/tags", [*new, {"tag": "another"}])
    assert (status, again["field"]) == (409, "[0].tag") and NEW in again["error"], again
    status, _, blank = call(f"{url}/v1/admin/tags", [{"tag": " "}], key=ADMIN)
    assert (status, blank["field"]) == (422, "[0].tag"), blank
    reopened = open_store(store)  # durable: in the store as a new process opens it
    assert reopened.graph.tag_names[-2:] == [NEW, HOUSE] and "another" not in reopened.graph.tag_pos
