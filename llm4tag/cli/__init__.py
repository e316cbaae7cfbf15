"""`llm4tag`: one command with verbs that follow the workflow, one module per verb (``register`` adds
its parser, ``run`` runs it), as vLLM's ``entrypoints/cli``.

The verbs of the Ray layers (``serve`` in deployments/cli.py) register through the entry-point group
``llm4tag.cli``, and bulk tagging (``tag --output DIR/``, cluster/bulk.py) through ``llm4tag.bulk``:
the core names neither and imports no Ray (a layer's module loads only when its verb runs).
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import entry_points

from graph_store import StoreError
from llm4tag.cli import (
    augment,
    build,
    feedback,
    models,
    recall,
    refit,
    retrain,
    review,
    tag,
    train,
    train_data,
    vocab,
)
from llm4tag.cli import eval as evaluate
from llm4tag.errors import LLM4TagError
from llm4tag.flow import FeedbackIncomplete

EXIT_FAILED = 1  # a write that did not complete (say which; the same command again is safe)
EXIT_USAGE = 2  # bad input or configuration
# 3: `tag --output DIR/ --strict` set input rows aside (llm4tag.cli.tag.EXIT_REJECTED)
CORE_VERBS = (
    build,
    recall,
    tag,
    feedback,
    evaluate,
    vocab,
    models,
    train_data,
    train,
    retrain,
    review,
    refit,
    augment,
)


def plugins() -> list:
    """The verbs installed layers add (entry points of group ``llm4tag.cli``), by name."""
    return sorted(entry_points(group="llm4tag.cli"), key=lambda e: e.name)


def parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="llm4tag", description="LLM4Tag automatic tagging")
    root.add_argument("-v", "--verbose", action="store_true", help="log progress")
    verbs = root.add_subparsers(dest="verb", required=True)
    for module in CORE_VERBS:
        module.register(verbs)
    # A layer's verb module is imported only when that verb runs: `llm4tag serve` needs Ray, the
    # other verbs should not pay for importing it.
    wanted = next((a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")), None)
    for plugin in plugins():
        if plugin.name == wanted:
            plugin.load().register(verbs)
        else:
            verbs.add_parser(plugin.name, help=f"see `llm4tag {plugin.name} -h` ({plugin.value})")
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser(argv).parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    # Long work says what it does (llm4tag/progress.py: a line per step) without --verbose.
    logging.getLogger("llm4tag.progress").setLevel(logging.INFO)
    try:
        return args.run(args)
    except FeedbackIncomplete as exc:
        print(f"llm4tag {args.verb}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (LLM4TagError, StoreError) as exc:
        print(f"llm4tag {args.verb}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
