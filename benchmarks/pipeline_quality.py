"""Tagging quality of the full pipeline against baselines and ablations (LLM4Tag table 1).

    python benchmarks/pipeline_quality.py [--datasets banking77,...] [--n 300] [--model default]

For each shared data set: a store and knowledge bases from the train split, a fixed random sample of
the test split (seed 0), and these methods on the same items:
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

import argparse
import json
import random
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _datasets import DATASETS, REPO, add_data_arguments, load_dataset

from llm4tag import store_builder
from llm4tag.config import settings_from_dict
from llm4tag.encoder import Encoder
from llm4tag.engines import make_engine
from llm4tag.evaluation.plots import accuracy_coverage_plot, reliability_diagram
from llm4tag.evaluation.tables import format_table
from llm4tag.evaluation.tagging import MULTI_KEYS, SINGLE_KEYS, evaluate_tagging, relative_improvement
from llm4tag.pipeline import TaggingPipeline
from llm4tag.recaller import Recaller

CONFIGS = {"full": {}, "no_srki": {"num_samples": 0, "num_snippets": 0}}


def settings_for(name: str, extra: dict, model: str, engine: str):
    data = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text()) or {}
    data.setdefault("pipeline", {}).update(extra)
    data["llm"] = {**data.get("llm", {}), "model": model, **({"engine": engine} if engine else {})}
    return settings_from_dict(data)


def build_parts(ds, settings, encoder):
    """The store and knowledge bases of a data set's train split (vectors from the data set's cache)."""
    parts = store_builder.build_parts(
        ds.train, ds.tags, settings, encoder, item_vectors=ds.train_vectors, tag_vectors=ds.tag_vectors
    )
    return parts.store, parts.samples, parts.domain


def cached_rows(path: Path) -> dict[str, dict]:
    rows = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line from an interrupted run: that item is tagged again
            rows[row["id"]] = row
    return rows


def run_llm(
    pipeline, items, path: Path, chunk: int, log_every: int = 1, with_candidates: bool = False
) -> tuple[dict, dict]:
    rows = cached_rows(path)
    todo = [i for i in items if i.id not in rows]
    stats = {"items": 0, "seconds": 0.0}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as sink:
        for start in range(0, len(todo), chunk):
            batch = todo[start : start + chunk]
            t0 = time.perf_counter()
            tagged = pipeline.tag(batch, with_dropped=True, with_candidates=with_candidates)
            seconds = time.perf_counter() - t0
            for row in tagged:
                row["seconds"] = round(seconds / len(batch), 3)  # the chunk's time, shared equally
                rows[row["id"]] = row
                sink.write(json.dumps(row) + "\n")
            sink.flush()
            stats["items"] += len(batch)
            stats["seconds"] += seconds
            if (start // chunk) % log_every == 0:
                done = len(items) - len(todo) + start + len(batch)
                rate = stats["items"] / stats["seconds"]
                print(
                    f"#   {path.parent.name}/{path.stem}: {done}/{len(items)} ({rate:.3f} items/s)",
                    flush=True,
                )
    return {i.id: rows[i.id] for i in items}, stats


def tag_entries(row: dict, key: str = "tags") -> list[dict]:
    return list(row.get(key, []))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", default=",".join(DATASETS))
    add_data_arguments(parser)
    parser.add_argument("--out", type=Path, default=REPO / "out" / "quality")
    parser.add_argument("--n", type=int, default=300, help="test items per data set (fixed sample, seed 0)")
    parser.add_argument("--model", default="default")
    parser.add_argument("--engine", default="transformers")
    parser.add_argument("--configs", default="full,no_srki")
    parser.add_argument("--chunk", type=int, default=8)
    args = parser.parse_args()

    engine = None
    encoder = None
    for name in args.datasets.split(","):
        settings = settings_for(name, {}, args.model, args.engine)
        if encoder is None:
            encoder = Encoder(settings.encoder)
        ds = load_dataset(name, args.data, settings, encoder, args.cache)
        sample = random.Random(0).sample(ds.test, min(args.n, len(ds.test)))
        gold = {i.id: set(i.tags or ()) for i in sample}
        store, samples, domain = build_parts(ds, settings, encoder)
        recaller = Recaller(store, encoder, settings.texts)
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
            cs = settings_for(name, CONFIGS[config], args.model, args.engine)
            pipeline = TaggingPipeline(recaller, engine, cs, samples, domain, max_tags=max_tags)
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
