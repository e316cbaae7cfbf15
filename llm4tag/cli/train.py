"""`llm4tag train generator|calibrator`: LoRA fine-tuning (PEFT) of one role's adapter."""

from __future__ import annotations

import time

from llm4tag.cli.common import finetune_settings, print_json
from llm4tag.finetune.train import train


def register(verbs) -> None:
    parser = verbs.add_parser("train", help="LoRA fine-tuning (PEFT) of the generator or the calibrator")
    parser.add_argument("role", choices=["generator", "calibrator"])
    parser.add_argument("--data", required=True, help="folder written by `llm4tag train-data`")
    parser.add_argument("--out", required=True, help="adapter folder to create (never overwritten)")
    parser.add_argument("--model", help="base LLM: bundled name, alias (default, tiny) or HF folder")
    parser.add_argument("--max-steps", type=int, help="override finetune.cpu/gpu.max_steps")
    parser.add_argument("--restart", action="store_true", help="discard checkpoints instead of resuming")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--config", help="settings YAML")
    parser.set_defaults(run=run)


def run(args) -> int:
    settings = finetune_settings(args)
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
    print_json(summary)
    return 0
