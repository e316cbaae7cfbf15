"""Bulk tagging (Ray Data) on a local multi-node cluster: throughput with 1, 2 and 3 worker nodes.

    python -m benchmarks.bulk_scaling --nodes 1,2,3 --recall-items 4000 --all-items 24

For each node count: a fresh ray.cluster_utils.Cluster (a head with 0 CPUs and N worker nodes of
--cpus-per-node logical CPUs each, separate raylets on this one machine), then ``cluster.bulk.run_bulk``
with per-stage concurrency from config scaled with the nodes (``bulk.<stage>.actors = N``: one actor
per stage per node), into a fresh output folder. Two jobs per node count:

* ``recall``: encode + graph recall only, --recall-items synthetic queries (CPU-bound: the encoder);
* ``all``: the full pipeline with the tiny LLM, --all-items queries (CPU-bound: the LLM).

Items/s count the whole job (actor start-up and model loads included, as in benchmarks/bulk.py). The
store is a copy of the bundled BANKING77 sample's (cached: benchmarks/_stores.py).
This machine has 2 cores whatever the node count, so the local nodes share them: expect flat (or
falling) throughput. What the run shows is that the job spreads over the nodes and finishes; the
scaling itself needs real nodes (see the README's sizing table for projections and their basis).
"""

from __future__ import annotations

import json
import socket
import tempfile
import time
from pathlib import Path

from benchmarks._datasets import dataset_config
from benchmarks._paths import OUT, add_cache_argument, add_rebuild_argument, benchmark_parser


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def settings_for(nodes: int, model: str, batch: int):
    from llm4tag.config import settings_from_dict

    data = dataset_config("banking77")
    data["llm"] = {**data.get("llm", {}), "model": model, "batch_size": batch}
    # Per node: one actor of each stage plus Ray Data's file-listing task, which asks for a whole CPU
    # (Ray 2.60): with 0.5 CPU per actor the three stages and that task did not fit 2 logical CPUs and
    # the job waited forever ("backpressured: ResourceBudget"); 0.25 per LLM actor leaves room.
    llm_stage = {"batch_size": batch, "actors": nodes, "num_cpus": 0.25}
    data["bulk"] = {
        "recall": {"batch_size": 256, "actors": nodes, "num_cpus": 0.5},
        "generate": llm_stage,
        "calibrate": dict(llm_stage),
        "rows_per_file": 100_000,
    }
    return settings_from_dict(data)


def actor_nodes(ray) -> dict[str, int]:
    """Ray Data actors of the job per node, alive or finished (from the GCS actor table, which keeps
    dead actors with their address; the state API would need the dashboard)."""
    counts: dict[str, int] = {}
    for actor in ray._private.state.actors().values():
        if "MapWorker" in actor.get("ActorClassName", ""):
            node = actor.get("Address", {}).get("NodeID", "?")
            counts[node] = counts.get(node, 0) + 1
    return counts


def run_once(nodes: int, stages: str, source: Path, store: Path, args, out: Path) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    from cluster.bulk import run_bulk

    started = time.perf_counter()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "gcs_server_port": free_port(), "include_dashboard": False},
    )
    try:
        workers = [cluster.add_node(num_cpus=args.cpus_per_node) for _ in range(nodes)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        names = {w.node_id: f"worker-{i + 1}" for i, w in enumerate(workers)}
        settings = settings_for(nodes, args.model, args.batch_size)
        job_started = time.perf_counter()
        report = run_bulk(source, out, store, settings, stages=stages)
        job_s = time.perf_counter() - job_started
        spread = {names.get(k, "head"): v for k, v in actor_nodes(ray).items()}
    finally:
        ray.shutdown()
        cluster.shutdown()
    return {
        "nodes": nodes,
        "stage": stages,
        "items": report.tagged,
        "job s": round(job_s, 1),
        "items/s": round(report.tagged / job_s, 2),
        "cluster + job s": round(time.perf_counter() - started, 1),
        "stage actors per node": json.dumps(dict(sorted(spread.items()))),
    }


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__file__, __doc__)
    parser.add_argument("--nodes", default="1,2,3")
    parser.add_argument("--cpus-per-node", type=int, default=2)
    parser.add_argument("--recall-items", type=int, default=4000, help="0 skips the recall job")
    parser.add_argument("--all-items", type=int, default=24, help="0 skips the full-pipeline job")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=Path, default=OUT / "bulk_scaling" / "results.json", help="a JSON file")
    add_cache_argument(parser)
    add_rebuild_argument(parser)
    args = parser.parse_args(argv)

    import pyarrow as pa
    import pyarrow.parquet as pq

    from benchmarks._stores import sample_store
    from benchmarks.bulk import synthetic_items
    from llm4tag.evaluation.tables import format_table

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        store = sample_store(args.cache, rebuild=args.rebuild, copy_to=Path(tmp) / "store")
        jobs = [("recall", args.recall_items), ("all", args.all_items)]
        for stages, count in jobs:
            if count <= 0:
                continue
            source = Path(tmp) / f"items-{stages}.parquet"
            pq.write_table(pa.Table.from_pylist(synthetic_items(count)), source)
            for nodes in [int(n) for n in args.nodes.split(",")]:
                out = Path(tmp) / f"out-{stages}-{nodes}"
                row = run_once(nodes, stages, source, store, args, out)
                print(json.dumps(row), flush=True)
                results.append(row)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"model: {args.model}, {args.cpus_per_node} logical CPUs per node, on a 2-core machine")
    print(format_table(results, list(results[0])))


if __name__ == "__main__":
    main()
