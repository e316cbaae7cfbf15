"""`llm4tag feedback`: corrected annotations become retrievable samples and graph edges at once."""

from __future__ import annotations

import json

from llm4tag.cli.common import add_config, print_json
from llm4tag.config import load_settings
from llm4tag.data import read_items
from llm4tag.errors import DataError, LLM4TagError
from llm4tag.pipeline import TaggingPipeline


def register(verbs) -> None:
    feedback = verbs.add_parser(
        "feedback", help="record corrected annotations: retrievable samples and graph edges at once"
    )
    feedback.add_argument("--store", required=True)
    feedback.add_argument(
        "--input", required=True, help="items with their correct 'tags' and optional 'incorrect_tags'"
    )
    feedback.add_argument(
        "--reviewer",
        help="who reviewed these corrections (recorded; only reviewed feedback may enter the held-out "
        "items that decide whether `llm4tag retrain` promotes an adapter)",
    )
    add_config(feedback)
    feedback.set_defaults(run=run)


def incorrect_tags(path: str, items) -> list[list[str]]:
    """Each item's ``incorrect_tags`` (a list, or in CSV a JSON array or a |-separated cell)."""
    incorrect = []
    for item in items:
        wrong = item.extra.get("incorrect_tags", [])
        if isinstance(wrong, str):
            wrong = json.loads(wrong) if wrong.startswith("[") else [t for t in wrong.split("|") if t]
        if not isinstance(wrong, list) or not all(isinstance(t, str) for t in wrong):
            raise DataError(path, f"item '{item.id}': must be a list of strings", field="incorrect_tags")
        incorrect.append(wrong)
    return incorrect


def run(args) -> int:
    items = read_items(args.input).items
    incorrect = incorrect_tags(args.input, items)
    pipeline = TaggingPipeline.open(args.store, load_settings(args.config), load_engine=False, writable=True)
    if args.reviewer is not None and not args.reviewer.strip():
        raise LLM4TagError("--reviewer is empty: name who reviewed the feedback")
    count = pipeline.feedback(items, incorrect, sender="cli", reviewer=args.reviewer)
    # Both writes are durable already (fsynced logs); a save folds the journal into a new version.
    pipeline.recaller.store.save(args.store)
    print_json({"store": str(args.store), "feedback_items": count, "samples": len(pipeline.samples)})
    return 0
