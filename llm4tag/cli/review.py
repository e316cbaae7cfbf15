"""`llm4tag review import`: queue the uncertain tags of a tag output (a bulk output folder or a file
written by `llm4tag tag --dropped`) for the review UI."""

from __future__ import annotations

import sys
from pathlib import Path

from llm4tag.cli.common import add_config, print_json
from llm4tag.config import load_settings
from llm4tag.data import read_items
from llm4tag.errors import LLM4TagError
from llm4tag.service.review_queue import ReviewQueue, ReviewSettings, import_rows, read_bulk_rows


def register(verbs) -> None:
    review = verbs.add_parser("review", help="the review queue of uncertain tags (the UI's Review page)")
    review_verbs = review.add_subparsers(dest="review_verb", required=True)
    imp = review_verbs.add_parser(
        "import", help="queue the uncertain tags of a tag output (bulk output folder or file)"
    )
    imp.add_argument(
        "--output", required=True, help="what `llm4tag tag` wrote: a bulk output folder or a file"
    )
    imp.add_argument("--input", required=True, help="the items that were tagged (for their texts)")
    imp.add_argument("--store", help="the served store: the queue is STORE/review/queue.sqlite3")
    imp.add_argument("--queue", help="the queue file, when not in the store (review.queue of the app)")
    imp.add_argument(
        "--band",
        nargs=2,
        type=float,
        metavar=("LOW", "HIGH"),
        help="confidences to queue (default: cut +- margin)",
    )
    imp.add_argument("--margin", type=float, help="half-width of the default band (default 0.15)")
    add_config(imp, "settings YAML (pipeline.threshold is the cut)")
    imp.set_defaults(run=run)


def run(args) -> int:
    if not args.store and not args.queue:
        raise LLM4TagError("name the queue: --store (the served store folder) or --queue (its file)")
    settings = ReviewSettings.load(
        {
            **({"band": tuple(args.band)} if args.band else {}),
            **({"margin": args.margin} if args.margin is not None else {}),
            **({"queue": args.queue} if args.queue else {}),
        }
    )
    config = load_settings(args.config)
    band = settings.band_around(config.pipeline.threshold)
    if not Path(args.output).exists():
        raise LLM4TagError(f"{args.output} does not exist")
    # The text fields the service reads (texts.item_fields) travel with the entry into its feedback.
    fields = [f for f in config.texts.item_fields if f != "text"]
    texts = {
        i.id: (i.text, {f: str(i.extra[f]) for f in fields if f in i.extra})
        for i in read_items(args.input).items
    }
    queue = ReviewQueue(settings.queue_path(args.store or "."))
    counts = import_rows(queue, read_bulk_rows(args.output), texts, band, f"bulk:{Path(args.output).name}")
    print_json({"queue": str(queue.path), "band": list(band), **counts, "queue_counts": queue.counts()})
    if counts["rows_without_dropped"]:
        print(
            f"note: {counts['rows_without_dropped']} row(s) carry no 'dropped' tags (tag without "
            "--dropped): only their kept tags could enter the queue",
            file=sys.stderr,
        )
    return 0
