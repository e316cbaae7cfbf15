"""The LLM engines and prompt layouts on the same test items, in one run: speed per stage, tokens, quality.

    python -m benchmarks.engines [--dataset banking77] [--limit 100] [--models default,tiny]
        [--configs transformers,llamacpp-paper,llamacpp] [--threads 1] [--chunk 5]

A store and knowledge bases from the data set's train split (cached: benchmarks/_stores.py; no ranking,
so the LLM tags every item); a fixed sample of its test split (random.Random(--seed).sample, seed 0).
Every configuration tags the same items, chunk by chunk in turn (item chunk 1 with every configuration,
then chunk 2, ...), so that whatever else runs on the machine slows them alike; the ratios are the
figures to read. Configurations (``--configs``, names below; ``+`` joins overrides):

    transformers       today's default: the transformers engine, paper prompts (figures 3-5)
    llamacpp-paper     the llama.cpp engine on the same prompts
    llamacpp           the llama.cpp engine with the default prompt layout (judgments continue the
                       generation conversation; prompts.layout: auto)
    ...-c10 / -s0 / -k0  ablations: 10 candidates / no retrieved samples / no knowledge snippets

Per configuration: items/s, seconds per item per stage, prompt tokens computed and reused and tokens
generated per item, P/R/F1 (single-tag sets) or Acc@1..3 with 95% bootstrap intervals, ECE, and the
paired difference to the first configuration; per engine pair on the same prompts, the share of items
with the same top tag and the median |difference| of its confidence. Rows and timings are cached under
--out per chunk, so an interrupted run resumes.
"""

from __future__ import annotations

import copy
import itertools
import json
import random
import time
from pathlib import Path

import numpy as np

from benchmarks._datasets import dataset_config, load_dataset
from benchmarks._paths import (
    OUT,
    add_data_arguments,
    add_dataset_argument,
    add_limit_argument,
    add_out_argument,
    add_rebuild_argument,
    add_seed_argument,
    benchmark_parser,
    names,
)
from benchmarks._stores import dataset_store
from benchmarks.pipeline_quality import without_ranking
from llm4tag.config import settings_from_dict
from llm4tag.encoder import Encoder
from llm4tag.engines import make_engine
from llm4tag.evaluation.tables import format_table
from llm4tag.evaluation.tagging import evaluate_tagging, metric_intervals
from llm4tag.pipeline import TaggingPipeline

BASES = {
    "transformers": {"llm": {"engine": "transformers"}, "prompts": {"layout": "paper"}},
    "llamacpp-paper": {"llm": {"engine": "llamacpp"}, "prompts": {"layout": "paper"}},
    "llamacpp": {"llm": {"engine": "llamacpp"}, "prompts": {"layout": "auto"}},
}
ABLATIONS = {
    "c10": {"graph": {"recall": {"num_candidates": 10}}},
    "s0": {"pipeline": {"num_samples": 0}},
    "k0": {"pipeline": {"num_snippets": 0}},
}


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = merge(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


def config_settings(name: str, dataset: str, model: str, threads: int) -> dict:
    base, *ablations = name.split("-")
    if base == "llamacpp" and ablations and ablations[0] == "paper":
        base, ablations = "llamacpp-paper", ablations[1:]
    data = merge(dataset_config(dataset), BASES[base])
    for ablation in ablations:
        data = merge(data, ABLATIONS[ablation])
    return merge(data, {"llm": {"model": model, "threads": threads, "batch_size": 8}})


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a torn last line: that chunk runs again
    return rows


def top_tag(row: dict) -> dict | None:
    tags = row["tags"] + row.get("dropped", [])
    return tags[0] if tags else None


def auc(scores: list[float], labels: list[bool]) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores)) if 0 < sum(labels) < len(labels) else float("nan")


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__file__, __doc__)
    add_dataset_argument(parser)
    add_data_arguments(parser)
    add_out_argument(parser, OUT / "engines")
    add_limit_argument(parser, 100, "test items (a fixed sample; default 100)")
    add_seed_argument(parser)
    add_rebuild_argument(parser)
    parser.add_argument("--models", type=names, default=["default", "tiny"], help="default: default,tiny")
    parser.add_argument(
        "--configs",
        type=names,
        default=["transformers", "llamacpp-paper", "llamacpp"],
        help="default: transformers,llamacpp-paper,llamacpp",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=5)
    args = parser.parse_args(argv)

    configs = args.configs
    first = settings_from_dict(config_settings(configs[0], args.dataset, "tiny", args.threads))
    encoder = Encoder(first.encoder)
    ds = load_dataset(args.dataset, args.data, first, encoder, args.cache)
    sample = random.Random(args.seed).sample(ds.test, min(args.limit, len(ds.test)))
    gold = {i.id: set(i.tags or ()) for i in sample}
    store = dataset_store(ds, without_ranking(first), encoder, args.cache, rebuild=args.rebuild)
    max_tags = 1 if first.pipeline.mode == "single" else first.pipeline.max_tags
    task = "single" if max_tags == 1 else "multi"
    print(
        f"# {args.dataset}: {len(sample)} test items (seed 0), {task}-tag, threads {args.threads}", flush=True
    )

    for model in args.models:
        folder = args.out / args.dataset / f"{model}-t{args.threads}"
        folder.mkdir(parents=True, exist_ok=True)
        engines: dict[str, object] = {}
        pipelines = {}
        for name in configs:
            settings = settings_from_dict(config_settings(name, args.dataset, model, args.threads))
            key = settings.llm.engine
            if key not in engines:
                started = time.perf_counter()
                engines[key] = make_engine(settings.llm)
                print(f"# {model}/{key}: loaded in {time.perf_counter() - started:.1f} s", flush=True)
            # Each opens the store with its own recall settings (a recall ablation: -c10).
            pipelines[name] = TaggingPipeline.open(store, settings, engine=engines[key])
        done = {name: read_jsonl(folder / f"{name}.jsonl") for name in configs}
        done_ids = {name: {i for chunk in rows for i in chunk["ids"]} for name, rows in done.items()}
        for start in range(0, len(sample), args.chunk):
            chunk = sample[start : start + args.chunk]
            for name in configs:
                if all(i.id in done_ids[name] for i in chunk):
                    continue
                pipeline = pipelines[name]
                engine = pipeline.engine
                if hasattr(engine, "forget_states"):
                    engine.forget_states()  # no configuration profits from another's states
                pipeline.times = type(pipeline.times)()
                started = time.perf_counter()
                rows = pipeline.tag(chunk, with_dropped=True)
                record = {
                    "ids": [i.id for i in chunk],
                    "wall": time.perf_counter() - started,
                    "seconds": pipeline.times.seconds,
                    "tokens": pipeline.times.tokens,
                    "rows": rows,
                }
                done[name].append(record)
                with open(folder / f"{name}.jsonl", "a") as sink:
                    sink.write(json.dumps(record) + "\n")
            print(f"#   {model}: {min(start + args.chunk, len(sample))}/{len(sample)} items", flush=True)
        report(model, configs, done, gold, task, sample, folder)
        for engine in engines.values():
            engine.close()


