"""Graph recall at scale on a synthetic store: build time, peak memory, latency, throughput.

    python -m benchmarks.recall                      # 1,000,000 items, 100,000 tags, 384-d (the issue)
    python -m benchmarks.recall --small              # 60,000 items, 5,000 tags: under a minute
    python -m benchmarks.recall --store /tmp/s       # also time save + load and report the size on disk
    python -m benchmarks.recall --no-similarity --similarity-sample 20000
        # build without materialised similarity edges (materialize_similarity=False), then time
        # them for 20,000 items and extrapolate: at 1M items they take ~2 ms/item, over half an hour

Data (see _synthetic.py) is a two-level Gaussian mixture with Zipf-like tag popularity; query items
are drawn the same way and are not in the store. Generating it is not part of the build time.
Prints a Markdown table and, last, one JSON line with every figure.

Targets (issue, 2-vCPU machine): single-item recall p50 <= 5 ms, p99 <= 20 ms, >= 1,000 items/s batched.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import resource
import shutil
import sys
import time
from pathlib import Path

import faiss
import numpy as np

from benchmarks._paths import add_seed_argument, benchmark_parser
from benchmarks._synthetic import make_store_data
from graph_store import GraphConfig, GraphStore, IndexConfig, RecallConfig
from graph_store.ann import VectorIndex
from graph_store.graph import ContentTagGraph

TARGETS = {"p50_ms": 5.0, "p99_ms": 20.0, "batched_items_per_s": 1000.0}
SMALL = {"items": 60_000, "tags": 5_000, "queries": 500}
WARMUP = 50


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds() -> tuple[float, float]:
    """(CPU seconds used by the whole machine, by this process) since boot / start."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:]]
    busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
    times = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), times.user + times.system


class OtherLoad:
    """CPU taken by other processes while measuring (a 2-vCPU machine shares its one core)."""

    def __enter__(self):
        self.wall, (self.busy, self.own) = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc):
        busy, own = cpu_seconds()
        self.vcpus = max(0.0, (busy - self.busy) - (own - self.own)) / (time.perf_counter() - self.wall)


def cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


