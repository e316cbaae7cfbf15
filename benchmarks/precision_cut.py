"""Does ``pipeline.target_precision`` hold on test items? Per shared set, the ranker's cut for each
target is fitted on its held-out train folds (the store ``cascade_quality.py`` tags with: its copy in
``--out/<set>/store`` of the cached store, benchmarks/_stores.py), two ways:

* observed: the lowest threshold whose held-out precision reaches the target (the rule until December 2026);
* bound: the lowest threshold whose one-sided 95% Clopper-Pearson lower bound reaches it (shipped);

and each is applied to the ranker's rows for the WHOLE test split (``pipeline.route: 0``, the rows
cached in ``--out/<set>/ranker.jsonl`` beside cascade_quality.py's; --limit: the first N of the fixed
seeded order). Printed: the cut, the precision of
the kept tags on test with a 95% percentile bootstrap interval over the kept tags (multi-tag: the
shown top-5 tags, so tags of one item are resampled apart), and coverage (share of items whose top
tag is kept). Nothing is fitted on test.

    python -m benchmarks.precision_cut [--datasets banking77,flipkart_products,debian_debtags]
"""

from __future__ import annotations

import numpy as np

from benchmarks._datasets import dataset_settings, load_dataset, test_sample
from benchmarks._paths import (
    OUT,
    add_data_arguments,
    add_datasets_argument,
    add_limit_argument,
    add_out_argument,
    add_rebuild_argument,
    add_seed_argument,
    benchmark_parser,
)
from benchmarks._rows import run_llm
from benchmarks._stores import dataset_store
from benchmarks.cascade_quality import with_ranking
from llm4tag.encoder import Encoder
from llm4tag.evaluation.tables import format_table
from llm4tag.evaluation.tagging import bootstrap_interval
from llm4tag.pipeline import TaggingPipeline
from llm4tag.ranking.routing import CUT_CONFIDENCE

TARGETS = (0.9, 0.95, 0.98)
RULES = {"observed": None, f"bound ({CUT_CONFIDENCE:.0%})": CUT_CONFIDENCE}


def kept_at(rows: dict, gold: dict, emit: int, cut: float | None) -> tuple[list[bool], float]:
    """Right-or-wrong of every shown tag kept at ``cut``, and the share of items whose top tag is kept."""
    if cut is None:
        return [], 0.0
    right, covered = [], 0
    for item_id, tags in gold.items():
        shown = rows[item_id]["candidates"][:emit]
        right += [c["tag"] in tags for c in shown if c["confidence"] >= cut]
        covered += bool(shown) and shown[0]["confidence"] >= cut
    return right, covered / len(gold)


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__file__, __doc__)
    add_datasets_argument(parser)
    add_out_argument(parser, OUT / "cascade", "cascade_quality.py's --out")
    add_data_arguments(parser)
    add_limit_argument(parser, None, "test items per set (default: the whole test split)")
    add_seed_argument(parser)
    add_rebuild_argument(parser)
    args = parser.parse_args(argv)
    for name in args.datasets:
        settings = with_ranking(dataset_settings(name, {"route": 0.0}, "default", None))
        encoder = Encoder(settings.encoder)
        ds = load_dataset(name, args.data, settings, encoder, args.cache)
        folder = args.out / name
        store = dataset_store(
            ds, settings, encoder, args.cache, rebuild=args.rebuild, copy_to=folder / "store"
        )
        pipeline = TaggingPipeline.open(store, settings)
        items = test_sample(ds, args.limit, args.seed)
        rows, _ = run_llm(
            pipeline, items, folder / "ranker.jsonl", chunk=256, log_every=10, with_candidates=True
        )
        gold = {i.id: set(i.tags or ()) for i in items}
        models = pipeline.ranking.models
        table = []
        for target in TARGETS:
            for rule, confidence in RULES.items():
                cut = models.precision_cut(target, confidence)
                right, coverage = kept_at(rows, gold, models.emit, cut)
                if right:
                    value, low, high = bootstrap_interval(np.mean, right)
                    precision = f"{value:.4f} [{low:.4f}, {high:.4f}]"
                else:
                    precision = "nothing kept"
                table.append(
                    {
                        "target": f"{target:.2f}",
                        "rule": rule,
                        "cut": "none reaches it" if cut is None else f"{cut:.4f}",
                        "test precision of kept tags": precision,
                        "kept tags": str(len(right)),
                        "coverage": f"{coverage:.3f}",
                    }
                )
        print(f"\n## {name}: n = {len(items)} test items, {models.emit} shown tag(s) per item\n", flush=True)
        print(format_table(table, list(table[0])), flush=True)


if __name__ == "__main__":
    main()
