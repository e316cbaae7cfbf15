"""Tagging quality of the full pipeline against baselines and ablations (LLM4Tag table 1).

    python -m benchmarks.pipeline_quality [--datasets banking77,...] [--limit 300] [--model default]

For each shared data set: a store and knowledge bases from the train split (cached:
benchmarks/_stores.py; no ranking, so the LLM tags every item), a fixed random sample of the test split
(random.Random(--seed).sample, seed 0), and these methods on the same items:
  match        top tags by item-tag cosine (the paper's BGE/GTE row)
  recall       top candidates by graph-recall score (no LLM)
  w/o SRKI     LLM on the basic prompt (figure 3), calibrated
  w/o calib.   the full pipeline's generated tags, unfiltered, in the LLM's order
  full         recall -> retrieval-enhanced generation -> calibration
LLM rows are cached per item under --out, so an interrupted run resumes and --n can grow.
Prints one Markdown table per data set with RI of the full pipeline over each method, the ECE, and
writes reliability and accuracy-coverage PNGs.
"""

from __future__ import annotations

import json
import random

from benchmarks._datasets import dataset_settings, load_dataset
from benchmarks._paths import (
    OUT,
    add_data_arguments,
    add_datasets_argument,
    add_limit_argument,
    add_out_argument,
    add_rebuild_argument,
    add_seed_argument,
    benchmark_parser,
)
from benchmarks._rows import run_llm
from benchmarks._stores import dataset_store
from llm4tag.encoder import Encoder
from llm4tag.engines import make_engine
from llm4tag.evaluation.plots import accuracy_coverage_plot, reliability_diagram
from llm4tag.evaluation.tables import format_table
from llm4tag.evaluation.tagging import MULTI_KEYS, SINGLE_KEYS, evaluate_tagging, relative_improvement
from llm4tag.pipeline import TaggingPipeline
from llm4tag.recaller import Recaller

CONFIGS = {"full": {}, "no_srki": {"num_samples": 0, "num_snippets": 0}}


def without_ranking(settings):
    """The paper's pipeline: a store without the learned recall and ranker, so the LLM tags every
    item from graph recall's candidates."""
    return settings.with_overrides({"ranking": {"enabled": "off"}})


def tag_entries(row: dict, key: str = "tags") -> list[dict]:
    return list(row.get(key, []))


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__file__, __doc__)
    add_datasets_argument(parser)
    add_data_arguments(parser)
    add_out_argument(parser, OUT / "quality")
    add_limit_argument(parser, 300, "test items per data set (a fixed sample; default 300)")
    add_seed_argument(parser)
    add_rebuild_argument(parser)
    parser.add_argument("--model", default="default")
    parser.add_argument("--engine", default="transformers")
    parser.add_argument("--configs", default="full,no_srki")
    parser.add_argument("--chunk", type=int, default=8)
    args = parser.parse_args(argv)

    engine = None
    encoder = None
    for name in args.datasets:
        settings = dataset_settings(name, {}, args.model, args.engine)
        if encoder is None:
            encoder = Encoder(settings.encoder)
        ds = load_dataset(name, args.data, settings, encoder, args.cache)
        sample = random.Random(args.seed).sample(ds.test, min(args.limit, len(ds.test)))
        gold = {i.id: set(i.tags or ()) for i in sample}
        folder = dataset_store(ds, without_ranking(settings), encoder, args.cache, rebuild=args.rebuild)
        recaller = Recaller.open(folder, settings)
        store = recaller.store
        max_tags = 1 if settings.pipeline.mode == "single" else settings.pipeline.max_tags
        task = "single" if max_tags == 1 else "multi"
        keys = SINGLE_KEYS if task == "single" else MULTI_KEYS
        vectors = recaller.encode(sample)
        predictions = {
            "match": {
                i.id: [c.tag for c in cands][:max_tags]
                for i, cands in zip(sample, store.match(vectors, 20), strict=True)
            },
            "recall": {
                i.id: [c.tag for c in cands][:max_tags]
                for i, cands in zip(sample, store.recall(vectors), strict=True)
            },
        }
        curves, speed, reports = {}, {}, {}
        if engine is None and args.configs:
            engine = make_engine(settings.llm)
        for config in [c for c in args.configs.split(",") if c]:
            cs = dataset_settings(name, CONFIGS[config], args.model, args.engine)
            pipeline = TaggingPipeline.open(folder, cs, engine=engine)
            tokens_before = engine.stats.prompt_tokens + engine.stats.generated_tokens
            rows, stats = run_llm(
                pipeline, sample, args.out / args.model / name / f"{config}.jsonl", args.chunk
            )
            if stats["items"]:
                tokens = engine.stats.prompt_tokens + engine.stats.generated_tokens - tokens_before
                speed[config] = {
                    "items_per_s": stats["items"] / stats["seconds"],
                    "tokens_per_item": tokens / stats["items"],
                    "stage_s_per_item": {
                        k: v / max(pipeline.times.items, 1) for k, v in pipeline.times.seconds.items()
                    },
                }
            label = "full" if config == "full" else "w/o SRKI"
            predictions[label] = {i: tag_entries(r) for i, r in rows.items()}
            everything = {i: tag_entries(r) + tag_entries(r, "dropped") for i, r in rows.items()}
            reports[label] = evaluate_tagging(gold, everything, task=task)
            curves[label] = reports[label]["threshold_curve"]
            if config == "full":
                predictions["w/o calibration"] = {i: r.get("generated", []) for i, r in rows.items()}
        table = []
        metrics = {m: evaluate_tagging(gold, p, task=task) for m, p in predictions.items()}
        for method, report in metrics.items():
            row = {"method": method, **{k: report[k] for k in keys}}
            if "full" in metrics and method != "full":
                row["RI of full"] = f"{100 * relative_improvement(metrics['full'], report, keys):.1f}%"
            if method in reports and reports[method].get("calibration"):
                row["ECE"] = reports[method]["calibration"]["ece"]
            table.append(row)
        print(f"\n## {name}: {len(sample)} test items (seed 0), task {task}, model {args.model}")
        print(format_table(table, list(dict.fromkeys(k for r in table for k in r))))
        for config, s in speed.items():
            stages = ", ".join(f"{k} {v:.2f}s" for k, v in s["stage_s_per_item"].items())
            rate = f"{s['items_per_s']:.3f} items/s, {s['tokens_per_item']:.0f} tokens/item"
            print(f"# {config}: {rate}; per item: {stages}")
        out = args.out / args.model / name
        out.mkdir(parents=True, exist_ok=True)
        (out / "table.json").write_text(
            json.dumps({"table": table, "speed": speed, "n": len(sample)}, indent=2)
        )
        if "full" in reports and reports["full"].get("calibration"):
            reliability_diagram(
                reports["full"]["calibration"], out / "reliability.png", title=f"{name}: full pipeline"
            )
        if curves:
            accuracy_coverage_plot(
                curves, out / "accuracy_coverage.png", task, title=f"{name} ({len(sample)} items)"
            )


if __name__ == "__main__":
    main()
