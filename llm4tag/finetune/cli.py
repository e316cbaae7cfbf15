"""The fine-tuning verbs of `llm4tag`: train-data, train, retrain (registered by ``add_commands``)."""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from llm4tag.errors import LLM4TagError


def add_commands(verbs) -> None:
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
    data.add_argument("--selection", choices=["diverse", "balanced", "random", "all"])
    data.add_argument("--config", help="settings YAML (finetune, pipeline, prompts, graph, encoder ...)")

    train = verbs.add_parser("train", help="LoRA fine-tuning (PEFT) of the generator or the calibrator")
    train.add_argument("role", choices=["generator", "calibrator"])
    train.add_argument("--data", required=True, help="folder written by `llm4tag train-data`")
    train.add_argument("--out", required=True, help="adapter folder to create (never overwritten)")
    train.add_argument("--model", help="base LLM: bundled name, alias (default, tiny) or HF folder")
    train.add_argument("--max-steps", type=int, help="override finetune.cpu/gpu.max_steps")
    train.add_argument("--restart", action="store_true", help="discard checkpoints instead of resuming")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--config", help="settings YAML")

    retrain = verbs.add_parser(
        "retrain",
        help="data from annotations + feedback, train, evaluate on a held-out split, promote if not worse",
    )
    retrain.add_argument("--items", required=True, help="annotated items (all accumulated annotations)")
    retrain.add_argument("--tags", required=True, help="tag vocabulary")
    retrain.add_argument("--store", help="the served store: its feedback is mixed in")
    retrain.add_argument(
        "--adapters",
        required=True,
        help="adapter registry folder: versions, active.json (what serving loads), promotions.jsonl",
    )
    retrain.add_argument("--split", default="train")
    retrain.add_argument("--knowledge", action="append", default=[])
    retrain.add_argument("--model", help="base LLM (default: config llm.model)")
    retrain.add_argument("--max-steps", type=int, help="override finetune.cpu/gpu.max_steps")
    retrain.add_argument("--eval-items", type=int, help="held-out items to evaluate (default: config)")
    retrain.add_argument("--force", action="store_true", help="train even if nothing is new")
    retrain.add_argument("--no-progress", action="store_true")
    retrain.add_argument("--config", help="settings YAML")


def _settings(args):
    from llm4tag.config import load_settings

    settings = load_settings(args.config)
    if getattr(args, "model", None):
        settings.llm.model = args.model
    if getattr(args, "max_steps", None) is not None:
        if args.max_steps < 1:
            raise LLM4TagError(f"--max-steps must be at least 1, got {args.max_steps}")
        settings.finetune.cpu.max_steps = settings.finetune.gpu.max_steps = args.max_steps
    return settings


def read_pool(items_path: str, tags_path: str, split: str | None):
    """The annotated items of ``split`` (when the file has splits) and the vocabulary."""
    from llm4tag.data import read_items, read_tags

    tags = read_tags(tags_path)
    items = read_items(items_path, vocabulary={t.tag for t in tags}).items
    if split and any("split" in i.extra for i in items):
        items = [i for i in items if i.extra.get("split") == split]
    items = [i for i in items if i.tags]
    if not items:
        raise LLM4TagError(
            f"{items_path} holds no annotated items" + (f" of split '{split}'" if split else "")
        )
    return items, tags


def build_data(settings, items, tags, out, *, store=None, knowledge=(), exclude=(), verbose=True) -> dict:
    from llm4tag.encoder import Encoder
    from llm4tag.finetune.data import (
        build_examples,
        item_digest,
        load_feedback,
        merge_feedback,
        stats_dict,
        write_training_data,
    )

    excluded = set(exclude)
    incorrect, reviewed = {}, set()
    if store and settings.finetune.data.use_feedback:
        items, incorrect, reviewed = merge_feedback(items, load_feedback(store))
    items = [i for i in items if i.id not in excluded and i.tags]
    say = (lambda msg: print(f"train-data: {msg}", file=sys.stderr)) if verbose else None
    gen, cal, stats = build_examples(
        items,
        tags,
        settings,
        Encoder(settings.encoder),
        knowledge_files=list(knowledge),
        incorrect=incorrect,
        progress=say,
    )
    manifest = write_training_data(
        out,
        {"generator": gen, "calibrator": cal},
        {
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "mode": stats.mode,
            "stats": stats_dict(stats),
            "settings": {"data": settings.finetune.data.__dict__, "recall": settings.graph.recall.__dict__},
            "feedback_ids": sorted(reviewed),
            "excluded": len(excluded),
            # Per item id, a digest of its text and tags: retrain compares these to find what is new.
            "items": {i.id: item_digest(i) for i in items},
        },
    )
    return manifest


def cmd_train_data(args) -> int:
    from llm4tag.data import read_items

    settings = _settings(args)
    if args.max_items is not None:
        if args.max_items < 1:
            raise LLM4TagError(f"--max-items must be at least 1, got {args.max_items}")
        settings.finetune.data.max_items = args.max_items
    if args.selection:
        settings.finetune.data.selection = args.selection
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
    print(
        json.dumps(
            {
                "out": args.out,
                "hash": manifest["hash"],
                "counts": manifest["counts"],
                **{
                    k: manifest["stats"][k]
                    for k in (
                        "pool",
                        "selected",
                        "gold_not_recalled",
                        "injected",
                        "dropped_unrecalled",
                        "feedback_items",
                        "mode",
                        "seconds",
                    )
                },
            }
        )
    )
    return 0


def cmd_train(args) -> int:
    from llm4tag.finetune.train import train

    settings = _settings(args)
    started = time.perf_counter()
    manifest = train(
        args.role,
        args.data,
        args.out,
        settings,
        model=args.model,
        restart=args.restart,
        progress=not args.no_progress,
    )
    keys = ("role", "steps", "loss_before", "loss_after", "seconds", "peak_memory_mb", "device", "seed")
    summary = {"adapter": args.out, **{k: manifest.get(k) for k in keys}}
    summary["data_hash"] = manifest["data"]["hash"]
    summary["wall_s"] = round(time.perf_counter() - started, 2)
    print(json.dumps(summary))
    return 0


def cmd_retrain(args) -> int:
    from llm4tag.finetune.retrain import retrain

    settings = _settings(args)
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
    print(json.dumps(report, default=str))
    return report["exit_code"]


COMMANDS = {"train-data": cmd_train_data, "train": cmd_train, "retrain": cmd_retrain}
