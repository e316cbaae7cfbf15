"""`llm4tag retrain`: data from annotations + feedback, train, evaluate on a held-out split, promote
if not worse (exit 0 promoted or nothing new, 3 kept the active adapters; for cron)."""

from __future__ import annotations

from llm4tag.cli.common import finetune_settings, print_json
from llm4tag.errors import LLM4TagError
from llm4tag.finetune.retrain import retrain


def register(verbs) -> None:
    parser = verbs.add_parser(
        "retrain",
        help="data from annotations + feedback, train, evaluate on a held-out split, promote if not worse",
    )
    parser.add_argument("--items", required=True, help="annotated items (all accumulated annotations)")
    parser.add_argument("--tags", required=True, help="tag vocabulary")
    parser.add_argument("--store", help="the served store: its feedback is mixed in")
    parser.add_argument(
        "--adapters",
        required=True,
        help="adapter registry folder: versions, active.json (what serving loads), promotions.jsonl",
    )
    parser.add_argument("--split", default="train")
    parser.add_argument("--knowledge", action="append", default=[])
    parser.add_argument("--model", help="base LLM (default: config llm.model)")
    parser.add_argument("--max-steps", type=int, help="override finetune.cpu/gpu.max_steps")
    parser.add_argument("--eval-items", type=int, help="held-out items to evaluate (default: config)")
    parser.add_argument("--force", action="store_true", help="train even if nothing is new")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--config", help="settings YAML")
    parser.set_defaults(run=run)


def run(args) -> int:
    settings = finetune_settings(args)
    if args.eval_items is not None and args.eval_items < 1:
        raise LLM4TagError(f"--eval-items must be at least 1, got {args.eval_items}")
    report = retrain(
        settings,
        args.items,
        args.tags,
        args.adapters,
        store=args.store,
        split=args.split,
        knowledge=args.knowledge,
        eval_items=args.eval_items,
        force=args.force,
        progress=not args.no_progress,
    )
    print_json(report, default=str)
    return report["exit_code"]
