"""Our pipeline against the peer taggers on the same items (LLM4Tag table 1), and a vocabulary built
from raw texts (TagGPT section 2.1).

    python -m benchmarks.compare [--datasets debian_debtags,...] [--limit 24] [--model default]
                                 [--methods match,taggpt-selective,taggpt-generative,betag,llm4tag]
                                 [--vocab banking77 --vocab-items 300 | --no-vocab] [--only-vocab]

Every method tags the same items of each shared data set: the first --limit of the test split's fixed
seed-0 order (the 36 items benchmarks/pipeline_quality.py --limit 36 scores are its first 36), so our
pipeline's rows cached there (out/quality/<model>/<set>/full.jsonl) are reused and extended in place
(its store: the cached one, benchmarks/_stores.py). Peer rows are cached per item under
out/compare/<model>/<set>/<method>.jsonl: an interrupted run resumes and --limit can grow.
All methods see the data set's real vocabulary and the bundled encoder; TagGPT's generative prompt
gets one fixed worked example (the first train item), as its template has.

Writes out/compare/<model>/table.md (the paper's table-1 layout: metrics per task type, RI of ours
over each method, plus coverage and seconds per item), results.json, per data set an
accuracy-coverage PNG of every method, and with --vocab a vocabulary built from that set's train texts
with their tags removed: TagGPT's measures beside the real vocabulary's, its coverage of the real tags
(share matched at >= 0.8 cosine) and a popularity histogram PNG.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from benchmarks._datasets import dataset_settings, load_dataset, test_sample
from benchmarks._paths import (
    OUT,
    add_data_arguments,
    add_datasets_argument,
    add_limit_argument,
    add_out_argument,
    add_rebuild_argument,
    add_seed_argument,
    benchmark_parser,
    names,
    show_progress,
)
from benchmarks._rows import cached_rows
from benchmarks._stores import dataset_store
from benchmarks.pipeline_quality import without_ranking
from graph_store.durable import append_lines
from llm4tag.baselines import PipelineTagger, TagIndex, make_baseline
from llm4tag.data import Item, write_records
from llm4tag.encoded_text import readable_tag
from llm4tag.encoder import Encoder
from llm4tag.engines import make_engine
from llm4tag.evaluation.plots import accuracy_coverage_plot, popularity_histogram
from llm4tag.evaluation.tables import format_table
from llm4tag.evaluation.tagging import MULTI_KEYS, SINGLE_KEYS, evaluate_tagging, relative_improvement
from llm4tag.vocab import VocabularyBuilder, vocabulary_coverage, vocabulary_measures

METHODS = ("match", "taggpt-selective", "taggpt-generative", "betag", "llm4tag")
LABELS = {
    "match": "Match (cosine, BGE/GTE row)",
    "taggpt-selective": "TagGPT selective",
    "taggpt-generative": "TagGPT generative",
    "betag": "BETag (diverse beams, w/o FT)",
    "llm4tag": "**LLM4Tag (ours)**",
}


def _tokens(engine) -> int:
    return 0 if engine is None else engine.stats.prompt_tokens + engine.stats.generated_tokens


def run_tagger(tagger, items, path: Path, chunk: int, label: str, engine=None) -> tuple[dict, dict]:
    """Rows of ``items`` from the cache at ``path``, tagging (and appending) the missing ones."""
    rows = cached_rows(path)
    todo = [i for i in items if i.id not in rows]
    stats = {"items": 0, "seconds": 0.0, "tokens": 0}
    before = _tokens(engine)
    path.parent.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(todo), chunk):
        batch = todo[start : start + chunk]
        started = time.perf_counter()
        tagged = list(tagger.tag(batch))
        for row in tagged:
            rows[row["id"]] = row
        append_lines(path, [json.dumps(row).encode() for row in tagged])
        stats["items"] += len(batch)
        stats["seconds"] += time.perf_counter() - started
        stats["tokens"] = _tokens(engine) - before
        done = len(items) - len(todo) + start + len(batch)
        print(
            f"#   {label}: {done}/{len(items)} ({stats['seconds'] / stats['items']:.1f} s/item)",
            flush=True,
        )
    return {i.id: rows[i.id] for i in items}, stats


def record_timing(path: Path, method: str, stats: dict) -> dict:
    """Seconds per item accumulated over runs (cached rows carry no time)."""
    timings = json.loads(path.read_text()) if path.exists() else {}
    if stats["items"]:
        entry = timings.setdefault(method, {"items": 0, "seconds": 0.0, "tokens": 0})
        entry["items"] += stats["items"]
        entry["seconds"] += stats["seconds"]
        entry["tokens"] = entry.get("tokens", 0) + stats["tokens"]
        path.write_text(json.dumps(timings, indent=2))
    return timings


def fmt(value: float) -> str:
    return "nan" if value != value else f"{value:.4f}"


def _settings(name: str, args):
    settings = dataset_settings(name, {}, args.model, args.engine)
    if args.threads:
        settings.llm.threads = args.threads
    if args.batch_size:
        settings.llm.batch_size = args.batch_size
    return settings


def compare_dataset(name, args, encoder, engine_box) -> dict:
    settings = _settings(name, args)
    ds = load_dataset(name, args.data, settings, encoder, args.cache)
    example = ds.train[0]
    settings.peers.example_text = example.text
    settings.peers.example_tags = list(example.tags or ())
    sample = test_sample(ds, args.sizes[name], args.seed)
    gold = {i.id: set(i.tags or ()) for i in sample}
    max_tags = 1 if settings.pipeline.mode == "single" else settings.pipeline.max_tags
    task = "single" if max_tags == 1 else "multi"
    keys = SINGLE_KEYS if task == "single" else MULTI_KEYS
    index = TagIndex(
        [t.tag for t in ds.tags], [t.description for t in ds.tags], ds.tag_vectors, encoder, settings.texts
    )
    out = args.out / args.model / name
    timing_path = out / "timings.json"
    rows_by_method, timings = {}, {}

    def engine():
        if engine_box[0] is None:
            engine_box[0] = make_engine(settings.llm)
        return engine_box[0]

    for method in args.methods:
        if method == "llm4tag":
            path = args.quality / args.model / name / "full.jsonl"
            have = cached_rows(path)
            if all(i.id in have for i in sample):
                rows, stats = {i.id: have[i.id] for i in sample}, {"items": 0, "seconds": 0.0}
            else:
                from llm4tag.pipeline import TaggingPipeline

                store = dataset_store(
                    ds, without_ranking(settings), encoder, args.cache, rebuild=args.rebuild
                )
                pipeline = TaggingPipeline.open(store, settings, engine=engine())
                tagger = PipelineTagger(pipeline, with_dropped=True)
                rows, stats = run_tagger(tagger, sample, path, args.chunk, f"{name}/llm4tag", engine())
        else:
            tagger = make_baseline(method, index, settings, None if method == "match" else engine(), max_tags)
            llm = None if method == "match" else engine()
            rows, stats = run_tagger(
                tagger, sample, out / f"{method}.jsonl", args.chunk, f"{name}/{method}", llm
            )
        rows_by_method[method] = rows
        timings = record_timing(timing_path, method, stats)
    quality_speed = {}
    quality_table = args.quality / args.model / name / "table.json"
    if quality_table.exists():
        quality_speed = json.loads(quality_table.read_text()).get("speed", {}).get("full", {})

    reports, curves, table = {}, {}, []
    for method, rows in rows_by_method.items():
        predictions = {i: r.get("tags", []) for i, r in rows.items()}
        reports[method] = evaluate_tagging(gold, predictions, task=task)
        everything = {i: r.get("tags", []) + r.get("dropped", []) for i, r in rows.items()}
        curves[LABELS[method].strip("*")] = evaluate_tagging(gold, everything, task=task)["threshold_curve"]
    ours = reports.get("llm4tag")
    for method, report in reports.items():
        row = {"method": LABELS[method], **{k: fmt(report[k]) for k in keys}}
        if ours is not None and method != "llm4tag":
            ri = relative_improvement(ours, report, keys)
            row["RI of ours"] = "n/a" if ri != ri else f"{100 * ri:+.1f}%"
        else:
            row["RI of ours"] = ""
        row["coverage@1"] = fmt(report["coverage@1"])
        row["tags/item"] = f"{report['tags_per_item']:.2f}"
        row["s/item"] = row["LLM tokens/item"] = ""
        t = timings.get(method)
        if t and t["items"]:
            row["s/item"] = f"{t['seconds'] / t['items']:.1f}"
            row["LLM tokens/item"] = f"{t.get('tokens', 0) / t['items']:.0f}" if method != "match" else ""
        elif method == "llm4tag" and quality_speed.get("items_per_s"):
            row["s/item"] = f"{1 / quality_speed['items_per_s']:.1f}"
            row["LLM tokens/item"] = f"{quality_speed.get('tokens_per_item', 0):.0f}"
        table.append(row)
    accuracy_coverage_plot(curves, out / "accuracy_coverage.png", task, title=f"{name} ({len(sample)} items)")
    print(f"\n## {name}: {len(sample)} test items (seed 0), task {task}, model {args.model}")
    print(format_table(table, list(dict.fromkeys(k for r in table for k in r))), flush=True)
    return {
        "name": name,
        "task": task,
        "n": len(sample),
        "keys": list(keys),
        "table": table,
        "reports": {
            m: {k: r[k] for k in [*keys, "coverage@1", "tags_per_item", "items", "predicted_items"]}
            for m, r in reports.items()
        },
    }


def wide_table(results: list[dict]) -> str:
    """The paper's table 1: one row per method, per data set its task's metrics and the RI of ours."""
    head = ["Model"]
    for r in results:
        names = ["Acc@1", "Acc@2", "Acc@3"] if r["task"] == "multi" else ["Precision", "Recall", "F1"]
        head += [f"{r['name']} {n}" for n in names] + [f"{r['name']} RI"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    methods = list(dict.fromkeys(row["method"] for r in results for row in r["table"]))
    for method in methods:
        cells = [method]
        for r in results:
            row = next((x for x in r["table"] if x["method"] == method), None)
            best = {k: max(float(x[k]) for x in r["table"]) for k in r["keys"]}
            for k in r["keys"]:
                value = row[k] if row else "–"
                cells.append(f"**{value}**" if row and float(value) == best[k] else value)
            cells.append((row or {}).get("RI of ours", "–") or "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def build_vocabulary(name, args, encoder, engine_box) -> dict:
    settings = _settings(name, args)
    ds = load_dataset(name, args.data, settings, encoder, args.cache)
    picked = random.Random(args.seed).sample(ds.train, min(args.vocab_items, len(ds.train)))
    raw = [Item(i.id, i.text) for i in picked]  # the tags are removed
    out = args.out / args.model / "vocab" / name
    out.mkdir(parents=True, exist_ok=True)
    write_records(out / "raw.jsonl", [{"id": i.id, "text": i.text} for i in raw])
    cached = len(set(cached_rows(out / "answers.jsonl")) & {i.id for i in raw})
    if engine_box[0] is None and cached < len(raw):  # a build from cached answers needs no LLM
        engine_box[0] = make_engine(settings.llm)
    builder = VocabularyBuilder(engine_box[0], encoder, settings)
    answers, stats = builder.answers(raw, out / "answers.jsonl")
    result = builder.build(raw, answers)
    write_records(out / "vocab.jsonl", result.rows)
    real_items = {i.id: list(i.tags or ()) for i in picked}
    real_used = sorted({t for tags in real_items.values() for t in tags})
    real_labels = [readable_tag(t) for t in real_used]
    real_vectors = encoder.encode(real_labels)
    real_measures = vocabulary_measures(
        real_items, dict(zip(real_used, real_vectors, strict=True)), settings.vocab.redundancy_threshold
    )
    all_labels = [readable_tag(t.tag) for t in ds.tags]
    built = result.tags
    surface = built + [a for r in result.rows for a in r["aliases"]]
    threshold = settings.vocab.redundancy_threshold
    coverage = {
        "used_in_sample": vocabulary_coverage(
            real_labels, real_vectors, built, encoder.encode(built), threshold
        ),
        "whole_vocabulary": vocabulary_coverage(
            all_labels, encoder.encode(all_labels), built, encoder.encode(built), threshold
        ),
        "used_in_sample_with_aliases": vocabulary_coverage(
            real_labels, real_vectors, surface, encoder.encode(surface), threshold
        ),
    }
    popularity_histogram(
        {
            "built by the LLM": result.measures["popularity_hist"],
            "real (tags of the same items)": real_measures["popularity_hist"],
        },
        out / "popularity.png",
        title=f"{name}: tag popularity over {len(raw)} train items",
    )
    report = {
        "dataset": name,
        "items": len(raw),
        "answers": stats,
        "build": result.stats,
        "built": result.measures,
        "real": real_measures,
        "coverage": coverage,
        "top_tags": [(r["tag"], r["count"], r["aliases"][:5]) for r in result.rows[:25]],
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    return report


def vocab_markdown(report: dict) -> str:
    b, r, c = report["built"], report["real"], report["coverage"]
    rows = [
        ("tags (used on the items)", b["tags"], r["tags"]),
        ("items with at least one tag", b["items_with_tags"], r["items_with_tags"]),
        (
            "tags per item, mean / median",
            f"{b['tags_per_item_mean']:.2f} / {b['tags_per_item_median']:g}",
            f"{r['tags_per_item_mean']:.2f} / {r['tags_per_item_median']:g}",
        ),
        (
            "share of tags used on one item",
            f"{b['tags_used_once_share']:.1%}",
            f"{r['tags_used_once_share']:.1%}",
        ),
        ("most items on one tag", b["popularity_max"], r["popularity_max"]),
        (
            "redundancy ratio (tag pairs at cosine >= 0.8)",
            f"{b['redundancy_ratio']:.2%}",
            f"{r['redundancy_ratio']:.2%}",
        ),
        ("within-item redundancy", f"{b['item_redundancy']:.2%}", f"{r['item_redundancy']:.2%}"),
        (
            "popularity: tags on 1 / 2 / 3-4 / 5-9 / 10-19 / 20+ items",
            " / ".join(str(v) for v in _pop(b)),
            " / ".join(str(v) for v in _pop(r)),
        ),
    ]
    lines = ["| measure | built by the LLM | real tags |", "|---|---:|---:|"]
    lines += [f"| {a} | {x} | {y} |" for a, x, y in rows]
    s = report["build"]
    lines.append("")
    lines.append(
        f"Build: {s['candidate_tags']} distinct candidate tags ({s['raw_tags_per_item']} per item); "
        f"frequency filter kept counts {s['min_count']}..{s['max_count']} (dropped {s['too_rare']} too rare, "
        f"{s['too_common']} too common: {', '.join(s['too_common_tags'][:8]) or 'none'}); "
        f"{s['merged_away']} merged into near-duplicates; {s['vocabulary']} tags."
    )
    lines.append(
        f"Coverage of the real tags at cosine >= {c['used_in_sample']['threshold']}: "
        f"{c['used_in_sample']['matched']}/{c['used_in_sample']['reference_tags']} "
        f"({c['used_in_sample']['coverage']:.1%}) of the real tags on these items "
        f"({c['used_in_sample_with_aliases']['coverage']:.1%} counting aliases), "
        f"{c['whole_vocabulary']['matched']}/{c['whole_vocabulary']['reference_tags']} "
        "of the whole vocabulary; "
        f"mean best cosine of a real tag to a built one {c['used_in_sample']['mean_best_cosine']:.2f}."
    )
    return "\n".join(lines)


def _pop(m: dict) -> list[int]:
    h = m["popularity_hist"]
    return [h["1"], h["2"], h["3-4"], h["5-9"], h["10-19"], h["20-49"] + h["50-99"] + h["100+"]]


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__file__, __doc__)
    add_datasets_argument(parser)
    add_data_arguments(parser)
    add_out_argument(parser, OUT / "compare")
    parser.add_argument("--quality", type=Path, default=OUT / "quality", help="pipeline_quality.py's rows")
    add_limit_argument(
        parser,
        "500",
        "test items per set (a fixed seeded order's first N): N or NAME=N,NAME=N (default 500)",
        type=str,
    )
    add_seed_argument(parser, help="seed of the test order and of the vocabulary's train items (default 0)")
    add_rebuild_argument(parser)
    parser.add_argument("--methods", type=names, default=list(METHODS), help=",".join(METHODS))
    parser.add_argument("--model", default="default")
    parser.add_argument("--engine", default=None, help="LLM engine (default: the config's, llamacpp)")
    parser.add_argument("--threads", type=int, help="LLM threads (default: config)")
    parser.add_argument("--batch-size", type=int, help="LLM prompts per forward pass (default: config, 8)")
    parser.add_argument("--chunk", type=int, default=8, help="items per tagger call (and per cache write)")
    parser.add_argument("--vocab", default="banking77", help="data set whose train texts build a vocabulary")
    parser.add_argument("--vocab-items", type=int, default=300)
    parser.add_argument("--no-vocab", action="store_true")
    parser.add_argument("--only-vocab", action="store_true")
    args = parser.parse_args(argv)
    show_progress()
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown method(s): {', '.join(unknown)}")
    if "=" in args.limit:
        args.sizes = {k: int(v) for k, v in (part.split("=") for part in args.limit.split(","))}
    else:
        args.sizes = dict.fromkeys(args.datasets, int(args.limit))
    if set(args.datasets) - set(args.sizes) or not all(n >= 1 for n in args.sizes.values()):
        parser.error("--limit must give every data set a size of at least 1")

    encoder_settings = dataset_settings(args.datasets[0], {}, args.model, args.engine)
    encoder = Encoder(encoder_settings.encoder)
    engine_box = [None]
    results = []
    if not args.only_vocab:
        for name in args.datasets:
            results.append(compare_dataset(name, args, encoder, engine_box))
    vocab_report = None
    if args.vocab and not args.no_vocab:
        vocab_report = build_vocabulary(args.vocab, args, encoder, engine_box)
        print(f"\n## vocabulary built from {vocab_report['items']} {args.vocab} train texts (tags removed)")
        print(vocab_markdown(vocab_report), flush=True)
    folder = args.out / args.model
    folder.mkdir(parents=True, exist_ok=True)
    parts = []
    if results:
        sizes = ", ".join(f"{r['name']} {r['n']}" for r in results)
        parts.append(
            f"Test items per set (seed-0 sample): {sizes}. Model {args.model}, engine {args.engine}.\n"
        )
        parts.append(wide_table(results))
        for r in results:
            parts.append(f"\n### {r['name']} ({r['task']}-tag, {r['n']} items)\n")
            parts.append(format_table(r["table"], list(dict.fromkeys(k for x in r["table"] for k in x))))
        (folder / "results.json").write_text(json.dumps(results, indent=2, default=str))
        print("\n## table 1 layout\n" + wide_table(results))
    if vocab_report is not None:
        parts.append(f"\n### Vocabulary built from {vocab_report['items']} {args.vocab} train texts\n")
        parts.append(vocab_markdown(vocab_report))
    if parts:
        name = "table.md" if results else "vocab.md"
        (folder / name).write_text("\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
