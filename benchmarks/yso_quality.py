"""Library-scale subject indexing (issue 28): YSO-Finna, 27,754 concepts, 2.3 per title, few titles
per concept. The shipped default, the ranker's top tags, graph recall, match, the learned recall and
Annif on the same test items, with the build's time and peak memory.

    python -m benchmarks.yso_quality --train-items 100000 --test-items 2000 --sample-only
    .venv-annif/bin/python -m benchmarks.annif_peer --data out/yso/data --datasets yso_100k   # Annif's rows
    python -m benchmarks.yso_quality --train-items 100000 --test-items 2000 [--cache /work/bench-cache]

A sample is the first ``--train-items`` of the train split in a seeded order (benchmarks/_yso.py: the
10k sample lies inside the 30k one, inside the 100k one) and the first ``--test-items`` of the test
split (``split: test``, never in a store); it is written as a data set folder, out/yso/data/<name>/
(items.jsonl.gz with both splits, tags.jsonl.gz), which ``llm4tag build --split train`` and
annif_peer.py read.

1. Build: ``llm4tag build --split train`` (the CLI as users run it: encoding, graph, knowledge bases,
   learned recall and ranker) under ``/usr/bin/time -v``: wall seconds, CPU seconds and peak memory,
   with the machine's load before and after (the machine is shared: say so beside a time). The store
   is kept (out/yso/stores/<name>); ``--rebuild`` builds it again.
2. The shipped default: ``llm4tag tag --split test`` with default settings (route: auto; without
   held-out LLM outcomes the ranker settles every item, and the store's fitted output rule says how
   many tags each shows).
3. In process, on the same test items with cached encodings: the ranker's top 10 (no cut), graph
   recall's order, match (cosine), the learned recall alone; Annif's rows from out/annif/<name>/.

Metrics over ALL test items: Acc@1 over all items, P/R/F1@5 (document-averaged: an item shown nothing
scores 0), nDCG@10, and the paper's Acc@1-3 (over items shown a tag) with Coverage@1-3; ECE of the
tags shown; 95% bootstrap intervals and the paired difference against Annif Omikuji. Writes
out/yso_quality/<name>/table.md and results.json.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks._paths import (
    OUT,
    REPO,
    add_data_arguments,
    add_rebuild_argument,
    add_seed_argument,
    benchmark_parser,
)
from benchmarks._peers import (
    ANNIF_BACKENDS,
    ANNIF_RUN,
    BASELINE,
    Methods,
    clip,
    fmt_ci,
    fmt_diff,
    read_rows,
    read_timings,
)
from benchmarks._yso import NAME, load_sample, write_items
from llm4tag.config import Settings
from llm4tag.encoded_text import item_text
from llm4tag.encoder import Encoder
from llm4tag.evaluation.tables import format_table
from llm4tag.evaluation.tagging import (
    SUBJECT_KEYS,
    calibration_pairs,
    coverage_at_k,
    expected_calibration_error,
    metric_intervals,
)
from llm4tag.ranking.store_routing import load_ranking

SHOWN = 10  # tags each method lists (nDCG@10); P/R/F1 read the first 5
KEYS = (*SUBJECT_KEYS, "acc@1", "acc@2", "acc@3")
DIFF_KEYS = ("f1@5", "acc@1_all")
ANNIF_EXTRA = (("mllm", "Annif MLLM"), ("ensemble", "Annif ensemble"))


def sample_name(train_items: int | None) -> str:
    return "yso_all" if train_items is None else f"yso_{train_items // 1000}k"


def machine_load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def timed_cli(args: list[str], log: Path) -> dict:
    """Run an ``llm4tag`` command under ``/usr/bin/time -v``; its wall and CPU seconds, peak memory,
    the JSON it printed, and the machine's load before and after."""
    before = machine_load()
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "llm4tag", *args]
    started = time.perf_counter()
    result = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    wall = time.perf_counter() - started
    log.write_text(result.stdout + "\n--- stderr ---\n" + result.stderr)
    if result.returncode != 0:
        raise SystemExit(
            f"{' '.join(args[:1])} failed ({result.returncode}); see {log}:\n{result.stderr[-2000:]}"
        )

    def field(name: str) -> float:
        found = re.search(rf"{re.escape(name)}: ([0-9.]+)", result.stderr)
        return float(found.group(1)) if found else math.nan

    printed = result.stdout[result.stdout.find("{") :] if "{" in result.stdout else "{}"
    return {
        "wall_s": round(wall, 1),
        "cpu_s": round(field("User time (seconds)") + field("System time (seconds)"), 1),
        "peak_rss_gib": round(field("Maximum resident set size (kbytes)") / 2**20, 2),
        "load_before": before,
        "load_after": machine_load(),
        "summary": json.loads(printed),
    }


