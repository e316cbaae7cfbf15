"""Node-loss drill: the app on a real multi-node Ray cluster on this machine; a CPU worker node is
killed under load, a new node joins, and we count what the clients saw and what the replicas hold.

    python -m cluster.drill --out out/drill/report.json        (tiny LLM; ~3 min on 2 cores)

Nodes (ray.cluster_utils.Cluster: separate raylets, one machine): a head with 0 CPUs (Serve controller
and the HTTP proxy), one "GPU" worker (generator and calibrator; a custom resource stands in for the
GPU: this machine has none) and two CPU workers (ingress, encoder and both graph shards, one replica
of each per node). Placement comes from cluster/serve_config.cluster.yaml (its custom resources and
max_replicas_per_node), sizes and models from serve_config.cpu.yaml and the tiny LLM.

Load: one closed-loop client tagging, and feedback at a fixed rate, each request with a fresh item id.
A client retries a connection error or a 5xx (at most 5 times, backing off); a feedback is
*acknowledged* when it got a 200. Then: cpu-2 is killed without warning; later cpu-3 joins and
Serve starts the lost replicas there, which replay their shard's journal before they take traffic.
After the load: every replica of every shard is asked for every acknowledged feedback item.

The store lives on this machine's disk, which every local node shares (on a real cluster: the
ReadWriteMany volume of cluster/rayservice.yaml). Never runs `ray stop`: the cluster is private.
"""

from __future__ import annotations

import argparse
import json
import secrets
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from llm4tag.store_builder import build_store_from_files

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample" / "banking77"
DOMAIN = REPO / "configs" / "banking77.yaml"
APP = "llm4tag"
CPU_NODE = {"llm4tag_cpu_node": 100}
GPU_NODE = {"llm4tag_gpu_node": 100}
# Replicas per deployment in the drill, and the CPUs each asks for (two cores for everything).
REPLICAS = {"Ingress": 2, "Encoder": 2, "GraphRecall": 2, "Generator": 1, "Calibrator": 1}
CPUS = {"Ingress": 0.25, "Encoder": 0.5, "GraphRecall": 0.25, "Generator": 0.5, "Calibrator": 0.5}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log(message: str) -> None:
    print(f"[drill {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- set-up


def build_store(folder: Path, shards: int) -> Path:
    store = folder / "store"
    rules = SAMPLE.parent / "knowledge" / "banking77_rules.md"
    build_store_from_files(
        store, SAMPLE / "train.jsonl", SAMPLE / "tags.jsonl", shards=shards, knowledge_files=[str(rules)]
    )
    return store


DRILL_KEY = "drill-" + secrets.token_urlsafe(24)


def serve_config(folder: Path, port: int) -> Path:
    """serve_config.cpu.yaml's application with the cluster config's placement, scaled to 2 cores."""
    config = yaml.safe_load((REPO / "serve_config.cpu.yaml").read_text())
    cluster = yaml.safe_load((REPO / "cluster" / "serve_config.cluster.yaml").read_text())
    placement = {d["name"]: d for d in cluster["applications"][0]["deployments"]}
    config["proxy_location"] = "HeadOnly"  # the clients call the head; replicas live on workers
    config["http_options"].update(port=port, request_timeout_s=120)
    app = config["applications"][0]
    app["args"]["config"] = str(DOMAIN)
    app["args"]["service"]["retries"] = 3
    # Every node of the drill is this machine: one key file serves them all.
    keys = folder / "api-keys"
    keys.write_text(f"write:{DRILL_KEY}\n")
    keys.chmod(0o600)
    app["args"]["service"]["auth"] = {"keys_file": str(keys)}
    for deployment in app["deployments"]:
        name = deployment["name"]
        deployment.pop("autoscaling_config", None)
        deployment["num_replicas"] = REPLICAS[name]
        source = placement[name]
        if "health_check_period_s" in source:
            deployment["health_check_period_s"] = source["health_check_period_s"]
        if "llm4tag_cpu_node" in source["ray_actor_options"]["resources"]:
            # One replica of each CPU-side deployment per CPU node (the cluster config lets ingress
            # and encoder replicas share nodes): the kill then takes exactly one of each.
            deployment["max_replicas_per_node"] = 1
        deployment["ray_actor_options"] = {
            "num_cpus": CPUS[name],
            "resources": source["ray_actor_options"]["resources"],  # no num_gpus: no GPU here
        }
    path = folder / "serve_config.drill.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def start_cluster():
    from ray.cluster_utils import Cluster

    # Faster node-death detection than the defaults (which wait ~30 s), still tolerant of a busy CPU.
    system = {"health_check_period_ms": 1000, "health_check_failure_threshold": 5}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "gcs_server_port": free_port(),
            "include_dashboard": False,
            "_system_config": system,
        },
    )
    nodes = {
        "gpu-1": cluster.add_node(num_cpus=2, resources=GPU_NODE),
        "cpu-1": cluster.add_node(num_cpus=2, resources=CPU_NODE),
        "cpu-2": cluster.add_node(num_cpus=2, resources=CPU_NODE),
    }
    cluster.wait_for_nodes()
    return cluster, nodes


