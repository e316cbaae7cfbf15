"""`llm4tag serve`: start (or join) a Ray cluster and deploy the HTTP service.

Registered with the `llm4tag` command through the entry-point group ``llm4tag.cli`` (pyproject.toml),
so the core's CLI names no Ray layer.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time

from ray import serve

from deployments.launch import dashboard_url, deploy, load_serve_config, post_json, wait_ready
from llm4tag.data import read_items
from llm4tag.errors import LLM4TagError
from llm4tag.service.auth import ensure_key_file
from llm4tag.service.settings import ServiceConfig


def register(verbs) -> None:
    parser = verbs.add_parser("serve", help="start (or join) a Ray cluster and deploy the HTTP service")
    parser.add_argument(
        "--config", default="serve_config.yaml", help="Serve config file (serve_config*.yaml)"
    )
    parser.add_argument(
        "--address", help="Ray cluster to join (ray://..., host:port, auto; default: RAY_ADDRESS)"
    )
    parser.add_argument("--store", help="store folder (overrides the config's args.store)")
    parser.add_argument("--model", help="LLM (overrides the config's llm.model: default, tiny or a folder)")
    parser.add_argument("--port", type=int, help="HTTP port (overrides http_options.port)")
    parser.add_argument("--metrics-port", type=int, default=8080, help="Prometheus port of a local cluster")
    parser.add_argument(
        "--demo", help="after start-up, tag the first --demo-items items of this file over HTTP"
    )
    parser.add_argument("--demo-items", type=int, default=4)
    parser.add_argument("--detach", action="store_true", help="return once deployed (needs --address)")
    parser.set_defaults(run=run)


def run(args) -> int:
    if args.detach and not (args.address or os.environ.get("RAY_ADDRESS")):
        raise LLM4TagError(
            "--detach needs a running cluster (--address or RAY_ADDRESS): a local one ends with us"
        )
    demo = read_items(args.demo).items[: args.demo_items] if args.demo else []
    for application in load_serve_config(args.config).get("applications") or []:
        auth = ServiceConfig.load((application.get("args") or {}).get("service")).auth
        written = ensure_key_file(auth)
        if written is not None:
            print(
                f"API key (scopes write, admin) written to {written} (mode 0600); send it as "
                "'Authorization: Bearer <key>' to POST /v1/feedback and /v1/admin/*",
                flush=True,
            )
    started = time.perf_counter()
    url = deploy(
        args.config,
        address=args.address,
        port=args.port,
        store=args.store,
        settings={"llm": {"model": args.model}} if args.model else None,
        metrics_port=args.metrics_port,
    )
    ready = wait_ready(url)
    summary = {
        "url": url,
        "docs": f"{url}/docs",
        "dashboard": dashboard_url(),
        "prometheus": None if args.address else f"http://127.0.0.1:{args.metrics_port}/metrics",
        "startup_s": round(time.perf_counter() - started, 1),
        "stages": ready.get("stages"),
        "routing": ready.get("routing"),
    }
    print(json.dumps(summary, indent=2), flush=True)
    if demo:
        body = {"items": [{"id": item.id, "text": item.text} for item in demo]}
        answer = post_json(f"{url}/v1/tag", body)
        for item, row in zip(demo, answer["items"], strict=True):
            tags = ", ".join(f"{t['tag']} ({t['confidence']:.2f})" for t in row["tags"]) or "(none kept)"
            print(f"{item.id}: {item.text[:70]!r} -> {tags}", flush=True)
        print(f"timings (ms) of that request: {answer['timings_ms']}", flush=True)
    if args.detach:
        return 0
    print(f"serving at {url} (dashboard {summary['dashboard']}); Ctrl-C or SIGTERM stops", flush=True)
    # Ray's own SIGTERM handler (a local cluster's node) would tear the processes down at once and
    # exit 1 with a trace; ours lets the requests in flight finish first.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    try:
        while not stop.wait(3600):
            pass
        cause = "SIGTERM"
    except KeyboardInterrupt:
        cause = "Ctrl-C"
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one does not cut the drain short
    drained_s = drain(local=not (args.address or os.environ.get("RAY_ADDRESS")))
    print(
        f"llm4tag serve: stopped on {cause}; requests in flight answered, shut down in {drained_s:.1f} s",
        flush=True,
    )
    return 0


def drain(local: bool, timeout_s: float = 600) -> float:
    """Stop serving: every application's ingress takes no new request (503) and finishes those in
    flight (asked until it says none is left, DRAINED_ANSWERS times in a row, so that every replica
    of an ingress that has several was asked), then the applications are deleted and Serve shut down
    (``local``: the whole local cluster, with Ray). Deleting at once would stop the stage deployments
    under requests still using them. Their progress logs are not shown (one line says it is done)."""
    import ray

    started = time.perf_counter()
    for name in ("ray", "ray.serve"):
        logging.getLogger(name).setLevel(logging.ERROR)
    applications = list(serve.status().applications)
    for application in applications:
        ingress, quiet = serve.get_app_handle(application), 0
        while quiet < DRAINED_ANSWERS and time.perf_counter() - started < timeout_s:
            quiet = quiet + 1 if ingress.drain.remote().result(timeout_s=30) == 0 else 0
            time.sleep(0.1)
    for application in applications:
        serve.delete(application, _blocking=True)
    if not local:
        serve.shutdown()
    # A local cluster goes whole: stopping Serve's controller first would have its pending calls
    # reported by the raylet on our output.
    ray.shutdown()
    return time.perf_counter() - started


DRAINED_ANSWERS = 5
