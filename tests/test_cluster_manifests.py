"""The cluster manifests parse, validate against Ray's own schemas, and place every deployment on a node
kind that has what it asks for (no cluster needed).

    cluster/serve_config.cluster.yaml   the Serve application (Ray's ServeDeploySchema + our app's args)
    cluster/rayservice.yaml             KubeRay RayService (serveConfigV2 = the file above) + its PVC
    cluster/ray-cluster.yaml            the cluster launcher (Ray's autoscaler schema, ray-schema.json)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from deployments.launch import load_serve_config
from llm4tag.service.app_args import AppArgs

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
STAGES = {"Ingress", "Encoder", "GraphRecall", "Generator", "Calibrator"}
ON_GPU = {"Generator", "Calibrator"}


def rayservice() -> tuple[dict, dict]:
    docs = list(yaml.safe_load_all((CLUSTER / "rayservice.yaml").read_text()))
    (service,) = [d for d in docs if d["kind"] == "RayService"]
    (claim,) = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    return service, claim


def serve_app() -> dict:
    (app,) = load_serve_config(CLUSTER / "serve_config.cluster.yaml")["applications"]
    return app


def deployments() -> dict[str, dict]:
    return {d["name"]: d for d in serve_app()["deployments"]}


def kuberay_resources(start_params: dict) -> dict[str, float]:
    """What a group's `ray start` advertises: num-cpus, num-gpus and the JSON of `resources`."""
    found = {}
    if "num-cpus" in start_params:
        found["CPU"] = float(start_params["num-cpus"])
    if "num-gpus" in start_params:
        found["GPU"] = float(start_params["num-gpus"])
    if "resources" in start_params:
        # KubeRay passes the value to `ray start --resources=` as is: a quoted JSON string.
        raw = start_params["resources"]
        assert raw.startswith('"') and raw.endswith('"'), raw
        found.update({k: float(v) for k, v in json.loads(raw[1:-1].replace('\\"', '"')).items()})
    return found


def demand(deployment: dict) -> dict[str, float]:
    options = deployment.get("ray_actor_options") or {}
    need = {
        "CPU": float(options.get("num_cpus", 1)),
        **{k: float(v) for k, v in options.get("resources", {}).items()},
    }
    if options.get("num_gpus"):
        need["GPU"] = float(options["num_gpus"])
    return need


def placement(groups: dict[str, dict[str, float]]) -> dict[str, list[str]]:
    """Deployment -> the node kinds where one replica fits (every resource it asks for is offered)."""
    return {
        name: [g for g, offer in groups.items() if all(offer.get(k, 0) >= v for k, v in demand(d).items())]
        for name, d in deployments().items()
    }


# --- the Serve application


def test_cluster_serve_config_is_valid_for_ray_and_for_the_app():
    app = serve_app()
    assert app["import_path"] == "deployments.app:build_app"
    AppArgs.load(app["args"]).load_settings()  # raises on an unknown or bad argument or setting
    assert set(deployments()) == STAGES
    # Paths on shared storage, never relative (a relative path would resolve on each node's disk).
    assert app["args"]["store"].startswith("/mnt/llm4tag/")


def test_the_cluster_application_is_the_gpu_configs():
    """The same application as serve_config.yaml (whose readiness with a ranker store and later routing
    tests/test_serve_ranked.py serves), but for the store on shared storage and more retries."""
    shipped = yaml.safe_load((REPO / "serve_config.yaml").read_text())["applications"][0]["args"]
    cluster = serve_app()["args"]
    for args in (shipped, cluster):
        args.pop("store")
        args["service"].pop("retries", None)
    assert cluster == shipped


def test_rayservice_embeds_the_cluster_serve_config(tmp_path):
    service, _ = rayservice()
    assert service["apiVersion"] == "ray.io/v1" and service["kind"] == "RayService"
    embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert embedded == yaml.safe_load((CLUSTER / "serve_config.cluster.yaml").read_text())
    path = tmp_path / "embedded.yaml"
    path.write_text(service["spec"]["serveConfigV2"])
    load_serve_config(path)  # Ray's ServeDeploySchema and our unknown-key check


