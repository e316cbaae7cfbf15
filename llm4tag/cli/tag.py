"""`llm4tag tag`: tag items with our pipeline (in process, or on Ray Data into a folder) or with a
baseline tagger we compare against (``--method``)."""

from __future__ import annotations

import sys
import time
from importlib.metadata import entry_points
from pathlib import Path

from llm4tag.baselines import METHODS, open_baseline, tag_rows
from llm4tag.cli.common import add_config, llm_settings, print_json, settings_of
from llm4tag.data import read_items, write_records
from llm4tag.engines.config import ENGINES
from llm4tag.errors import LLM4TagError
from llm4tag.pipeline import TaggingPipeline
from llm4tag.progress import step

EXIT_REJECTED = 3  # bulk --strict: the good rows were tagged, some input rows were rejected


def register(verbs) -> None:
    tag = verbs.add_parser("tag", help="tag items: recall, LLM generation, calibration")
    tag.add_argument("--store", help="store folder (baseline methods may take --tags instead)")
    tag.add_argument(
        "--method",
        choices=METHODS,
        default="llm4tag",
        help="llm4tag (our pipeline) or a baseline we compare against: match (cosine), taggpt-selective, "
        "taggpt-generative, betag (diverse beams, matched late)",
    )
    tag.add_argument("--tags", help="baseline methods: tag vocabulary file instead of a store")
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
    tag.add_argument(
        "--strict",
        action="store_true",
        help=f"bulk: exit {EXIT_REJECTED} when input rows were rejected (the good rows are tagged either "
        "way; in-process tagging refuses a file with any bad row)",
    )
    tag.add_argument("--split", help="tag only input items of this split (e.g. test)")
    tag.add_argument("--limit", type=int, help="tag only the first N items")
    tag.add_argument("--model", help="LLM: bundled name, alias (default, tiny) or HF folder")
    tag.add_argument("--engine", choices=list(ENGINES), help="LLM engine (default: config)")
    tag.add_argument("--candidates", action="store_true", help="also write each item's recalled candidates")
    tag.add_argument(
        "--dropped", action="store_true", help="also write tags the calibrator dropped (for eval curves)"
    )
    tag.add_argument(
        "--write-back", action="store_true", help="store the final tags as graph edges and save the store"
    )
    add_config(tag)
    tag.set_defaults(run=run)


def _bulk(args) -> bool:
    return bool(args.bulk or args.output.endswith("/") or Path(args.output).is_dir() or args.address)


def run(args) -> int:
    if args.method != "llm4tag" or args.store is None:
        return run_baseline(args)
    if _bulk(args):
        return run_bulk(args)
    settings = llm_settings(args, args.output)
    if args.write_back:
        settings = settings.with_overrides({"pipeline": {"write_back": True}})
    items = read_items(args.input, split=args.split).items
    if args.limit:
        items = items[: args.limit]
    pipeline = TaggingPipeline.open(args.store, settings)
    started = time.perf_counter()
    with step("tag", total=len(items)) as bar:
        rows = pipeline.tag_rows(items, with_candidates=args.candidates, with_dropped=args.dropped)
        count = write_records(args.output, bar.counted(rows))
    elapsed = time.perf_counter() - started
    if settings.pipeline.write_back:
        pipeline.recaller.store.save(args.store)
    print_json(
        {
            "output": str(args.output),
            "items": count,
            "mode": pipeline.mode,
            "engine": pipeline.engine.name if pipeline.engine else None,
            "seconds": round(elapsed, 2),
            "items_per_s": round(count / elapsed, 3) if elapsed else None,
            "stage_seconds": {k: round(v, 2) for k, v in pipeline.times.seconds.items()},
            "sent_to_llm": pipeline.times.sent_to_llm,
            "route": pipeline.plan.describe(),
        }
    )
    return 0


def bulk_runner():
    """The bulk tagging job of the installed cluster layer (entry point ``llm4tag.bulk``)."""
    found = sorted(entry_points(group="llm4tag.bulk"), key=lambda e: e.name)
    if not found:
        raise LLM4TagError(
            "bulk tagging needs the cluster layer (cluster/bulk.py on Ray Data), which is not installed"
        )
    return found[0].load()


def run_bulk(args) -> int:
    """``--output DIR/`` (or --bulk, --address): the job on Ray Data, resumable."""
    if args.limit is not None:
        raise LLM4TagError("--limit does not apply to bulk tagging (a rerun resumes where a job stopped)")
    if args.write_back:
        raise LLM4TagError("--write-back does not apply to bulk tagging: the actors hold read-only stores")
    settings = settings_of(args)
    if settings.pipeline.write_back:
        raise LLM4TagError("pipeline.write_back does not apply to bulk tagging")
    report = bulk_runner()(
        args.input,
        args.output,
        args.store,
        settings,
        address=args.address,
        split=args.split,
        with_candidates=args.candidates,
        with_dropped=args.dropped,
    )
    print_json(report.to_dict())
    if report.rejected:
        print(
            f"llm4tag tag: {report.rejected} input row(s) rejected, listed with reasons in {report.rejects}",
            file=sys.stderr,
        )
        if args.strict:
            return EXIT_REJECTED
    return 0


def run_baseline(args) -> int:
    if args.method == "llm4tag":
        raise LLM4TagError("--store is required for --method llm4tag (--tags serves the baseline methods)")
    if _bulk(args):
        raise LLM4TagError("bulk mode runs --method llm4tag only; baseline methods write one file")
    if (args.store is None) == (args.tags is None):
        raise LLM4TagError(f"--method {args.method} needs exactly one of --store and --tags")
    settings = llm_settings(args, args.output)
    items = read_items(args.input, split=args.split).items[: args.limit]
    tagger = open_baseline(args.method, settings, store_dir=args.store, tags_path=args.tags)
    started = time.perf_counter()
    with step(f"tag ({args.method})", total=len(items)) as bar:
        count = write_records(args.output, bar.counted(tag_rows(tagger, items, settings.pipeline.batch_size)))
    elapsed = time.perf_counter() - started
    summary = {"output": str(args.output), "items": count, "method": args.method}
    summary["max_tags"] = tagger.max_tags
    summary["seconds"] = round(elapsed, 2)
    summary["items_per_s"] = round(count / elapsed, 3) if elapsed else None
    print_json(summary)
    return 0
