"""Pipeline speed on this machine: items/s and LLM tokens per item, per stage, for a model.

    python -m benchmarks.pipeline [--model default|tiny|DIR] [--engine transformers|vllm] [--items 16]

A store and knowledge bases from the bundled BANKING77 sample (or --train/--tags/--queries; built once
and cached: benchmarks/_stores.py),
warms the engine up on one batch, then tags --items held-out queries with the full pipeline
(recall -> generation with retrieved knowledge -> calibration) and prints a Markdown table.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from benchmarks._paths import (
    REPO,
    SAMPLE,
    SAMPLE_RULES,
    add_cache_argument,
    add_rebuild_argument,
    benchmark_parser,
)

BANKING77 = SAMPLE / "banking77"


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__file__, __doc__)
    parser.add_argument("--model", default="default")
    parser.add_argument("--engine", default="transformers")
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--train", type=Path, default=BANKING77 / "train.jsonl")
    parser.add_argument("--tags", type=Path, default=BANKING77 / "tags.jsonl")
    parser.add_argument("--queries", default=str(BANKING77 / "queries.jsonl"))
    parser.add_argument("--config", default=str(REPO / "configs" / "banking77.yaml"))
    parser.add_argument("--knowledge", default=str(SAMPLE_RULES))
    add_cache_argument(parser)
    add_rebuild_argument(parser)
    args = parser.parse_args(argv)

    import yaml

    from benchmarks._stores import file_store
    from llm4tag.config import Settings, settings_from_dict
    from llm4tag.data import read_items
    from llm4tag.evaluation.tables import format_table
    from llm4tag.pipeline import TaggingPipeline

    data = yaml.safe_load(Path(args.config).read_text()) or {}
    data["llm"] = {
        **data.get("llm", {}),
        "model": args.model,
        "engine": args.engine,
        "batch_size": args.batch_size,
    }
    data.setdefault("pipeline", {})["batch_size"] = args.batch_size
    settings = settings_from_dict(data)
    knowledge = [Path(args.knowledge)] if args.knowledge else []
    store = file_store(
        args.train, args.tags, Settings(), args.cache, knowledge_files=knowledge, rebuild=args.rebuild
    )
    started = time.perf_counter()
    pipeline = TaggingPipeline.open(store, settings)
    load_s = time.perf_counter() - started
    queries = read_items(args.queries).items
    warm, measured = queries[: args.batch_size], queries[args.batch_size : args.batch_size + args.items]
    pipeline.tag(warm)
    pipeline.times = type(pipeline.times)()
    started = time.perf_counter()
    for start in range(0, len(measured), args.batch_size):
        pipeline.tag(measured[start : start + args.batch_size])
    elapsed = time.perf_counter() - started
    n = len(measured)
    rows = []
    for stage, seconds in pipeline.times.seconds.items():
        tokens = pipeline.times.tokens.get(stage, {})
        rows.append(
            {
                "stage": stage,
                "s/item": seconds / n,
                "prompt tokens/item": tokens.get("prompt", 0) / n,
                "cached tokens/item": tokens.get("cached", 0) / n,
                "generated tokens/item": tokens.get("generated", 0) / n,
                "computed tokens/s": (tokens.get("prompt", 0) + tokens.get("generated", 0)) / seconds
                if seconds
                else 0,
            }
        )
    print(
        f"# {pipeline.engine.name} ({args.engine}), {n} items, batch {args.batch_size}, mode {pipeline.mode}"
    )
    print(f"# engine load {load_s:.1f} s; end to end {n / elapsed:.3f} items/s ({elapsed / n:.2f} s/item)")
    print(format_table(rows, list(rows[0])))
    print(json.dumps({"model": args.model, "engine": args.engine, "items": n, "items_per_s": n / elapsed}))


if __name__ == "__main__":
    main()