# --- the clients


class Client:
    """HTTP calls with client-side retries; counts per logical request."""

    def __init__(self, url: str, attempts: int = 6, timeout: float = 120):
        self.url, self.attempts, self.timeout = url, attempts, timeout
        self.lock = threading.Lock()
        self.counts: dict[str, Counter] = {}
        self.errors: Counter = Counter()
        self.acked: dict[str, list[str]] = {}  # feedback item id -> tags, once answered 200
        self.attempted: dict[str, list[str]] = {}

    def _count(self, kind: str, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts.setdefault(kind, Counter())[key] += n

    def post(self, kind: str, path: str, body: dict) -> bool:
        self._count(kind, "sent")
        data = json.dumps(body).encode()
        for attempt in range(self.attempts):
            if attempt:
                self._count(kind, "retry_attempts")
            wait = min(8.0, 0.5 * 2**attempt)
            try:
                headers = {"Content-Type": "application/json", "Authorization": f"Bearer {DRILL_KEY}"}
                request = urllib.request.Request(self.url + path, data=data, headers=headers)
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    response.read()
                self._count(kind, "succeeded")
                if attempt:
                    self._count(kind, "retried")
                return True
            except urllib.error.HTTPError as exc:
                exc.read()
                with self.lock:
                    self.errors[f"{kind} HTTP {exc.code}"] += 1
                if exc.code < 500:
                    break  # a 4xx is the client's fault: retrying would not help
                wait = max(wait, float(exc.headers.get("Retry-After") or 0))
            except (urllib.error.URLError, OSError) as exc:
                with self.lock:
                    self.errors[f"{kind} {type(getattr(exc, 'reason', exc)).__name__}"] += 1
            time.sleep(wait)
        self._count(kind, "failed")
        return False

    def feedback(self, item_id: str, text: str, tags: list[str]) -> None:
        with self.lock:
            self.attempted[item_id] = tags
        body = {"items": [{"id": item_id, "text": text, "tags": tags}]}
        if self.post("feedback", "/v1/feedback", body):
            with self.lock:
                self.acked[item_id] = tags

    def summary(self) -> dict:
        with self.lock:
            kinds = {
                k: {f: c.get(f, 0) for f in ("sent", "succeeded", "retried", "retry_attempts", "failed")}
                for k, c in self.counts.items()
            }
        total = {
            f: sum(k[f] for k in kinds.values())
            for f in ("sent", "succeeded", "retried", "retry_attempts", "failed")
        }
        return {"total": total, **kinds, "errors_seen": dict(self.errors)}


def run_load(client: Client, stop: threading.Event, feedback_rate: float) -> list[threading.Thread]:
    items = [json.loads(line) for line in (SAMPLE / "train.jsonl").read_text().splitlines()]
    queries = [json.loads(line) for line in (SAMPLE / "queries.jsonl").read_text().splitlines()]
    pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="feedback")

    def feedback_loop():
        n = 0
        next_at = time.monotonic()
        while not stop.is_set():
            item = items[n % len(items)]
            pool.submit(client.feedback, f"drill-fb-{n:05d}", f"{item['text']} (case {n})", item["tags"][:1])
            n += 1
            next_at += 1.0 / feedback_rate
            stop.wait(max(0.0, next_at - time.monotonic()))
        pool.shutdown(wait=True)

    def tag_loop():
        n = 0
        while not stop.is_set():
            q = queries[n % len(queries)]
            client.post("tag", "/v1/tag", {"items": [{"id": f"drill-q-{n:05d}", "text": q["text"]}]})
            n += 1

    threads = [threading.Thread(target=feedback_loop), threading.Thread(target=tag_loop)]
    for t in threads:
        t.start()
    return threads


