"""What several verbs share: the --config option, settings with the command line's overrides."""

from __future__ import annotations

import argparse
import json
from typing import Any

from graph_store.durable import write_atomically
from llm4tag.config import Settings, load_settings
from llm4tag.data import detect_format
from llm4tag.errors import LLM4TagError


def add_config(parser: argparse.ArgumentParser, what: str = "settings YAML (every section optional)") -> None:
    parser.add_argument("--config", help=f"{what}; defaults if omitted")


def positive(args: argparse.Namespace, name: str, flag: str | None = None) -> None:
    value = getattr(args, name, None)
    if value is not None and value < 1:
        raise LLM4TagError(f"{flag or '--' + name.replace('_', '-')} must be at least 1, got {value}")


def settings_of(args: argparse.Namespace) -> Settings:
    """The --config settings with the command line's --model and --engine over them."""
    llm = {k: getattr(args, k) for k in ("model", "engine") if getattr(args, k, None)}
    return load_settings(args.config).with_overrides({"llm": llm})


def llm_settings(args: argparse.Namespace, output: str) -> Settings:
    """Settings for a verb that runs the LLM and writes ``output``: checked before any work is done."""
    positive(args, "limit")
    detect_format(output)  # an unwritable output format fails before any model loads
    return settings_of(args)


def print_json(summary: dict[str, Any], **kwargs) -> None:
    print(json.dumps(summary, **kwargs), flush=True)


def write_report(path: str, report: dict[str, Any]) -> None:
    """A verb's JSON report file, written atomically (a crash leaves the old file or the new one)."""
    write_atomically(path, (json.dumps(report, indent=2, default=str) + "\n").encode())


def finetune_settings(args: argparse.Namespace) -> Settings:
    """The fine-tuning verbs' settings: --model and --max-steps over the --config settings."""
    overrides: dict = {}
    if getattr(args, "model", None):
        overrides["llm"] = {"model": args.model}
    if getattr(args, "max_steps", None) is not None:
        if args.max_steps < 1:
            raise LLM4TagError(f"--max-steps must be at least 1, got {args.max_steps}")
        steps = {"max_steps": args.max_steps}
        overrides["finetune"] = {"cpu": steps, "gpu": steps}
    return load_settings(args.config).with_overrides(overrides)
