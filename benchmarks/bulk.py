"""Bulk tagging on Ray Data vs the in-process pipeline, in the same run, on synthetic items.

    python -m benchmarks.bulk --stages all --items 300            # full pipeline (tiny LLM)
    python -m benchmarks.bulk --stages recall --items 100000      # encode + graph recall only

Copies the store of the bundled BANKING77 sample (cached: benchmarks/_stores.py; or uses --store), makes
--items synthetic customer queries (sentences of the sample recombined; seeded), then times

* in process: ``TaggingPipeline.tag_rows`` (all) or ``Recaller.recall_rows`` (recall), batches of
  --batch-size, load time reported apart;
* bulk: ``cluster.bulk.run_bulk`` into a fresh output folder on a fresh local Ray cluster, end to end
  (cluster start, actor start-up and model loads included).

and prints a Markdown table. At ~0.6 items/s for the tiny LLM on 2 vCPUs, 100,000 items through the
full pipeline would take ~45 h: measure the full pipeline on a few hundred items and the recall
stage on 100,000.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from pathlib import Path

from benchmarks._paths import REPO, SAMPLE, add_cache_argument, add_rebuild_argument, benchmark_parser


def synthetic_items(n: int, seed: int = 0) -> list[dict]:
    """Customer-query-like texts: two sample clauses joined, words lightly shuffled, ids unique."""
    import numpy as np

    texts = [
        json.loads(line)["text"]
        for name in ("train.jsonl", "queries.jsonl")
        for line in (SAMPLE / "banking77" / name).read_text().splitlines()
        if line
    ]
    clauses = [c.strip() for t in texts for c in re.split(r"[.?!,]", t) if len(c.split()) >= 3]
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        a, b = rng.choice(len(clauses), 2, replace=False)
        words = f"{clauses[a]} and {clauses[b]}".split()
        j = int(rng.integers(0, len(words) - 1))
        words[j], words[j + 1] = words[j + 1], words[j]
        rows.append({"id": f"syn-{i:07d}", "text": " ".join(words)})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__file__, __doc__)
    parser.add_argument("--stages", choices=["all", "recall"], default="all")
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--batch-size", type=int, default=8, help="LLM and pipeline batch (all)")
    parser.add_argument("--recall-batch", type=int, default=256)
    parser.add_argument("--recall-actors", type=int, default=1)
    parser.add_argument("--llm-actors", type=int, default=1, help="actors per LLM stage")
    parser.add_argument("--store", help="an existing store (default: built from the BANKING77 sample)")
    parser.add_argument("--config", default=str(REPO / "configs" / "banking77.yaml"))
    parser.add_argument("--skip-in-process", action="store_true")
    add_cache_argument(parser)
    add_rebuild_argument(parser)
    args = parser.parse_args(argv)

    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    from benchmarks._stores import sample_store
    from cluster.bulk import run_bulk
    from llm4tag.config import settings_from_dict
    from llm4tag.data import Item
    from llm4tag.evaluation.tables import format_table

    data = yaml.safe_load(Path(args.config).read_text()) or {}
    data["llm"] = {**data.get("llm", {}), "model": args.model, "batch_size": args.batch_size}
    data.setdefault("pipeline", {})["batch_size"] = args.batch_size
    llm_stage = {"batch_size": args.batch_size, "actors": args.llm_actors}
    data["bulk"] = {
        "recall": {"batch_size": args.recall_batch, "actors": args.recall_actors},
        "generate": llm_stage,
        "calibrate": dict(llm_stage),
        "rows_per_file": 10_000,
    }
    settings = settings_from_dict(data)

    with tempfile.TemporaryDirectory() as tmp:
        if args.store:
            store = Path(args.store)
        else:
            store = sample_store(args.cache, rebuild=args.rebuild, copy_to=Path(tmp) / "store")
        rows = synthetic_items(args.items)
        source = Path(tmp) / "items.parquet"
        pq.write_table(pa.Table.from_pylist(rows), source)
        items = [Item(r["id"], r["text"]) for r in rows]
        results = []

        if not args.skip_in_process:
            started = time.perf_counter()
            if args.stages == "all":
                from llm4tag.pipeline import TaggingPipeline

                pipeline = TaggingPipeline.open(store, settings)
                produce = pipeline.tag_rows
            else:
                from llm4tag.recaller import Recaller

                recaller = Recaller.open(store, settings)

                def produce(items):
                    return recaller.recall_rows(items, batch_size=args.recall_batch)

            load_s = time.perf_counter() - started
            count = sum(1 for _ in produce(items))
            run_s = time.perf_counter() - started - load_s
            results.append(
                {
                    "run": "in process",
                    "items": count,
                    "load s": round(load_s, 1),
                    "tag s": round(run_s, 1),
                    "total s": round(load_s + run_s, 1),
                    "items/s (tag)": round(count / run_s, 2),
                    "items/s (total)": round(count / (load_s + run_s), 2),
                }
            )

        report = run_bulk(source, Path(tmp) / "out", store, settings, stages=args.stages)
        results.append(
            {
                "run": f"Ray Data ({args.recall_actors} recall actor(s)"
                + (f", {args.llm_actors} per LLM stage)" if args.stages == "all" else ")"),
                "items": report.tagged,
                "load s": None,
                "tag s": None,
                "total s": round(report.seconds, 1),
                "items/s (tag)": None,
                "items/s (total)": round(report.tagged / report.seconds, 2),
            }
        )
    print(f"stages: {args.stages}, items: {args.items}, model: {args.model}")
    print(format_table(results, list(results[0])))


if __name__ == "__main__":
    main()
