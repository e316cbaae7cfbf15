"""`llm4tag build`: the graph store and its knowledge bases from annotated items and a vocabulary."""

from __future__ import annotations

from pathlib import Path

from llm4tag.cascade_fit import fit_store_cascade
from llm4tag.cli.common import add_config, print_json
from llm4tag.config import load_settings
from llm4tag.ranking.store_routing import ranking_dir
from llm4tag.store_builder import build_store_from_files


def register(verbs) -> None:
    build = verbs.add_parser("build", help="build the graph store from annotated items and a tag vocabulary")
    build.add_argument(
        "--items",
        help="annotated items (JSONL[.gz], Parquet or CSV); without it, a vocabulary-only store: recall by "
        "the tags' names, descriptions and knowledge, the LLM choosing",
    )
    build.add_argument(
        "--tags",
        required=True,
        help="tag vocabulary (JSONL[.gz], Parquet or CSV; or SKOS: .ttl, .rdf, .nt, .jsonld)",
    )
    build.add_argument("--language", help="SKOS: the language of the labels and notes to use (e.g. en)")
    build.add_argument("--store", required=True, help="store folder (created, or given a new version)")
    build.add_argument("--split", help="use only items whose 'split' field has this value (e.g. train)")
    build.add_argument(
        "--strict-tags", action="store_true", help="reject items with tags not in the vocabulary"
    )
    build.add_argument("--shards", type=int, default=1, help="content shards (default 1)")
    build.add_argument(
        "--knowledge",
        action="append",
        default=[],
        help="domain knowledge file (JSONL or Markdown: definitions, tagging rules); repeatable",
    )
    add_config(
        build,
        "settings YAML (sections encoder, texts, graph, ranking; llm and prompts with ranking.cascade_items)",
    )
    build.set_defaults(run=run)


def run(args) -> int:
    settings = load_settings(args.config)
    summary = build_store_from_files(
        args.store,
        args.items,
        args.tags,
        settings,
        split=args.split,
        strict_tags=args.strict_tags,
        shards=args.shards,
        knowledge_files=args.knowledge,
        language=args.language,
    )
    if settings.ranking.cascade_items and (ranking_dir(Path(args.store)) / "manifest.json").exists():
        summary["cascade"] = fit_store_cascade(args.store, settings, settings.ranking.cascade_items)
    print_json(summary)
    return 0
