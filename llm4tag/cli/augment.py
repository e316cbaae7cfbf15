"""`llm4tag augment`: the LLM writes synthetic example items for the store's tags with few real
annotations (llm4tag/augment.py); ``--remove TAG`` / ``--clear`` take them out again."""

from __future__ import annotations

from llm4tag.augment import augment_store, remove_examples
from llm4tag.cli.common import add_config, print_json, settings_of
from llm4tag.errors import LLM4TagError


def register(verbs) -> None:
    augment = verbs.add_parser(
        "augment", help="synthetic example items for tags with few annotations (training data, never gold)"
    )
    augment.add_argument("--store", required=True, help="store folder built by `llm4tag build`")
    augment.add_argument("--k", type=int, help="examples per tag (default: augment.k)")
    augment.add_argument(
        "--min-annotations",
        type=int,
        help="augment tags with fewer real annotations (default: augment.min_annotations)",
    )
    augment.add_argument("--tags", nargs="+", metavar="NAME", help="augment these tags, however annotated")
    augment.add_argument("--model", help="LLM: bundled name, alias (default, tiny) or HF folder")
    augment.add_argument("--engine", choices=["llamacpp", "transformers", "vllm"], help="LLM engine")
    removal = augment.add_mutually_exclusive_group()
    removal.add_argument("--remove", nargs="+", metavar="TAG", help="remove these tags' synthetic examples")
    removal.add_argument("--clear", action="store_true", help="remove every synthetic example")
    add_config(augment, "settings YAML (sections llm, prompts, augment)")
    augment.set_defaults(run=run)


def run(args) -> int:
    if args.remove or args.clear:
        if args.tags or args.k is not None or args.min_annotations is not None:
            raise LLM4TagError("--remove and --clear take no --tags, --k or --min-annotations")
        print_json(remove_examples(args.store, None if args.clear else args.remove))
        return 0
    summary = augment_store(
        args.store, settings_of(args), k=args.k, min_annotations=args.min_annotations, tags=args.tags
    )
    print_json(summary)
    return 0