# --- KubeRay


def test_rayservice_cluster_shape():
    service, claim = rayservice()
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    import ray

    assert cluster["rayVersion"] == ray.__version__  # the image must run the Ray the app was tested on
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # no replica on the head
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    for spec in [head, *groups.values()]:
        # KubeRay's CRD types rayStartParams as map[string]string.
        assert all(isinstance(v, str) for v in spec["rayStartParams"].values()), spec["rayStartParams"]
        (container,) = spec["template"]["spec"]["containers"]
        limits = container["resources"]["limits"]
        assert container["resources"]["requests"] == limits  # guaranteed QoS: no CPU theft
        if "num-cpus" in spec["rayStartParams"] and spec is not head:
            assert float(spec["rayStartParams"]["num-cpus"]) == float(limits["cpu"])
        if "num-gpus" in spec["rayStartParams"]:
            assert int(limits["nvidia.com/gpu"]) == int(spec["rayStartParams"]["num-gpus"])
        # Every pod mounts the shared volume where the store and its journals are.
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts["shared"] == "/mnt/llm4tag"
        volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
        assert volumes["shared"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    for group in groups.values():
        assert 1 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # every node writes the journals


def test_rayservice_places_each_deployment_on_its_node_kind():
    cluster = rayservice()[0]["spec"]["rayClusterConfig"]
    groups = {g["groupName"]: kuberay_resources(g["rayStartParams"]) for g in cluster["workerGroupSpecs"]}
    groups["head"] = kuberay_resources(cluster["headGroupSpec"]["rayStartParams"])
    where = placement(groups)
    for name in STAGES:
        assert where[name] == (["gpu"] if name in ON_GPU else ["cpu"]), (name, where[name])
    _min_replicas_fit(
        {
            g["groupName"]: (g["minReplicas"], kuberay_resources(g["rayStartParams"]))
            for g in cluster["workerGroupSpecs"]
        },
        where,
    )


def _min_replicas_fit(groups: dict[str, tuple[int, dict[str, float]]], where: dict[str, list[str]]) -> None:
    """At the groups' minimum size, every deployment's minimum replicas fit (one shard per GraphRecall)."""
    for group, (nodes, offer) in groups.items():
        placed = [(n, d) for n, d in deployments().items() if where[n] == [group]]
        for name, d in placed:
            low = (d.get("autoscaling_config") or {}).get("min_replicas", d.get("num_replicas", 1))
            if d.get("max_replicas_per_node"):
                assert low <= nodes * d["max_replicas_per_node"], (name, low, nodes)
        for resource in ("CPU", "GPU"):
            total = sum(
                demand(d).get(resource, 0)
                * (d.get("autoscaling_config") or {}).get("min_replicas", d.get("num_replicas", 1))
                for _, d in placed
            )
            assert total <= nodes * offer.get(resource, 0), (group, resource, total)


def test_models_come_from_object_storage_into_a_node_cache():
    cluster = rayservice()[0]["spec"]["rayClusterConfig"]
    (gpu,) = [g for g in cluster["workerGroupSpecs"] if g["groupName"] == "gpu"]
    (init,) = gpu["template"]["spec"]["initContainers"]
    assert init["command"][:4] == ["python", "-m", "cluster.storage", "sync"]
    source, dest = init["command"][4:6]
    assert source.startswith(("gs://", "s3://")) and dest == "/cache/llm4tag/models"
    (container,) = gpu["template"]["spec"]["containers"]
    assert {"name": "LLM4TAG_HOME", "value": "/cache/llm4tag"} in container["env"]


# --- the cluster launcher


@pytest.fixture(scope="module")
def launcher() -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())
    config = prepare_config(raw)  # fills Ray's defaults, as `ray up` does
    validate_config(config)  # jsonschema against ray/autoscaler/ray-schema.json, plus Ray's own checks
    return config


