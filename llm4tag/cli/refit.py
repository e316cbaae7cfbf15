"""`llm4tag refit`: the learned recall and the ranker fitted again on a store's annotations as they are
now (after feedback and write-back), with the cross-fitting of `llm4tag build`; with
``--cascade-items N``, then the LLM's outcomes on N held-out annotated items, and route: auto's tau and
the final calibration fitted on them (``--cascade-only`` keeps the ranking as it is)."""

from __future__ import annotations

from llm4tag.cascade_fit import fit_store_cascade
from llm4tag.cli.common import add_config, print_json
from llm4tag.config import load_settings
from llm4tag.errors import LLM4TagError
from llm4tag.store_builder import refit_store_ranking


def register(verbs) -> None:
    refit = verbs.add_parser(
        "refit", help="refit the learned recall and the ranker on the store's current annotations"
    )
    refit.add_argument("--store", required=True, help="store folder built by `llm4tag build`")
    add_config(refit, "settings YAML (sections encoder, texts, graph, llm, prompts, pipeline, ranking)")
    refit.add_argument(
        "--cascade-items",
        type=int,
        default=None,
        help="held-out annotated items the LLM tags to fit route: auto (default: ranking.cascade_items)",
    )
    refit.add_argument(
        "--cascade-only", action="store_true", help="fit the cascade on the ranking as it is (no refit)"
    )
    refit.add_argument("--seed", type=int, default=0, help="which held-out items (a fixed order per seed)")
    refit.set_defaults(run=run)


def run(args) -> int:
    settings = load_settings(args.config)
    items = settings.ranking.cascade_items if args.cascade_items is None else args.cascade_items
    if args.cascade_only and not items:
        raise LLM4TagError("--cascade-only needs --cascade-items N (N > 0)")
    summary = {} if args.cascade_only else refit_store_ranking(args.store, settings)
    if items:
        summary["cascade"] = fit_store_cascade(args.store, settings, items, seed=args.seed)
    print_json(summary)
    return 0
