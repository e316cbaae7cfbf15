"""`llm4tag recall`: candidate tags per item (graph recall, or match-based), for recall evaluation."""

from __future__ import annotations

import time

from llm4tag.cli.common import add_config, positive, print_json
from llm4tag.config import load_settings
from llm4tag.data import detect_format, read_items, write_records
from llm4tag.recaller import METHODS, Recaller


def register(verbs) -> None:
    recall = verbs.add_parser("recall", help="candidate tags for items (for recall evaluation)")
    recall.add_argument("--store", required=True)
    recall.add_argument("--input", required=True, help="items to recall tags for")
    recall.add_argument("--output", required=True, help="output file (JSONL[.gz], Parquet or CSV)")
    recall.add_argument("-k", type=int, default=None, help="candidates per item (default: config, 20)")
    recall.add_argument("--method", choices=list(METHODS), default="graph")
    recall.add_argument("--split", help="use only input items of this split (e.g. test)")
    recall.add_argument("--batch-size", type=int, default=1024)
    add_config(recall)
    recall.set_defaults(run=run)


def run(args) -> int:
    positive(args, "k", "-k")
    positive(args, "batch_size")
    detect_format(args.output)  # an unwritable output format fails before any work is done
    items = read_items(args.input, split=args.split)
    recaller = Recaller.open(args.store, load_settings(args.config) if args.config else None)
    started = time.perf_counter()
    count = write_records(
        args.output, recaller.recall_rows(items.items, args.method, args.k, args.batch_size)
    )
    elapsed = time.perf_counter() - started
    print_json(
        {
            "output": str(args.output),
            "items": count,
            "method": args.method,
            "seconds": round(elapsed, 2),
            "items_per_s": round(count / elapsed, 1) if elapsed else None,
        }
    )
    return 0
