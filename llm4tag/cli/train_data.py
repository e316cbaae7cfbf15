"""`llm4tag train-data`: fine-tuning examples (generator + calibrator) from annotated items and feedback."""

from __future__ import annotations

from pathlib import Path

from llm4tag.cli.common import finetune_settings, print_json
from llm4tag.data import read_items
from llm4tag.errors import LLM4TagError
from llm4tag.finetune.training_data import SELECTIONS, build_data, read_pool

SUMMARY_STATS = (
    "pool",
    "selected",
    "gold_not_recalled",
    "injected",
    "dropped_unrecalled",
    "feedback_items",
    "mode",
    "seconds",
)


def register(verbs) -> None:
    data = verbs.add_parser(
        "train-data", help="fine-tuning examples (generator + calibrator) from annotated items and feedback"
    )
    data.add_argument("--items", required=True, help="annotated items (JSONL[.gz], Parquet or CSV)")
    data.add_argument("--tags", required=True, help="tag vocabulary")
    data.add_argument(
        "--out", required=True, help="output folder (generator.jsonl, calibrator.jsonl, manifest.json)"
    )
    data.add_argument(
        "--split",
        default="train",
        help="items carrying a 'split' field: use only this one (default train; other splits never enter)",
    )
    data.add_argument("--store", help="mix in the human-reviewed feedback recorded in this store")
    data.add_argument("--knowledge", action="append", default=[], help="domain knowledge file; repeatable")
    data.add_argument("--exclude", help="file of items whose ids never enter the data (e.g. a held-out set)")
    data.add_argument("--max-items", type=int, help="items to build examples for (default: config)")
    data.add_argument("--selection", choices=list(SELECTIONS))
    data.add_argument("--config", help="settings YAML (finetune, pipeline, prompts, graph, encoder ...)")
    data.set_defaults(run=run)


def run(args) -> int:
    settings = finetune_settings(args)
    data: dict = {}
    if args.max_items is not None:
        if args.max_items < 1:
            raise LLM4TagError(f"--max-items must be at least 1, got {args.max_items}")
        data["max_items"] = args.max_items
    if args.selection:
        data["selection"] = args.selection
    settings = settings.with_overrides({"finetune": {"data": data}})
    for path in args.knowledge:
        if not Path(path).is_file():
            raise LLM4TagError(f"knowledge file {path} does not exist")
    if args.store and not Path(args.store).is_dir():
        raise LLM4TagError(f"store {args.store} does not exist")
    items, tags = read_pool(args.items, args.tags, args.split)
    exclude = [i.id for i in read_items(args.exclude).items] if args.exclude else []
    manifest = build_data(
        settings, items, tags, args.out, store=args.store, knowledge=args.knowledge, exclude=exclude
    )
    print_json(
        {
            "out": args.out,
            "hash": manifest["hash"],
            "counts": manifest["counts"],
            **{k: manifest["stats"][k] for k in SUMMARY_STATS},
        }
    )
    return 0
