"""`llm4tag vocab build`: a tag vocabulary from raw items with the LLM (TagGPT 2.1); `llm4tag vocab add`:
tags added to a built store."""

from __future__ import annotations

from pathlib import Path

from llm4tag.cli.common import add_config, llm_settings, print_json, write_report
from llm4tag.data import Tag, read_items, read_tags, write_records
from llm4tag.encoded_text import readable_tag
from llm4tag.encoder import Encoder
from llm4tag.engines import make_engine
from llm4tag.errors import LLM4TagError
from llm4tag.evaluation.plots import popularity_histogram
from llm4tag.store_tags import add_tags
from llm4tag.vocab import VocabularyBuilder, vocabulary_coverage


def register(verbs) -> None:
    vocab = verbs.add_parser(
        "vocab", help="build a tag vocabulary from raw items with the LLM (TagGPT), or add tags to a store"
    )
    vocab_verbs = vocab.add_subparsers(dest="vocab_verb", required=True)
    build = vocab_verbs.add_parser("build", help="candidate tags per item, filtered and merged")
    build.add_argument("--items", required=True, help="raw items (their tags, if any, are ignored)")
    build.add_argument("--out", required=True, help="vocabulary file to write (tag, description, ...)")
    build.add_argument("--model", help="LLM: bundled name, alias (default, tiny) or HF folder")
    build.add_argument("--limit", type=int, help="use only the first N items")
    build.add_argument("--split", help="use only items of this split")
    build.add_argument("--cache", help="per-item LLM answers, resumable (default: OUT with .answers.jsonl)")
    build.add_argument("--reference", help="a vocabulary file to report the coverage of")
    build.add_argument("--report", help="also write the measures as JSON here")
    build.add_argument("--plots", help="write the tag-popularity histogram PNG here")
    add_config(build)
    build.set_defaults(run=run)
    add = vocab_verbs.add_parser(
        "add", help="add tags to a built store: recallable at once by every process that follows it"
    )
    add.add_argument("--store", required=True, help="store folder (built by `llm4tag build`)")
    which = add.add_mutually_exclusive_group(required=True)
    which.add_argument("--tag", help="the tag's name")
    which.add_argument("--tags", help="a tags file as `build` reads it (tag, description, ...)")
    add.add_argument("--description", help="the tag's description (with --tag)")
    add.set_defaults(run=run_add)


def run_add(args) -> int:
    if args.tags and args.description is not None:
        raise LLM4TagError("--description goes with --tag; a --tags file holds each tag's description")
    tags = read_tags(args.tags) if args.tags else [Tag(tag=args.tag, description=args.description)]
    print_json(add_tags(args.store, tags))
    return 0


def run(args) -> int:
    settings = llm_settings(args, args.out)
    items = read_items(args.items, split=args.split).items[: args.limit]
    if not items:
        raise LLM4TagError(f"{args.items} holds no items to build a vocabulary from")
    reference = read_tags(args.reference) if args.reference else None
    out = Path(args.out)
    cache = Path(args.cache) if args.cache else out.with_name(out.name.split(".")[0] + ".answers.jsonl")
    encoder = Encoder(settings.encoder)
    builder = VocabularyBuilder(make_engine(settings.llm), encoder, settings)
    answers, stats = builder.answers(items, cache)
    result = builder.build(items, answers)
    if not result.rows:
        raise LLM4TagError(
            f"no tag survived the frequency filter ({result.stats}); use more items or lower vocab.min_count"
        )
    write_records(out, result.rows)
    summary = {"out": str(out), "cache": str(cache), **stats, **result.stats, "measures": result.measures}
    summary["seconds"] = round(stats["seconds"], 1)
    if reference is not None:
        labels = [readable_tag(t.tag) for t in reference]
        coverage = vocabulary_coverage(
            labels,
            encoder.encode(labels),
            result.tags,
            encoder.encode(result.tags),
            settings.vocab.redundancy_threshold,
        )
        summary["coverage"] = {k: v for k, v in coverage.items() if k not in ("matches", "nearest")}
    if args.plots:
        path = popularity_histogram(
            {"built": result.measures["popularity_hist"]}, Path(args.plots) / "popularity.png"
        )
        summary["plot"] = str(path)
    if args.report:
        write_report(args.report, summary)
    print_json(summary, default=str)
    return 0