def test_launcher_config_validates_against_rays_schema(launcher):
    assert launcher["provider"]["type"] == "aws"
    types = launcher["available_node_types"]
    assert set(types) == {"head", "cpu_worker", "gpu_worker"}
    assert types["head"]["resources"] == {"CPU": 0}
    assert any("--num-cpus=0" in c for c in launcher["head_start_ray_commands"])


def test_launcher_places_each_deployment_on_its_node_kind(launcher):
    types = launcher["available_node_types"]
    groups = {name: {k: float(v) for k, v in t["resources"].items()} for name, t in types.items()}
    where = placement(groups)
    for name in STAGES:
        assert where[name] == (["gpu_worker"] if name in ON_GPU else ["cpu_worker"]), (name, where[name])
    _min_replicas_fit(
        {n: (t.get("min_workers", 0), groups[n]) for n, t in types.items() if n != "head"}, where
    )
    commands = " ".join(launcher["setup_commands"] + launcher["head_setup_commands"])
    assert "cluster.storage sync s3://" in commands and "/mnt/llm4tag/stores/production" in commands


# --- what is open to the network (issue 18: the dashboard's Jobs API runs code; GCS, client)

SERVE_PORT = 8000
TOKEN_ENV = [
    {"name": "RAY_AUTH_MODE", "value": "token"},
    {
        "name": "RAY_AUTH_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "llm4tag-ray-token", "key": "auth_token"}},
    },
]


def network_policy() -> dict:
    docs = list(yaml.safe_load_all((CLUSTER / "rayservice.yaml").read_text()))
    (policy,) = [d for d in docs if d["kind"] == "NetworkPolicy"]
    return policy


def ray_pod_specs(cluster: dict) -> list[dict]:
    return [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]


def test_every_ray_container_runs_with_token_authentication():
    docs = list(yaml.safe_load_all((CLUSTER / "rayservice.yaml").read_text()))
    assert not [d for d in docs if d["kind"] == "Secret"]  # the token is never in the repository
    cluster = docs[0]["spec"]["rayClusterConfig"]
    envs = [cluster["autoscalerOptions"]["env"]]
    for spec in ray_pod_specs(cluster):
        envs += [c.get("env", []) for c in spec["template"]["spec"]["containers"]]
    assert len(envs) == 4
    for env in envs:
        assert [e for e in env if e["name"].startswith("RAY_AUTH")] == TOKEN_ENV, env


def test_only_serve_is_open_to_the_network_on_kubernetes():
    policy = network_policy()
    cluster = rayservice()[0]["spec"]["rayClusterConfig"]
    selected = policy["spec"]["podSelector"]["matchLabels"]
    for spec in ray_pod_specs(cluster):  # the policy covers every Ray pod
        assert selected.items() <= spec["template"]["metadata"]["labels"].items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    for rule in policy["spec"]["ingress"]:
        ports = {p["port"] for p in rule.get("ports", [])}
        peers = rule.get("from")
        if not peers:  # from anywhere: Serve only, never all ports
            assert ports == {SERVE_PORT}, rule
        elif ports:  # from outside the cluster's pods: the operator, to the dashboard and its agent
            assert ports <= {8265, 52365}, rule
            assert [p["podSelector"]["matchLabels"] for p in peers] == [
                {"app.kubernetes.io/name": "kuberay-operator"}
            ], rule
        else:  # every port: the cluster's own pods only
            assert peers == [{"podSelector": {"matchLabels": selected}}], rule


def test_the_launcher_opens_only_serve_and_keeps_the_dashboard_on_localhost(launcher):
    start = " ".join(launcher["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start and "0.0.0.0" not in start
    # Ray's launcher adds SSH and the cluster's own traffic to these rules; nothing else is opened.
    rules = launcher["provider"]["security_group"]["IpPermissions"]
    assert [(r["FromPort"], r["ToPort"], r["IpProtocol"]) for r in rules] == [(SERVE_PORT, SERVE_PORT, "tcp")]
    options = " ".join(launcher["docker"]["run_options"])
    assert "-e RAY_AUTH_MODE=token" in options
    token_path = options.split("RAY_AUTH_TOKEN_PATH=")[1].split()[0]
    assert launcher["file_mounts"][token_path] == "~/.ray/auth_token"