def report(model, configs, done, gold, task, sample, folder) -> None:
    wanted = {i.id for i in sample}
    table, rows_by = [], {}
    base_predictions = None
    for name in configs:
        chunks = [c for c in done[name] if set(c["ids"]) <= wanted]
        n = sum(len(c["ids"]) for c in chunks)
        wall = sum(c["wall"] for c in chunks)
        rows = {r["id"]: r for c in chunks for r in c["rows"]}
        rows_by[name] = rows
        kept = {i: r["tags"] for i, r in rows.items()}
        everything = {i: r["tags"] + r.get("dropped", []) for i, r in rows.items()}
        report_all = evaluate_tagging(gold, everything, task=task)
        intervals = metric_intervals(gold, kept, task=task, baseline=base_predictions)
        if base_predictions is None:
            base_predictions = kept
        stage_s = {}
        tokens = {"prompt": 0, "cached": 0, "generated": 0}
        for c in chunks:
            for stage, seconds in c["seconds"].items():
                stage_s[stage] = stage_s.get(stage, 0.0) + seconds
            for counts in c["tokens"].values():
                for k in tokens:
                    tokens[k] += counts.get(k, 0)
        metric = "f1" if task == "single" else "acc@1"
        m = intervals[metric]
        judged = [
            (t["confidence"], t["tag"] in gold[i])
            for i, r in rows.items()
            for t in r["tags"] + r.get("dropped", [])
            if t.get("confidence") is not None
        ]
        row = {
            "config": name,
            "n": n,
            "items/s": n / wall if wall else float("nan"),
            **{
                f"{s} s/item": v / n
                for s, v in stage_s.items()
                if s in ("encode", "recall", "generate", "calibrate")
            },
            "computed tok/item": tokens["prompt"] / n,
            "reused tok/item": tokens["cached"] / n,
            "generated tok/item": tokens["generated"] / n,
            metric: f"{m['value']:.3f} [{m['low']:.3f}, {m['high']:.3f}]",
            "Δ vs first": f"{m['diff']:+.3f} [{m['diff_low']:+.3f}, {m['diff_high']:+.3f}]"
            if "diff" in m
            else "",
            "ECE": report_all["calibration"]["ece"] if report_all.get("calibration") else float("nan"),
            "AUC": auc([c for c, _ in judged], [y for _, y in judged]) if judged else float("nan"),
        }
        table.append(row)
    print(f"\n## {model}: {table[0]['n']} items")
    print(format_table(table, list(dict.fromkeys(k for r in table for k in r))))
    speed = {r["config"]: r["items/s"] for r in table}
    for name in configs[1:]:
        print(f"# items/s {name} / {configs[0]}: {speed[name] / speed[configs[0]]:.2f}x")
    # Agreement of each configuration with the one before it (transformers vs llama.cpp on the same
    # prompts, then the prompt layouts on one engine).
    for a, b in itertools.pairwise(configs):
        same, deltas = 0, []
        common = set(rows_by[a]) & set(rows_by[b])
        for i in common:
            ta, tb = (top_tag(rows_by[x][i]) for x in (a, b))
            if ta and tb and ta["tag"] == tb["tag"]:
                same += 1
                if ta.get("confidence") is not None and tb.get("confidence") is not None:
                    deltas.append(abs(ta["confidence"] - tb["confidence"]))
        median = f"{np.median(deltas):.3f}" if deltas else "n/a"
        share = same / max(len(common), 1)
        print(
            f"# agreement {a} vs {b}: same top tag {same}/{len(common)} ({share:.3f});"
            f" median |Δconf| {median}"
        )
    (folder / "table.json").write_text(json.dumps(table, indent=2, default=str))


if __name__ == "__main__":
    main()