def read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def method_row(label: str, gold: dict, preds: dict, baseline: dict | None) -> tuple[dict, dict]:
    intervals = metric_intervals(gold, preds, "multi", keys=KEYS)
    if baseline is not None:
        diffs = metric_intervals(gold, preds, "multi", baseline=baseline, keys=DIFF_KEYS)
        for key in DIFF_KEYS:
            intervals[key].update({k: v for k, v in diffs[key].items() if k.startswith("diff")})
    shown = {i: p[:5] for i, p in preds.items()}
    ece = expected_calibration_error(calibration_pairs(gold, shown))
    row = {"method": label}
    for key in ("acc@1_all", "p@5", "r@5", "f1@5", "ndcg@10"):
        row[key] = fmt_ci(intervals[key])
    row["f1@5 − Annif Omikuji"] = fmt_diff(intervals["f1@5"])
    for k in (1, 2, 3):
        row[f"acc@{k}"] = f"{intervals[f'acc@{k}']['value']:.4f}"
        row[f"cov@{k}"] = f"{coverage_at_k(gold, preds, k):.3f}"
    row["tags/item"] = f"{np.mean([len(p) for p in preds.values()]):.2f}"
    row["ECE (first 5)"] = f"{ece['ece']:.4f}" if ece["n"] else ""
    result = {"metrics": intervals, "ece_first5": ece["ece"], "tags_per_item": float(row["tags/item"])}
    return row, result


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__file__, __doc__)
    add_data_arguments(parser)
    parser.add_argument("--train-items", type=int, help="train sample size (default: the whole train split)")
    parser.add_argument("--test-items", type=int, default=2000)
    add_seed_argument(parser)
    parser.add_argument("--work", type=Path, default=OUT / "yso", help="samples, stores, rows")
    parser.add_argument("--annif", type=Path, default=OUT / "annif")
    parser.add_argument("--out", type=Path, default=OUT / "yso_quality")
    parser.add_argument("--config", help="settings YAML for build and tag (default: the shipped defaults)")
    add_rebuild_argument(parser)
    parser.add_argument("--sample-only", action="store_true", help="write the sample's data set folder, stop")
    args = parser.parse_args(argv)
    if not (args.data / NAME).is_dir():
        print(f"{NAME} not found under {args.data}", file=sys.stderr)
        return 2
    name = sample_name(args.train_items)
    folder = args.work / "data" / name
    items_path, tags_path = folder / "items.jsonl.gz", folder / "tags.jsonl.gz"
    if args.sample_only or not items_path.exists():
        sample = load_sample(args.data, args.train_items, args.test_items, seed=args.seed)
        write_items(items_path, sample)
        shutil.copyfile(args.data / NAME / "tags.jsonl.gz", tags_path)
        print(
            f"# {name}: {len(sample.train)} train and {len(sample.test)} test items in {folder}", flush=True
        )
        if args.sample_only:
            return 0
    settings = Settings()
    encoder = Encoder(settings.encoder)
    sample = load_sample(
        args.data,
        args.train_items,
        args.test_items,
        seed=args.seed,
        encoder=encoder,
        cache_dir=args.cache,
        encode_train=False,  # the store is built by `llm4tag build`, which encodes them itself
    )
    config = ["--config", args.config] if args.config else []
    store = args.work / "stores" / name
    out = args.out / name
    out.mkdir(parents=True, exist_ok=True)
    build_json = out / "build.json"
    if args.rebuild or not (store / "ranking" / "manifest.json").exists():
        if store.exists():
            shutil.rmtree(store)
        print(f"# building {store} (load {machine_load()})", flush=True)
        build = timed_cli(
            [
                "build",
                "--items",
                str(items_path),
                "--tags",
                str(tags_path),
                "--split",
                "train",
                "--store",
                str(store),
                *config,
            ],
            out / "build.log",
        )
        build_json.write_text(json.dumps(build, indent=2))
    build = json.loads(build_json.read_text())
    print(f"# build: {json.dumps({k: v for k, v in build.items() if k != 'summary'})}", flush=True)

    default_rows = out / "default.jsonl"
    tag_run = timed_cli(
        [
            "tag",
            "--store",
            str(store),
            "--input",
            str(items_path),
            "--split",
            "test",
            "--output",
            str(default_rows),
            *config,
        ],
        out / "tag.log",
    )
    test_ids = [i.id for i in sample.test]
    gold = {i.id: set(i.tags or ()) for i in sample.test}
    methods = Methods(test_ids)
    rows = {r["id"]: r["tags"] for r in read_jsonl(default_rows)}
    methods.add(
        "**shipped default**",
        {i: rows.get(i, []) for i in test_ids},
        build["wall_s"],
        1000 * tag_run["wall_s"] / len(test_ids),
    )

    from graph_store import open_store

    graph = open_store(store)
    ranking = load_ranking(store, encoder.id)
    if ranking is None:
        raise SystemExit(f"{store} has no ranking: the ranker's rows need one")
    models = ranking.models
    texts = [item_text(i, settings.texts.item_fields) for i in sample.test]
    vectors = sample.test_vectors
    methods.timed(
        "ranker, top 10 (no cut)",
        lambda: [
            [{"tag": s.tag, "confidence": s.probability} for s in item[:SHOWN]]
            for item in models.score(graph, texts, vectors, test_ids)
        ],
        build["wall_s"],
    )
    methods.timed(
        "graph recall (C2T + C2C2T order)",
        lambda: [
            [{"tag": c.tag, "confidence": clip(c.score / 2)} for c in cands[:SHOWN]]
            for cands in graph.recall(vectors)
        ],
        math.nan,
    )
    methods.timed(
        "match (cosine)",
        lambda: [
            [{"tag": c.tag, "confidence": clip(c.score)} for c in cands]
            for cands in graph.match(vectors, SHOWN)
        ],
        math.nan,
    )
    methods.timed(
        "learned recall alone",
        lambda: [
            [{"tag": t, "confidence": clip(s)} for t, s in pred]
            for pred in models.learned.predict(texts, vectors, SHOWN)
        ],
        models.learned.fit_seconds,
    )
    run_annif = f"{ANNIF_RUN} --data {args.work / 'data'} --datasets {name}"
    for backend, label in (*ANNIF_BACKENDS, *ANNIF_EXTRA):
        found = read_rows(args.annif / name / f"{backend}.jsonl", test_ids, SHOWN, run_annif)
        if found is not None:
            timing = read_timings(args.annif / name, backend)
            methods.add(
                label, found, timing.get("train_seconds", math.nan), timing.get("suggest_ms_per_item")
            )

    baseline = methods.rows.get(BASELINE)
    table, results = [], {}
    for label, preds in methods.rows.items():
        row, result = method_row(label, gold, preds, None if label == BASELINE else baseline)
        row["fit s"] = f"{methods.fit_s[label]:.0f}"
        row["ms/item"] = f"{methods.item_ms[label]:.1f}"
        table.append(row)
        results[label] = {
            **result,
            "fit_seconds": methods.fit_s[label],
            "ms_per_item": methods.item_ms[label],
        }
    shown = models.shown
    held_out = shown.held_out if shown else {}
    text = (
        f"## {name}: {len(sample.train):,} train items, {len(test_ids):,} test items "
        "(the same for every method)\n\n"
        + format_table(table, list(table[0]))
        + f"\n\nBuild (`llm4tag build`, {len(sample.train):,} items, encoding included): "
        f"{build['wall_s']:.0f} s wall, {build['cpu_s']:.0f} s CPU, peak memory {build['peak_rss_gib']:.2f} "
        f"GiB; load average before {build['load_before']}, after {build['load_after']}. The shipped "
        f"default's output rule, fitted on held-out folds: {shown.rule if shown else 'none'}; on the "
        f"held-out items: {json.dumps(held_out)}.\n"
    )
    print("\n" + text, flush=True)
    (out / "table.md").write_text(text)
    (out / "results.json").write_text(
        json.dumps(
            {
                "name": name,
                "train": len(sample.train),
                "test": len(test_ids),
                "build": build,
                "tag": tag_run,
                "results": results,
            },
            indent=2,
            default=str,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
