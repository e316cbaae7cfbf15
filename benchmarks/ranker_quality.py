"""The learned recall and the fitted ranker against the baselines and Annif, on the WHOLE test split
of each shared data set (issue 17, bar a: the ranker alone at or above Annif Omikuji on every set).

    .venv-annif/bin/python -m benchmarks.annif_peer     # first: Annif's rows in out/annif/<set>/
    python -m benchmarks.ranker_quality [--datasets banking77,...] [--folds 5] [--limit N] [--rebuild]

Per set: a store from the train split with the ranking models fitted on train only (cross-fitted folds
for the ranker and its calibration, then the learned recall refitted on all of train), built once and
cached (benchmarks/_stores.py); every method tags every test item (--limit: the first N of a fixed
seeded order):

* match: the tags most similar to the item (cosine), confidence = cosine;
* kNN vote: similarity-weighted vote of the 10 nearest train items' tags, confidence = vote share;
* graph recall: today's candidate order (c2t + c2c2t), confidence = that score / 2;
* Annif Omikuji, Annif TF-IDF: the real Annif (benchmarks/annif_peer.py), confidence = Annif's score;
* learned recall alone, confidence = its score; ranker: calibrated P(tag right).

Every method shows the same number of tags per item (1 single-tag, 5 multi-tag). Metrics: P/R/F1
(single-tag) or Acc@1/2/3 (multi-tag) with 95% percentile bootstrap intervals over items and the
paired difference against Annif Omikuji; ECE of the shown tags' confidences; coverage at 95%
precision of the top tag (the best threshold on test, for every method: an oracle), and for the
ranker its cut fitted on held-out train folds as applied to test; seconds to fit (those of the
store's build, when it was read from the cache) and ms per item.
Writes out/ranker_quality/tables.md, results.json and <set>/accuracy_coverage.png.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from benchmarks._datasets import limit_test, load_dataset
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
from benchmarks._peers import (
    BASELINE,
    THRESHOLDS,
    Methods,
    add_peers,
    clip,
    coverage_at_precision,
    fmt_ci,
    fmt_diff,
    precision_and_coverage_at,
)
from benchmarks._stores import build_record, dataset_store
from graph_store import open_store
from llm4tag.config import Settings
from llm4tag.encoded_text import item_text
from llm4tag.encoder import Encoder
from llm4tag.evaluation.plots import accuracy_coverage_plot
from llm4tag.evaluation.tables import format_table
from llm4tag.evaluation.tagging import (
    MULTI_KEYS,
    SINGLE_KEYS,
    calibration_pairs,
    coverage_at_k,
    expected_calibration_error,
    metric_intervals,
    subject_scores,
    threshold_curve,
)
from llm4tag.ranking.cascade import final_tags, route_items
from llm4tag.ranking.store_routing import StoredRanking, load_ranking, route_plan


def run_dataset(name: str, args, settings: Settings, encoder: Encoder) -> dict:
    ds = limit_test(load_dataset(name, args.data, settings, encoder, args.cache), args.limit, args.seed)
    test_ids = [i.id for i in ds.test]
    test_texts = [item_text(i, settings.texts.item_fields) for i in ds.test]
    gold = {i.id: set(i.tags or ()) for i in ds.test}
    # Recall never reads the similarity edges among stored items: without them the peers' "fit" (the
    # store's graph) is the seconds a store they need takes.
    fitted = settings.with_overrides(
        {
            "graph": {"materialize_similarity": False},
            "ranking": {"enabled": "on", "ranker": {"folds": args.folds}},
        }
    )
    folder = dataset_store(ds, fitted, encoder, args.cache, rebuild=args.rebuild)
    store = open_store(folder)
    leaked = [i for i in test_ids if i in store.graph.content_pos]
    if leaked:
        raise SystemExit(f"{name}: test item {leaked[0]} is in the store")
    models = load_ranking(folder, encoder.id).models
    seconds = build_record(folder)["seconds"]
    store_s, ranking_fit_s = seconds["graph"], seconds["ranking"]
    models.assert_unseen(test_ids)
    multi = models.multi
    emit = models.ranker.emit
    task = "multi" if multi else "single"
    n = len(ds.test)

    found = Methods(test_ids)
    add_peers(found, store, ds.test_vectors, emit, args.annif / name, store_s)
    found.timed(
        "learned recall alone",
        lambda: [
            [{"tag": t, "confidence": clip(s)} for t, s in pred]
            for pred in models.learned.predict(test_texts, ds.test_vectors, emit)
        ],
        models.learned.fit_seconds,
    )

    scored: list = []

    def ranker_rows():
        scored.extend(models.score(store, test_texts, ds.test_vectors, test_ids))
        return [[{"tag": s.tag, "confidence": s.probability} for s in item[:emit]] for item in scored]

    found.timed("**ranker**", ranker_rows, ranking_fit_s)
    # What `llm4tag tag` keeps with route: auto (nothing sent to the LLM without held-out LLM
    # outcomes): the store's fitted output rule, and the fixed pipeline.threshold it replaces.
    for label, threshold_set in (
        ("shipped default (fitted output rule)", False),
        ("ranker at pipeline.threshold", True),
    ):
        plan = route_plan(
            StoredRanking(models),
            route="auto",
            threshold=settings.pipeline.threshold,
            target_precision=None,
            num_candidates=settings.graph.recall.num_candidates,
            threshold_set=threshold_set,
        )
        found.add(
            label,
            {
                item_id: [{"tag": t.tag, "confidence": t.confidence} for t in final_tags(r, plan) if t.kept]
                for item_id, r in zip(test_ids, route_items(scored, plan), strict=True)
            },
            ranking_fit_s,
            found.item_ms["**ranker**"],
        )
    methods, fit_s, item_ms = found.rows, found.fit_s, found.item_ms

    baseline = methods.get(BASELINE)
    keys = MULTI_KEYS if multi else SINGLE_KEYS
    table, results = [], {}
    for label, preds in methods.items():
        intervals = metric_intervals(gold, preds, task, baseline=None if label == BASELINE else baseline)
        ece = expected_calibration_error(calibration_pairs(gold, preds))
        coverage, oracle_cut = coverage_at_precision(gold, preds)
        row = {"method": label}
        for key in keys:
            row[key] = fmt_ci(intervals[key])
        first = keys[0] if multi else "f1"
        row[f"{first} − Annif Omikuji"] = fmt_diff(intervals[first])
        if multi:
            subject = subject_scores(gold, preds)
            row["F1@5"] = f"{subject['f1@5']:.4f}"
            row["Acc@1 (all items)"] = f"{subject['acc@1_all']:.4f}"
            row["coverage@1"] = f"{coverage_at_k(gold, preds, 1):.3f}"
        row["ECE"] = f"{ece['ece']:.4f}"
        row["coverage @95% precision"] = f"{coverage:.3f}"
        row["fit s"] = f"{fit_s[label]:.1f}"
        row["ms/item"] = f"{item_ms[label]:.2f}"
        table.append(row)
        results[label] = {
            "metrics": intervals,
            "ece": ece["ece"],
            "coverage_at_95_precision": coverage,
            "oracle_cut": oracle_cut,
            "fit_seconds": fit_s[label],
            "ms_per_item": item_ms[label],
        }
    # Where annotations are scarce: test items whose gold tags have no (or few) train annotations.
    counts: dict[str, int] = {}
    for item in ds.train:
        for t in item.tags or ():
            counts[t] = counts.get(t, 0) + 1
    scarce = {}
    for label_range, lo, hi in (("0", 0, 0), ("1-4", 1, 4)):
        subset = [i for i in ds.test if all(lo <= counts.get(t, 0) <= hi for t in i.tags or ())]
        scarce[label_range] = {
            "items": len(subset),
            "top1_right": {
                label: float(np.mean([bool(p[i.id]) and p[i.id][0]["tag"] in gold[i.id] for i in subset]))
                if subset
                else float("nan")
                for label, p in methods.items()
            },
        }
    ranker_preds = methods["**ranker**"]
    cut_precision, cut_coverage = precision_and_coverage_at(gold, ranker_preds, models.cut)
    results["**ranker**"]["held_out_cut"] = {
        "cut": models.cut,
        "test_precision": cut_precision,
        "test_coverage": cut_coverage,
        "held_out_metrics": models.metrics,
    }
    curves = {
        label.strip("*"): threshold_curve(gold, preds, THRESHOLDS, task) for label, preds in methods.items()
    }
    png = accuracy_coverage_plot(
        curves,
        args.out / name / "accuracy_coverage.png",
        task,
        title=f"{name}: {n} test items, every method on the same items",
    )
    if task == "multi":
        # Seven methods times three k crowd one legend: the top tag alone, drawn as a single-tag curve.
        top1 = {label: [{**p, "precision": p["acc@1"]} for p in curve] for label, curve in curves.items()}
        accuracy_coverage_plot(
            top1,
            args.out / name / "accuracy_coverage_acc1.png",
            "single",
            title=f"{name}: Acc@1 vs Coverage@1, {n} test items",
        )
    print(f"# {name}: train {len(ds.train)}, test {n}, tags {len(ds.tags)}, task {task}, {emit} tag(s) shown")
    return {
        "name": name,
        "task": task,
        "n": n,
        "train": len(ds.train),
        "emit": emit,
        "table": table,
        "results": results,
        "cut": {"cut": models.cut, "test_precision": cut_precision, "test_coverage": cut_coverage},
        "held_out": models.metrics,
        "gold_missed": models.metrics["gold_tags_missed_by_candidates"],
        "scarce": scarce,
        "curves": curves,
        "png": str(png),
    }


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__file__, __doc__)
    add_data_arguments(parser)
    add_datasets_argument(parser)
    add_out_argument(parser, OUT / "ranker_quality")
    add_limit_argument(parser, None, "test items per set (default: the whole test split)")
    add_seed_argument(parser)
    add_rebuild_argument(parser)
    parser.add_argument("--annif", type=Path, default=OUT / "annif", help="Annif's rows (annif_peer.py)")
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"shared data not found at {args.data}", file=sys.stderr)
        return 2
    settings = Settings()
    encoder = Encoder(settings.encoder)
    args.out.mkdir(parents=True, exist_ok=True)
    sections, everything = [], {}
    for name in args.datasets:
        result = run_dataset(name, args, settings, encoder)
        everything[name] = result
        cut = result["cut"]
        held = result["held_out"]
        cut_text = "none reaches it" if cut["cut"] is None else f"{cut['cut']:.3f}"
        whole = "the whole test split" if args.limit is None else f"the first {args.limit} of a seeded order"
        section = (
            f"## {name} ({result['task']}-tag, {result['n']} test items = {whole}, "
            f"{result['train']} train items, {result['emit']} tag(s) shown per item)\n\n"
            + format_table(result["table"], list(result["table"][0]))
            + f"\n\nRanker cut fitted on held-out train folds for 95% precision: {cut_text}, on test: "
            f"precision {cut['test_precision']:.4f}, coverage {cut['test_coverage']:.3f}. Held out on train "
            f"(out-of-fold): top-1 precision {held['top1_precision']:.4f}; gold tags no candidate covered: "
            f"{result['gold_missed']}.\n"
        )
        for band, info in result["scarce"].items():
            if info["items"]:
                shares = ", ".join(f"{k.strip('*')} {v:.3f}" for k, v in info["top1_right"].items())
                section += (
                    f"\nTest items whose gold tags have {band} train annotations: {info['items']}; "
                    f"share whose top tag is right: {shares}.\n"
                )
        print("\n" + section, flush=True)
        sections.append(section)
        (args.out / "tables.md").write_text("\n".join(sections))
        (args.out / "results.json").write_text(json.dumps(everything, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
