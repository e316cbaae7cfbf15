"""`llm4tag`: one command with verbs that follow the workflow (build, recall, eval)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from graph_store import StoreError
from llm4tag.errors import LLM4TagError

EXIT_USAGE = 2


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

    evaluate = verbs.add_parser("eval", help="score predictions against gold annotations")
    evaluate.add_argument("--gold", required=True, help="items with their gold 'tags'")
    evaluate.add_argument("--pred", required=True, help="output of `llm4tag recall`")
    evaluate.add_argument("-k", type=int, default=20, help="candidates scored per item (default 20)")
    evaluate.add_argument("--split", help="score only gold items of this split")
    evaluate.add_argument("--output", help="also write the metrics as JSON here")
    return parser


def _cmd_build(args) -> int:
    from llm4tag.config import load_settings
    from llm4tag.data import read_items, read_tags
    from llm4tag.encoder import Encoder
    from llm4tag.recall import build_store

    if args.shards < 1:
        raise LLM4TagError(f"--shards must be at least 1, got {args.shards}")
    settings = load_settings(args.config)
    tags = read_tags(args.tags)
    items = read_items(
        args.items, vocabulary={t.tag for t in tags}, strict_tags=args.strict_tags, split=args.split
    )
    encoder = Encoder(settings.encoder)
    store, report = build_store(items.items, tags, settings, encoder, shards=args.shards)
    started = time.perf_counter()
    store.save(args.store)
    summary = {
        "store": str(args.store),
        "encoder": encoder.id,
        **report.stats,
        "skipped_unannotated": report.skipped_unannotated,
        "unknown_tag_annotations_dropped": items.unknown_tag_annotations,
        "encode_s": round(report.encode_seconds, 2),
        "build_s": round(report.build_seconds, 2),
        "save_s": round(time.perf_counter() - started, 2),
    }
    print(json.dumps(summary))
    return 0


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


def _cmd_eval(args) -> int:
    from llm4tag.data import read_items, read_records
    from llm4tag.errors import DataError
    from llm4tag.metrics import format_table, recall_metrics

    if args.k < 1:
        raise LLM4TagError(f"-k must be at least 1, got {args.k}")
    gold_items = read_items(args.gold, split=args.split, require_tags=True)
    gold = {item.id: set(item.tags or ()) for item in gold_items}
    predicted: dict[str, list] = {}
    for line, row in read_records(args.pred):
        if "id" not in row:
            raise DataError(args.pred, "missing id", line=line, field="id")
        if "candidates" not in row:
            raise DataError(
                args.pred,
                "missing candidates (expected the output of `llm4tag recall`)",
                line=line,
                field="candidates",
            )
        candidates = row["candidates"]
        if isinstance(candidates, str):  # CSV holds lists as JSON text
            try:
                candidates = json.loads(candidates)
            except json.JSONDecodeError as exc:
                raise DataError(
                    args.pred, f"not a JSON list: {exc.msg}", line=line, field="candidates"
                ) from exc
        if not isinstance(candidates, list):
            raise DataError(args.pred, "must be a list", line=line, field="candidates")
        predicted[str(row["id"])] = candidates
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


COMMANDS = {"build": _cmd_build, "recall": _cmd_recall, "eval": _cmd_eval}


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
