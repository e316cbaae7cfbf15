"""`llm4tag refit`: the learned recall and the ranker fitted again on a store's annotations as they are
now (after feedback and write-back), with the cross-fitting of `llm4tag build`."""

from __future__ import annotations

from llm4tag.cli.common import add_config, print_json
from llm4tag.config import load_settings
from llm4tag.store_builder import refit_store_ranking


def register(verbs) -> None:
    refit = verbs.add_parser(
        "refit", help="refit the learned recall and the ranker on the store's current annotations"
    )
    refit.add_argument("--store", required=True, help="store folder built by `llm4tag build`")
    add_config(refit, "settings YAML (sections encoder, texts, graph, pipeline, ranking)")
    refit.set_defaults(run=run)


def run(args) -> int:
    print_json(refit_store_ranking(args.store, load_settings(args.config)))
    return 0
