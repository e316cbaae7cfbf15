"""Where the benchmarks find the shared data and keep their caches, and the command-line arguments that
say so. No imports beyond the standard library: annif_peer.py runs it in Annif's own virtualenv."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
DEFAULT_CACHE = REPO / ".bench-cache"
DATASETS = ("debian_debtags", "flipkart_products", "banking77")


def add_data_arguments(parser: argparse.ArgumentParser, cache: bool = True) -> None:
    """``--data`` (the shared data sets) and, with ``cache``, ``--cache`` (encoded vectors)."""
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="the shared data sets (default: ../shared/data)"
    )
    if cache:
        parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="cached encodings")


def show_progress() -> None:
    """The product's progress lines (llm4tag/progress.py: a step's start, end, and where it is) on
    stderr, as the CLI shows them."""
    logging.basicConfig(level=logging.WARNING, format="# %(message)s")
    logging.getLogger("llm4tag.progress").setLevel(logging.INFO)