@contextlib.contextmanager
def phase_timers(timings: dict[str, float]):
    """Time the phases inside GraphStore.build by wrapping what it calls (restored afterwards)."""
    orig_build = VectorIndex.__dict__["build"]
    orig_link = GraphStore._link_similar
    orig_flush = ContentTagGraph.flush
    index_names = iter(["index_contents_s", "index_tags_s"])

    def build(cls, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return orig_build.__func__(cls, *args, **kwargs)
        finally:
            timings[next(index_names, "index_other_s")] = time.perf_counter() - t0

    def link(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return orig_link(self, *args, **kwargs)
        finally:
            timings["similarity_edges_s"] = timings.get("similarity_edges_s", 0.0) + time.perf_counter() - t0

    def flush(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return orig_flush(self, *args, **kwargs)
        finally:
            timings["igraph_fold_s"] = timings.get("igraph_fold_s", 0.0) + time.perf_counter() - t0

    VectorIndex.build = classmethod(build)
    GraphStore._link_similar = link
    ContentTagGraph.flush = flush
    try:
        yield
    finally:
        VectorIndex.build = orig_build
        GraphStore._link_similar = orig_link
        ContentTagGraph.flush = orig_flush


def latencies_ms(fn, queries: np.ndarray) -> np.ndarray:
    for i in range(min(WARMUP, len(queries))):
        fn(queries[i : i + 1])
    out = np.empty(len(queries))
    for i in range(len(queries)):
        t0 = time.perf_counter()
        fn(queries[i : i + 1])
        out[i] = time.perf_counter() - t0
    return out * 1e3


def throughput(fn, queries: np.ndarray, batch: int) -> float:
    fn(queries[: min(batch, len(queries))])  # warm-up
    t0 = time.perf_counter()
    for lo in range(0, len(queries), batch):
        fn(queries[lo : lo + batch])
    return len(queries) / (time.perf_counter() - t0)


def overlap(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each row's exact ids that the approximate row also holds."""
    found = [
        len(set(a.tolist()) & set(e.tolist()) - {-1}) / len(e) for a, e in zip(approx, exact, strict=True)
    ]
    return float(np.mean(found))


def dir_size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def parse_args(argv=None) -> argparse.Namespace:
    p = benchmark_parser(__file__, __doc__)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--tags", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--queries", type=int, default=2000, help="query items (not in the store)")
    add_seed_argument(p, help="seed of the synthetic store and queries (default 0)")
    p.add_argument("--threads", type=int, default=1, help="faiss OpenMP threads (build and recall)")
    p.add_argument("--store", type=Path, help="also save the store here, load it back, and time both")
    p.add_argument("--small", action="store_true", help=f"preset: {SMALL}")
    p.add_argument("--no-similarity", action="store_true", help="materialize_similarity=False")
    p.add_argument(
        "--similarity-sample",
        type=int,
        default=0,
        help="with --no-similarity: time the similarity edges of this many items at the end, extrapolate",
    )
    p.add_argument("--no-exact", action="store_true", help="skip the comparison with exact search")
    p.add_argument("--index-kind", default=None, help="override the index kind of both indexes")
    p.add_argument("--nlist", type=int, default=None, help="override IVF nlist (both indexes)")
    p.add_argument("--nprobe", type=int, default=None, help="override IVF nprobe (both indexes)")
    p.add_argument("--encoding", choices=["flat", "sq8"], default=None, help="override IVF list encoding")
    p.add_argument("--batches", default="256,1024", help="batch sizes for throughput")
    p.add_argument("--check", action="store_true", help="exit with status 1 when a target is missed")
    args = p.parse_args(argv)
    if args.small:
        for name, value in SMALL.items():
            if getattr(args, name) == p.get_default(name):
                setattr(args, name, value)
    return args


def make_config(args) -> GraphConfig:
    overrides = {
        "kind": args.index_kind,
        "nlist": args.nlist,
        "nprobe": args.nprobe,
        "encoding": args.encoding,
    }
    overrides = {k: v for k, v in overrides.items() if v}
    return GraphConfig(
        content_index=IndexConfig(**overrides),
        tag_index=IndexConfig(**overrides),
        recall=RecallConfig(threads=args.threads),
        materialize_similarity=not args.no_similarity,
    )


def index_params(index: VectorIndex) -> dict:
    out: dict = {"kind": index.kind, "size": index.size}
    if index.kind == "ivf":
        ivf = faiss.extract_index_ivf(index.index)
        encoding = "sq8" if "ScalarQuantizer" in type(index.index).__name__ else "flat"
        out.update(nlist=ivf.nlist, nprobe=ivf.nprobe, encoding=encoding)
    return out


def measure_queries(store, queries: np.ndarray, args, res: dict) -> None:
    log(f"single-item latency over {len(queries)} queries ...")
    lat = latencies_ms(store.recall, queries)
    res["recall_p50_ms"], res["recall_p99_ms"] = np.percentile(lat, [50, 99]).tolist()
    res["recall_mean_ms"] = float(lat.mean())
    lat = latencies_ms(lambda q: store.match(q, 20), queries)
    res["match_p50_ms"], res["match_p99_ms"] = np.percentile(lat, [50, 99]).tolist()
    res["match_mean_ms"] = float(lat.mean())
    for batch in [int(b) for b in args.batches.split(",")]:
        log(f"batched throughput, batch {batch} ...")
        res[f"recall_items_per_s_b{batch}"] = throughput(store.recall, queries, batch)
        res[f"match_items_per_s_b{batch}"] = throughput(lambda q: store.match(q, 20), queries, batch)


def run(args) -> dict:
    faiss.omp_set_num_threads(args.threads)
    res: dict = {
        "machine": f"{os.cpu_count()} vCPU {cpu_name()}, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
        "items": args.items,
        "tags": args.tags,
        "dim": args.dim,
        "queries": args.queries,
        "seed": args.seed,
        "threads": args.threads,
        "materialize_similarity": not args.no_similarity,
        "loadavg_start": os.getloadavg()[0],
    }

    log(f"generating {args.items:,} items, {args.tags:,} tags, {args.dim}-d ...")
    t0 = time.perf_counter()
    data = make_store_data(args.items, args.tags, args.dim, args.queries, args.seed)
    res["generate_s"] = time.perf_counter() - t0
    res["rss_after_generate_mb"] = rss_mb()
    res["peak_rss_after_generate_mb"] = peak_rss_mb()
    queries = data.queries

    log("building ...")
    config = make_config(args)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    with OtherLoad() as other, phase_timers(timings):
        store = GraphStore.build(
            item_ids=data.item_ids,
            item_vectors=data.item_vectors,
            item_tags=data.item_tags,
            tags=data.tags,
            tag_vectors=data.tag_vectors,
            encoder_id="synthetic",
            config=config,
        )
    res["build_s"] = time.perf_counter() - t0
    res["other_cpu_during_build_vcpu"] = other.vcpus
    res.update(timings)
    res["graph_s"] = res["build_s"] - sum(
        timings.get(k, 0.0) for k in ("index_contents_s", "index_tags_s", "similarity_edges_s")
    )  # vertices, annotations, igraph folds outside the similarity phase
    res["peak_rss_after_build_mb"] = peak_rss_mb()
    res["rss_after_build_mb"] = rss_mb()
    res["stats"] = store.stats()
    res["content_index"] = index_params(store.content_index)
    res["tag_index"] = index_params(store.tag_index)
    log(f"built in {res['build_s']:.1f} s: {json.dumps(timings)}")

    with OtherLoad() as other:
        measure_queries(store, queries, args, res)
    res["other_cpu_during_queries_vcpu"] = other.vcpus
    res["peak_rss_after_queries_mb"] = peak_rss_mb()

    if not args.no_exact:
        log("exact search for comparison ...")
        rc = config.recall
        tags_k, nb_k = rc.num_candidates, rc.c2c_search_k
        _, ex_tags = faiss.knn(queries, data.tag_vectors, tags_k, metric=faiss.METRIC_INNER_PRODUCT)
        _, ex_nb = faiss.knn(queries, data.item_vectors, nb_k, metric=faiss.METRIC_INNER_PRODUCT)
        _, ap_tags = store.tag_index.search(queries, tags_k)
        _, ap_nb = store.content_index.search(queries, nb_k)
        res[f"ann_recall_tags_top{tags_k}"] = overlap(ap_tags, ex_tags)
        res[f"ann_recall_neighbours_top{nb_k}"] = overlap(ap_nb, ex_nb)
        # End to end: candidates of the same graph searched with exact (flat) indexes.
        exact_store = GraphStore(
            store.graph,
            VectorIndex(_flat(data.item_vectors), "flat"),
            VectorIndex(_flat(data.tag_vectors), "flat"),
            config,
            store.encoder_id,
        )
        approx = store.recall(queries)
        exact = exact_store.recall(queries)
        res["candidate_recall_vs_exact"] = float(
            np.mean(
                [
                    len({c.tag for c in a} & {c.tag for c in e}) / max(1, len(e))
                    for a, e in zip(approx, exact, strict=True)
                ]
            )
        )
        del exact_store
        gc.collect()

    if args.store:
        log(f"saving to {args.store} ...")
        if args.store.exists():
            shutil.rmtree(args.store)
        check = store.recall(queries[:200])
        t0 = time.perf_counter()
        store.save(args.store)
        res["save_s"] = time.perf_counter() - t0
        res["store_size_mb"] = dir_size_mb(args.store)
        del store
        gc.collect()
        log("loading ...")
        t0 = time.perf_counter()
        store = GraphStore.load(args.store, recall=RecallConfig(threads=args.threads))
        res["load_s"] = time.perf_counter() - t0
        again = store.recall(queries[:200])
        res["loaded_recall_identical"] = [[c.to_dict() for c in r] for r in check] == [
            [c.to_dict() for c in r] for r in again
        ]
        lat = latencies_ms(store.recall, queries)
        res["loaded_recall_p50_ms"], res["loaded_recall_p99_ms"] = np.percentile(lat, [50, 99]).tolist()
    if args.no_similarity and args.similarity_sample:
        n = min(args.similarity_sample, args.items)
        log(f"similarity edges of a sample of {n:,} items ...")
        t0 = time.perf_counter()
        store._link_similar(np.arange(n), data.item_vectors[:n])
        t1 = time.perf_counter()
        store.graph.flush()
        t2 = time.perf_counter()
        res["similarity_sample_items"] = n
        res["similarity_sample_s"] = t1 - t0
        res["similarity_sample_fold_s"] = t2 - t1
        res["similarity_extrapolated_s"] = (t2 - t0) * args.items / n
    res["peak_rss_mb"] = peak_rss_mb()
    res["loadavg_end"] = os.getloadavg()[0]
    return res


def _flat(vectors: np.ndarray) -> faiss.Index:
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def table(res: dict) -> str:
    batches = sorted(int(k.rsplit("_b", 1)[1]) for k in res if k.startswith("recall_items_per_s_b"))
    best = max((res[f"recall_items_per_s_b{b}"] for b in batches), default=float("nan"))

    def met(ok: bool) -> str:
        return "yes" if ok else "**no**"

    rows = [
        ("store", f"{res['items']:,} items, {res['tags']:,} tags, {res['dim']}-d, seed {res['seed']}", ""),
        (
            "machine",
            f"{res['machine']}, faiss threads {res['threads']}; CPU taken by other processes: "
            f"{res['other_cpu_during_build_vcpu']:.2f} vCPU during the build",
            "",
        ),
        (
            "indexes",
            "contents " + _describe(res["content_index"]) + "; tags " + _describe(res["tag_index"]),
            "",
        ),
        (
            "edges",
            f"{res['stats']['deterministic_edges']:,} deterministic, "
            f"{res['stats']['similarity_edges_ct']:,} c-t, {res['stats']['similarity_edges_cc']:,} c-c",
            "",
        ),
        ("generate data (not in build)", f"{res['generate_s']:.1f} s", ""),
        ("build total", f"{res['build_s']:.1f} s", ""),
        ("  index contents", f"{res.get('index_contents_s', 0):.1f} s", ""),
        ("  index tags", f"{res.get('index_tags_s', 0):.1f} s", ""),
        (
            "  similarity edges",
            f"{res.get('similarity_edges_s', 0):.1f} s"
            if res["materialize_similarity"]
            else "off"
            + (
                f" (a sample of {res['similarity_sample_items']:,} items took "
                f"{res['similarity_sample_s'] + res['similarity_sample_fold_s']:.1f} s: "
                f"≈ {res['similarity_extrapolated_s']:.0f} s for all)"
                if "similarity_sample_s" in res
                else ""
            ),
            "",
        ),
        ("  graph (vertices, annotations, igraph)", f"{res['graph_s']:.1f} s", ""),
        (
            "peak RSS after data / build / end",
            f"{res['peak_rss_after_generate_mb']:,.0f} / "
            f"{res['peak_rss_after_build_mb']:,.0f} / {res['peak_rss_mb']:,.0f} MiB",
            "",
        ),
        ("recall 1 item p50", f"{res['recall_p50_ms']:.2f} ms", f"≤ 5 ms: {met(res['recall_p50_ms'] <= 5)}"),
        (
            "recall 1 item p99",
            f"{res['recall_p99_ms']:.2f} ms",
            f"≤ 20 ms: {met(res['recall_p99_ms'] <= 20)}",
        ),
        ("recall 1 item mean", f"{res['recall_mean_ms']:.2f} ms", ""),
    ]
    for b in batches:
        rows.append(
            (
                f"recall batched ({b})",
                f"{res[f'recall_items_per_s_b{b}']:,.0f} items/s",
                f"≥ 1,000/s: {met(res[f'recall_items_per_s_b{b}'] >= 1000)}",
            )
        )
    rows.append(
        ("CPU taken by other processes meanwhile", f"{res['other_cpu_during_queries_vcpu']:.2f} vCPU", "")
    )
    rows.append(("match 1 item p50 / p99", f"{res['match_p50_ms']:.2f} / {res['match_p99_ms']:.2f} ms", ""))
    for b in batches:
        rows.append((f"match batched ({b})", f"{res[f'match_items_per_s_b{b}']:,.0f} items/s", ""))
    for key, label in (
        ("ann_recall_tags_top", "ANN vs exact: tags top-"),
        ("ann_recall_neighbours_top", "ANN vs exact: neighbours top-"),
    ):
        for k in res:
            if k.startswith(key):
                rows.append((label + k[len(key) :], f"{res[k]:.3f}", ""))
    if "candidate_recall_vs_exact" in res:
        rows.append(("ANN vs exact: recall candidates", f"{res['candidate_recall_vs_exact']:.3f}", ""))
    if "save_s" in res:
        rows.append(("save / load", f"{res['save_s']:.1f} s / {res['load_s']:.1f} s", ""))
        rows.append(("store on disk", f"{res['store_size_mb']:,.0f} MiB", ""))
        rows.append(
            (
                "loaded store: same candidates, p50 / p99",
                f"{res['loaded_recall_identical']}, {res['loaded_recall_p50_ms']:.2f} / "
                f"{res['loaded_recall_p99_ms']:.2f} ms",
                "",
            )
        )
    res["targets_met"] = bool(res["recall_p50_ms"] <= 5 and res["recall_p99_ms"] <= 20 and best >= 1000)
    lines = ["| figure | value | target |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def _describe(index: dict) -> str:
    if index["kind"] == "ivf":
        return f"ivf {index['encoding']} (nlist {index['nlist']}, nprobe {index['nprobe']})"
    return index["kind"]


def main(argv=None) -> int:
    args = parse_args(argv)
    res = run(args)
    print(table(res))
    print(json.dumps(res, default=float))
    return 1 if args.check and not res["targets_met"] else 0


if __name__ == "__main__":
    sys.exit(main())
