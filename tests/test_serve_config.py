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
