"""Both Serve config files are valid for Ray Serve and for our application (no cluster needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from deployments.launch import load_serve_config
from llm4tag.errors import ConfigError
from llm4tag.service.app_args import AppArgs

REPO = Path(__file__).resolve().parents[1]
STAGES = {"Ingress", "Encoder", "GraphRecall", "Generator", "Calibrator"}


@pytest.mark.parametrize("name", ["serve_config.yaml", "serve_config.cpu.yaml"])
def test_config_files_validate(name):
    config = load_serve_config(REPO / name)
    (app,) = config["applications"]
    assert app["import_path"] == "deployments.app:build_app"
    # The application's arguments, as build_app reads them (paths relative to the config's folder).
    args = AppArgs.load(app["args"])
    if args.config:
        args = args.model_copy(update={"config": str(REPO / args.config)})
    parsed = args.load_settings()
    deployments = {d["name"]: d for d in app["deployments"]}
    # Judgments that continue the generation conversation run on the Generator (deployments/app.py).
    colocated = parsed.judgments_in_context
    assert set(deployments) == (STAGES - {"Calibrator"} if colocated else STAGES)
    ingress = deployments["Ingress"]
    assert ingress["max_queued_requests"] > 0 and ingress["backpressure_config"]["retry_after_s"] > 0
    gpu = name == "serve_config.yaml"
    for stage in ("Generator",) if colocated else ("Generator", "Calibrator"):
        assert (deployments[stage]["ray_actor_options"].get("num_gpus", 0) >= 1) == gpu
    if not gpu:  # the five deployments fit on a 2-CPU machine
        assert sum(d["ray_actor_options"]["num_cpus"] for d in deployments.values()) <= 2


def test_a_bad_config_names_the_problem(tmp_path):
    config = yaml.safe_load((REPO / "serve_config.cpu.yaml").read_text())
    config["applications"][0]["deployments"][0]["max_ongoing_request"] = 5
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="max_ongoing_request"):
        load_serve_config(path)
    path.write_text("applications: [")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_serve_config(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_serve_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("name", ["serve_config.yaml", "serve_config.cpu.yaml"])
def test_llm_deployments_on_demand_start_with_no_replica_and_scale_up_to_the_configured_ones(name):
    """What build_app gives the LLM deployments of a store whose route plan sends nothing to the LLM:
    Serve's autoscaling from zero, as many replicas at most as the config runs."""
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import DeploymentSchema

    from deployments.app import on_demand

    (app,) = load_serve_config(REPO / name)["applications"]
    for chosen in (d for d in app["deployments"] if d["name"] in ("Generator", "Calibrator")):
        options = on_demand({k: v for k, v in chosen.items() if k != "name"})
        DeploymentSchema.model_validate({"name": chosen["name"], **options})  # valid for Serve
        autoscaling = AutoscalingConfig(**options["autoscaling_config"])
        assert (autoscaling.min_replicas, autoscaling.initial_replicas) == (0, 0)
        most = chosen.get("num_replicas") or chosen["autoscaling_config"]["max_replicas"]
        assert autoscaling.max_replicas == most and "num_replicas" not in options
        assert options["ray_actor_options"] == chosen["ray_actor_options"]


def test_whether_a_store_routes_nothing_is_read_from_its_manifests(tmp_path):
    """routes_nothing (what build_app and the bulk job decide on, without loading the models) agrees
    with route_plan's resolution: no ranking sends everything; route auto without a cascade fit, or
    with one whose tau is 0, sends nothing; a fitted tau, route off or a number send items; a cascade
    fit of other models is ignored."""
    from llm4tag.ranking.provenance import write_manifest
    from llm4tag.ranking.store_routing import CASCADE_DIR, ranking_dir, routes_nothing

    encoder = "enc@1/d8"
    store = tmp_path / "store"
    assert not routes_nothing(store, encoder, route="auto")  # no ranking: the LLM takes every item
    folder = ranking_dir(store)
    folder.mkdir(parents=True)
    write_manifest(folder, kind="ranking", encoder_id=encoder, data_hash="a1", settings={})
    assert routes_nothing(store, encoder, route="auto")
    assert not routes_nothing(store, encoder, route="off")
    assert not routes_nothing(store, encoder, route=0.7) and routes_nothing(store, encoder, route=0.0)

    def cascade(tau: float, data_hash: str = "a1") -> None:
        (folder / CASCADE_DIR).mkdir(exist_ok=True)
        fitted = {"tau": tau, "llm_share": 0.1, "accuracy": 0.9, "reason": "test"}
        write_manifest(
            folder / CASCADE_DIR, kind="cascade", encoder_id=encoder, data_hash=data_hash, settings=fitted
        )

    cascade(0.8)
    assert not routes_nothing(store, encoder, route="auto")
    cascade(0.0)
    assert routes_nothing(store, encoder, route="auto")
    cascade(0.8, data_hash="other models")
    assert routes_nothing(store, encoder, route="auto")