# --- observing the cluster


def replica_counts() -> dict[str, int]:
    from ray import serve

    status = serve.status().applications.get(APP)
    if status is None:
        return {}
    return {name: d.replica_states.get("RUNNING", 0) for name, d in status.deployments.items()}


def shard_replicas(name: str, item_ids: list[str], calls: int = 40) -> dict[str, dict]:
    """Ask a shard deployment many times; Serve spreads the calls, so every replica answers."""
    from ray import serve

    handle = serve.get_deployment_handle(name, app_name=APP)
    answers = [handle.lookup.remote(item_ids) for _ in range(calls)]
    return {a["replica"]: a for a in (r.result(timeout_s=60) for r in answers)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="out/drill/report.json")
    parser.add_argument("--work", default=None, help="folder for the store and config (default: a temp one)")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--feedback-rate", type=float, default=2.0, help="feedback requests per second")
    parser.add_argument("--kill-after", type=float, default=12.0, help="seconds of load before the kill")
    parser.add_argument(
        "--join-after", type=float, default=15.0, help="seconds from the kill to the new node"
    )
    parser.add_argument("--settle", type=float, default=8.0, help="load kept after every replica is back")
    parser.add_argument(
        "--max-load", type=float, default=240.0, help="seconds of load at most (the recovery ends it sooner)"
    )
    args = parser.parse_args(argv)

    import tempfile

    import ray
    from ray import serve

    from deployments.launch import deploy, wait_ready
    from graph_store import shard_of

    started = time.monotonic()
    times: dict[str, float] = {}
    work = Path(args.work or tempfile.mkdtemp(prefix="llm4tag-drill-"))
    work.mkdir(parents=True, exist_ok=True)
    store = build_store(work, args.shards)
    times["build_store_s"] = time.monotonic() - started
    log(f"store with {args.shards} shards built in {times['build_store_s']:.1f} s")

    t0 = time.monotonic()
    cluster, nodes = start_cluster()
    try:
        ray.init(address=cluster.address, namespace="llm4tag", log_to_driver=False)
        times["cluster_start_s"] = time.monotonic() - t0
        node_names = {node.node_id: name for name, node in nodes.items()}
        t0 = time.monotonic()
        url = deploy(
            serve_config(work, free_port()),
            store=str(store),
            settings={"llm": {"model": "tiny", "batch_size": 4}},
        )
        wait_ready(url, timeout=300)
        times["deploy_s"] = time.monotonic() - t0
        shards = [f"GraphRecall{i}" for i in range(args.shards)] if args.shards > 1 else ["GraphRecall"]
        before = {s: shard_replicas(s, []) for s in shards}
        layout_before = {
            s: sorted(node_names.get(a["node"], a["node"]) for a in r.values()) for s, r in before.items()
        }
        log(f"deployed in {times['deploy_s']:.1f} s; shard replicas on {layout_before}")

        client = Client(url)
        stop = threading.Event()
        timeline: list[dict] = []
        load_started = time.monotonic()

        def mark(event: str, **extra) -> None:
            timeline.append({"t": round(time.monotonic() - load_started, 1), "event": event, **extra})
            log(f"t={timeline[-1]['t']:.1f}s {event} {extra or ''}")

        threads = run_load(client, stop, args.feedback_rate)
        mark("load started", feedback_rate=args.feedback_rate)
        stop.wait(args.kill_after)
        acked_before_kill = set(client.acked)
        cluster.remove_node(nodes["cpu-2"], allow_graceful=False)
        mark("cpu-2 killed", feedback_acked_so_far=len(acked_before_kill))
        target = {**{k: v for k, v in REPLICAS.items() if k != "GraphRecall"}, **dict.fromkeys(shards, 2)}
        joined = recovered = None
        last_counts: dict[str, int] = {}
        while time.monotonic() - load_started < args.max_load:
            counts = replica_counts()
            if counts != last_counts:
                mark("running replicas", **counts)
                last_counts = counts
            now = time.monotonic() - load_started
            if joined is None and now >= args.kill_after + args.join_after:
                nodes["cpu-3"] = cluster.add_node(num_cpus=2, resources=CPU_NODE)
                node_names[nodes["cpu-3"].node_id] = "cpu-3"
                joined = now
                mark("cpu-3 joined")
            if (
                joined is not None
                and recovered is None
                and all(counts.get(k, 0) >= v for k, v in target.items())
            ):
                recovered = now
                mark("every replica running again")
            if recovered is not None and now >= recovered + args.settle:
                break
            time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join()
        mark("load stopped (in-flight requests finished)")
        load_s = time.monotonic() - load_started

        # Every acknowledged feedback item must be in every replica of its shard, with its tags.
        acked = dict(client.acked)
        by_shard: dict[str, list[str]] = {s: [] for s in shards}
        for item_id in client.attempted:
            by_shard[shards[shard_of(item_id, args.shards)]].append(item_id)
        replicas_report, found_everywhere = {}, set()
        for shard, ids in by_shard.items():
            answers = shard_replicas(shard, ids)
            present_in_all = None
            for name, answer in answers.items():
                have = {
                    i
                    for i, tags in answer["items"].items()
                    if tags is not None and set(client.attempted[i]) <= set(tags)
                }
                present_in_all = have if present_in_all is None else present_in_all & have
                replicas_report[name] = {
                    "shard": shard,
                    "node": node_names.get(answer["node"], answer["node"]),
                    "new": name not in before[shard],
                    "contents": answer["contents"],
                    "loaded_s": answer["loaded_s"],
                    "acked_found": len(have & set(acked)),
                    "acked_of_shard": len(set(ids) & set(acked)),
                }
            found_everywhere |= present_in_all or set()
        generator = (
            serve.get_deployment_handle("Generator", app_name=APP).describe.remote().result(timeout_s=60)
        )
        missing = sorted(set(acked) - found_everywhere)
        report = {
            "nodes": "head (0 CPU: controller, proxy) + gpu-1 + cpu-1 + cpu-2; cpu-2 killed, cpu-3 joined",
            "requests": client.summary(),
            "feedback": {
                "acked": len(acked),
                "acked_before_kill": len(acked_before_kill),
                "found_in_every_replica_of_its_shard": len(found_everywhere & set(acked)),
                "missing": missing[:20],
                "written_but_not_acked": len(found_everywhere - set(acked)),
                "generator_samples": generator["samples"],
            },
            "replicas_before_kill": layout_before,
            "replicas_after": replicas_report,
            "timeline": timeline,
            "seconds": {**{k: round(v, 1) for k, v in times.items()}, "load_s": round(load_s, 1)},
        }
    finally:
        t0 = time.monotonic()
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            cluster.shutdown()
    report["seconds"]["shutdown_s"] = round(time.monotonic() - t0, 1)
    report["seconds"]["total_s"] = round(time.monotonic() - started, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: report[k] for k in ("requests", "feedback", "seconds")}, indent=2))
    return 0 if not missing else 1


if __name__ == "__main__":
    sys.exit(main())
