"""Where the milliseconds of tagging go on a store with a ranker, in process: one item at a time (what
one `/v1/tag` request with one item computes) against batches, each part timed on its own.

    python -m benchmarks.request_profile --store STORE [--items 200] [--batches 1,8,64]

Parts, in the tag flow's order (llm4tag/flow.py route_flow and tagged_rows), each timed around the
library call the pipeline makes:

    encode       the sentence encoder (Encoder.encode)
    search       every shard's faiss searches and graph look-ups (GraphStore.search)
    merge        the shards' hits merged (one shard: nothing to merge)
    learned      the learned recall: TF-IDF + embedding features, Omikuji's label trees
    features     graph recall's selection and the candidate feature rows (the rest of CandidateFeatures)
    hgb          the gradient-boosted ranker (HistGradientBoostingClassifier.predict_proba)
    calibrate    the isotonic map of its scores, and the candidates sorted
    route        the routing rule (cascade.route_items)
    rows         the output rows (flow.tagged_rows)

For each batch size: milliseconds per call (median over the calls) and per item, over --items held-out
test items of --dataset (never train items), and items/s of the whole. The Serve path adds the
stage calls and HTTP (benchmarks/serve_load.py reports them per stage at 1 client).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from benchmarks._paths import (
    OUT,
    add_data_arguments,
    add_dataset_argument,
    add_out_argument,
    benchmark_parser,
)

PARTS = ("encode", "search", "merge", "learned", "features", "hgb", "calibrate", "route", "rows")


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__file__, __doc__)
    parser.add_argument("--store", required=True, type=Path, help="a store with a fitted ranking")
    parser.add_argument("--config", type=Path, help="settings (default: the shipped config of --dataset)")
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--batches", default="1,8,64", help="batch sizes")
    add_dataset_argument(parser)
    add_data_arguments(parser, cache=False)
    add_out_argument(parser, OUT / "request_profile")
    args = parser.parse_args(argv)
    sizes = [int(b) for b in args.batches.split(",") if b.strip()]

    from llm4tag.config import load_settings
    from llm4tag.data import read_items
    from llm4tag.pipeline import TaggingPipeline

    config = args.config or Path(__file__).resolve().parents[1] / "configs" / f"{args.dataset}.yaml"
    settings = load_settings(config if config.exists() else None)
    pipeline = TaggingPipeline.open(args.store, settings, load_engine=False)
    if pipeline.ranking is None:
        parser.error(f"{args.store} has no fitted ranking")
    items = read_items(args.data / args.dataset / "items.jsonl.gz", split="test").items
    items = [items[k] for k in np.random.default_rng(0).permutation(len(items))[: args.items]]
    report = {"store": str(args.store), "dataset": args.dataset, "items": len(items), "load": os.getloadavg()}
    profile(pipeline, items[: min(8, len(items))], 1)  # warm-up: first calls load lazily
    report["batches"] = {}
    for size in sizes:
        report["batches"][size] = profile(pipeline, items, size)
    report["load_end"] = os.getloadavg()
    print_report(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"# wrote {args.out / 'report.json'}")


def profile(pipeline, items: list, size: int) -> dict:
    from graph_store.metapaths import merge_hits
    from llm4tag import flow
    from llm4tag.encoded_text import item_text
    from llm4tag.ranking.cascade import route_items
    from llm4tag.ranking.models import ScoredTag

    models = pipeline.ranking.models
    recall = pipeline.recaller.store.config.recall
    features = models.features(recall)
    options = pipeline.options
    per_call: dict[str, list[float]] = defaultdict(list)
    clock = [0.0]

    def lap(part: str) -> None:
        now = time.perf_counter()
        per_call[part].append((now - clock[0]) * 1000)
        clock[0] = now

    started = time.perf_counter()
    for start in range(0, len(items), size):
        batch = items[start : start + size]
        clock[0] = time.perf_counter()
        contents = [item_text(i, options.item_fields) for i in batch]
        vectors = pipeline.recaller.encoder.encode(contents)
        lap("encode")
        per_shard = pipeline.search(vectors)
        lap("search")
        hits = [merge_hits(list(parts), recall.c2c_search_k) for parts in zip(*per_shard, strict=True)]
        lap("merge")
        learned = models.learned.predict(contents, vectors, models.learned_k)
        lap("learned")
        sets = [
            features._one(h, select_of(features, h), lr, v)
            for h, lr, v in zip(hits, learned, np.asarray(vectors, np.float32), strict=True)
        ]
        lap("features")
        raw = models.ranker.raw(np.concatenate([s.features for s in sets]))
        lap("hgb")
        prob = models.ranker.probability(raw)
        scored, offset = [], 0
        for s in sets:
            end = offset + len(s.tags)
            order = np.argsort(-raw[offset:end], kind="stable")
            scored.append(
                [
                    ScoredTag(s.tags[i], float(prob[offset + i]), float(raw[offset + i]), s.provenance[i])
                    for i in order
                ]
            )
            offset = end
        lap("calibrate")
        routes = route_items(scored, options.plan)
        lap("route")
        routed = flow.Routed([i.id for i in batch], contents, vectors, routes)
        nothing = flow.Generated([None] * len(batch), [None] * len(batch))
        flow.tagged_rows(routed, nothing, options.plan)
        lap("rows")
    seconds = time.perf_counter() - started
    calls = len(per_call["encode"])
    return {
        "calls": calls,
        "items_per_s": len(items) / seconds,
        "ms_per_call_p50": {part: statistics.median(per_call[part]) for part in PARTS},
        "ms_per_item": {part: sum(per_call[part]) / len(items) for part in PARTS},
    }


def select_of(features, hits):
    from graph_store.metapaths import select

    return select(hits, features.tag_names, features.recall)


def print_report(report: dict) -> None:
    print(f"## request_profile: {report['items']} {report['dataset']} test items, store {report['store']}")
    print(f"load average: start {report['load']}, end {report['load_end']}")
    header = "| batch | items/s | " + " | ".join(PARTS) + " | total |"
    print(header)
    print("|" + "---|" * (len(PARTS) + 3))
    for size, r in report["batches"].items():
        calls = r["ms_per_call_p50"]
        cells = " | ".join(f"{calls[p]:.2f}" for p in PARTS)
        print(f"| {size} (ms/call, p50) | {r['items_per_s']:.0f} | {cells} | {sum(calls.values()):.1f} |")
        items = r["ms_per_item"]
        cells = " | ".join(f"{items[p]:.3f}" for p in PARTS)
        print(f"| {size} (ms/item, mean) | | {cells} | {sum(items.values()):.2f} |")


if __name__ == "__main__":
    main()
