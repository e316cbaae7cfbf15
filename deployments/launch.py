"""`llm4tag serve`: start (or join) a Ray cluster and deploy the application of a Serve config file.

It reads the same file `serve run` does; per-deployment options in its `deployments` list are applied
by name (a `GraphRecall` entry applies to every shard's deployment), and relative paths in `args` are
taken relative to the config file's folder.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from pathlib import Path
from typing import Any

from graph_store.config import merged, read_yaml
from llm4tag.errors import ConfigError


def load_serve_config(path: str | os.PathLike) -> dict[str, Any]:
    from pydantic import ValidationError
    from ray.serve.schema import DeploymentSchema, ServeDeploySchema

    raw = read_yaml(path, "serve config", ConfigError)
    try:
        ServeDeploySchema.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"serve config {path}: {where}: {first['msg']}") from exc
    # Ray's schema lets unknown deployment keys through (a typo would silently do nothing).
    known = set(DeploymentSchema.model_fields)
    for a, application in enumerate(raw.get("applications") or []):
        for d, deployment in enumerate(application.get("deployments") or []):
            unknown = sorted(set(deployment) - known)
            if unknown:
                raise ConfigError(
                    f"serve config {path}: applications.{a}.deployments.{d} ({deployment.get('name')}): "
                    f"unknown option(s) {', '.join(unknown)}"
                )
    return raw


def deploy(
    config_path: str | os.PathLike,
    address: str | None = None,
    port: int | None = None,
    store: str | None = None,
    settings: dict | None = None,
    metrics_port: int | None = None,
) -> str:
    """Deploy every application of the config; returns the HTTP base URL once all replicas are up."""
    import ray
    from ray import serve

    from deployments.app import build_app

    config = load_serve_config(config_path)
    base = str(Path(config_path).resolve().parent)
    http = dict(config.get("http_options") or {})
    if port is not None:
        http["port"] = port
    address = address or os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        # Without an address, a fresh local cluster: plain ray.init() would silently join whichever
        # cluster was started last on this machine.
        local = {"_metrics_export_port": metrics_port} if metrics_port and not address else {}
        ray.init(address=address or "local", namespace="llm4tag", log_to_driver=False, **local)
    serve.start(http_options=http, proxy_location=config.get("proxy_location", "EveryNode"))
    for application in config["applications"]:
        args = dict(application.get("args") or {})
        # build_app runs here, in the driver: relative paths resolve against the config's folder.
        os.environ["LLM4TAG_BASE_DIR"] = base
        if store is not None:
            args["store"] = os.path.abspath(store)
        if settings:
            args["settings"] = merged(args.get("settings") or {}, settings)
        args["deployment_options"] = {
            d["name"]: {k: v for k, v in d.items() if k != "name"} for d in application.get("deployments", [])
        }
        serve.run(
            build_app(args),
            name=application.get("name", "default"),
            route_prefix=application.get("route_prefix", "/"),
            blocking=False,
        )
    host = http.get("host", "127.0.0.1")
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{host}:{http.get('port', 8000)}"


def post_json(url: str, body: Any, timeout: float = 600) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def wait_ready(url: str, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=30) as response:
                return json.loads(response.read())
        except Exception as exc:  # not up yet: poll until the deadline
            last = exc
            time.sleep(1)
    raise TimeoutError(f"{url}/readyz did not answer within {timeout:.0f} s: {last}")


def dashboard_url() -> str | None:
    import ray

    context = ray.get_runtime_context()
    url = getattr(context, "dashboard_url", None) or ray.worker.get_dashboard_url()
    if url and not url.startswith("http"):
        url = f"http://{url}"
    return url or None
