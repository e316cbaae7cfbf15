"""Where the benchmarks find the shared data, the bundled sample and their caches, and the command-line
arguments they share. Standard library only: annif_peer.py runs it in Annif's own virtualenv.

Every benchmark builds its parser with :func:`benchmark_parser` and adds the shared arguments it
needs, so that the same flag means the same thing in every script:

    --data DIR        the shared data sets (default ../shared/data from the repository root)
    --cache DIR       cached encodings and stores (default .bench-cache)
    --datasets A,B    which data sets (a list); --dataset NAME where a script runs one
    --out DIR         where the script writes its tables, rows and plots (default out/<script>)
    --limit N         at most N test items (alias --n); what "first" means is in the script's help
    --seed S          the seed of every sample the script draws
    --rebuild         build the cached store again (benchmarks/_stores.py)
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
DEFAULT_CACHE = REPO / ".bench-cache"
OUT = REPO / "out"
SAMPLE = REPO / "data" / "sample"
SAMPLE_RULES = SAMPLE / "knowledge" / "banking77_rules.md"  # the BANKING77 sample's domain knowledge
DATASETS = ("debian_debtags", "flipkart_products", "banking77")


def benchmark_parser(file: str, doc: str | None) -> argparse.ArgumentParser:
    """The parser of the benchmark in ``file`` (its ``__file__``), run as ``python -m
    benchmarks.NAME``; its help is the module's docstring as written."""
    return argparse.ArgumentParser(
        prog=f"python -m benchmarks.{Path(file).stem}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def names(value: str) -> list[str]:
    """A comma-separated list (``--datasets a,b``), blanks dropped."""
    return [part.strip() for part in value.split(",") if part.strip()]


def add_data_arguments(parser: argparse.ArgumentParser, cache: bool = True) -> None:
    """``--data`` (the shared data sets) and, with ``cache``, ``--cache``."""
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="the shared data sets (default: ../shared/data)"
    )
    if cache:
        add_cache_argument(parser)


def add_cache_argument(parser: argparse.ArgumentParser) -> None:
    """``--cache``: cached encodings and stores (benchmarks/_stores.py)."""
    parser.add_argument(
        "--cache",
        type=Path,
        default=DEFAULT_CACHE,
        help="cached encodings and stores (default: .bench-cache)",
    )


def add_datasets_argument(parser: argparse.ArgumentParser, default: Sequence[str] = DATASETS) -> None:
    """``--datasets a,b`` as a list of names."""
    parser.add_argument("--datasets", type=names, default=list(default), help=f"default: {','.join(default)}")


def add_dataset_argument(parser: argparse.ArgumentParser, default: str = "banking77") -> None:
    """``--dataset NAME``, for a script that runs one data set at a time."""
    parser.add_argument("--dataset", default=default, help=f"default: {default}")


def add_out_argument(parser: argparse.ArgumentParser, default: Path, what: str = "") -> None:
    """``--out``; ``what``: what the folder is, where it is not just this script's output."""
    shown_default = f"default: {shown(default)}"
    parser.add_argument(
        "--out", type=Path, default=default, help=f"{what} ({shown_default})" if what else shown_default
    )


def add_limit_argument(
    parser: argparse.ArgumentParser,
    default: int | None,
    help: str,
    type: Callable[[str], object] = int,
) -> None:
    """``--limit`` (and its older name ``--n``): how many test items the script tags or scores."""
    parser.add_argument("--limit", "--n", dest="limit", type=type, default=default, help=help)


def add_seed_argument(parser: argparse.ArgumentParser, default: int = 0, help: str | None = None) -> None:
    parser.add_argument(
        "--seed", type=int, default=default, help=help or f"seed of the samples drawn (default {default})"
    )


def add_rebuild_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rebuild",
        action="store_true",
        help="build the cached store again (after a change to the code that builds or fits it)",
    )


def shown(path: Path) -> str:
    """``path`` relative to the repository root where it is inside it (for messages)."""
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def show_progress() -> None:
    """The product's progress lines (llm4tag/progress.py: a step's start, end, and where it is) on
    stderr, as the CLI shows them."""
    logging.basicConfig(level=logging.WARNING, format="# %(message)s")
    logging.getLogger("llm4tag.progress").setLevel(logging.INFO)
