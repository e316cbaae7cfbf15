"""Every method on the same test items of one shared set (issue 17): the peers without an LLM, the
ranker alone, route off, the cascade and route: auto. Prints a table with 95% bootstrap intervals and
paired differences against the ranker alone, ECE, coverage at 95% precision, the share of items sent
to the LLM and LLM seconds per item; writes ``--out/<set>/table.md``, ``results.json`` and
``accuracy_coverage.png`` (every method but the fixed-tau sensitivity rows).

One LLM run gives the LLM rows: the store of the train split is built with its ranking (cached:
benchmarks/_stores.py; this script works on a copy in ``--out/<set>/store``, since route: auto's fit is
saved into it), and the first ``--limit`` items of the test split's fixed seed-0 order are tagged
with ``pipeline.route: off`` (every item to the LLM, choosing among the ranker's candidates), one row
per item appended to ``--out/<set>/route_off.jsonl`` as it comes (a rerun tags only the missing ones).

* match, kNN vote, graph recall, Annif Omikuji / TF-IDF: as in ranker_quality.py (benchmarks/_peers.py),
  on these items; Annif's rows come from ``--annif`` (annif_peer.py);
* ranker only: each row's ranker candidates, as many as the set shows (1 single-tag, 5 multi-tag);
* route off: the LLM's rows as the pipeline wrote them (the Yes-probability cut at pipeline.threshold);
* cascade(tau): the product's routing (llm4tag.ranking.cascade) at tau over the route-off rows: the
  ranker settles an item (single-tag) or a shown tag (multi-tag) whose probability reaches tau, the
  LLM's generation and judgment from the same row decide the rest. tau is the ranker's held-out cut for
  95% precision (fitted on train folds at build, never on test); a few fixed values are shown as a
  sensitivity, not chosen on these items.
* with ``--cascade-items N``: route: auto as shipped. The LLM first tags N held-out annotated TRAIN items
  of the store (out-of-fold candidates, never itself among its samples: llm4tag/cascade_fit.py), which
  fits tau and the final calibration; then the same test items are tagged with route: auto (only the
  items under tau reach the LLM; rows cached in ``route_auto_N.jsonl``). Its confidences are the final
  calibration's, so its ECE is bar (c)'s. Two more rows replay route: auto on the route-off rows (the
  same candidates, generation and judgments; greedy decoding): at the fitted tau, which should equal
  the real row, and with every item sent, which shows what the calibrated LLM is worth on its own.
  ``--auto-offline`` skips the real route: auto run where it would send too many items to afford.
* TagGPT selective: compare.py's rows for the same items (``--taggpt``, its ``--out``), if it has
  tagged them: ``compare.py --datasets SET --methods taggpt-selective --limit N --no-vocab``. Its LLM seconds
  per item are compare.py's measured ones (timings.json).

``--no-llm`` leaves out every row of our LLM (route off, the cascade, route: auto): the ranker's rows
then come from ``pipeline.route: 0`` (the ranker settles every item; cached in ``ranker.jsonl``), so the
ranker, the peers and TagGPT's cached rows can be set side by side without hours of route-off runs.

    nice -n 10 .venv/bin/python -m benchmarks.cascade_quality --dataset banking77 --limit 500 \
        --cascade-items 200
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

from benchmarks._datasets import dataset_settings, load_dataset, test_sample
from benchmarks._paths import (
    OUT,
    add_data_arguments,
    add_dataset_argument,
    add_limit_argument,
    add_out_argument,
    add_rebuild_argument,
    add_seed_argument,
    benchmark_parser,
    show_progress,
)
from benchmarks._peers import (
    THRESHOLDS,
    Methods,
    add_peers,
    coverage_at_precision,
    fmt_ci,
    fmt_diff,
    read_rows,
    read_timings,
)
from benchmarks._rows import cached_rows, run_llm
from benchmarks._stores import dataset_store
from llm4tag.cascade_fit import fit_store_cascade
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
    threshold_curve,
)
from llm4tag.pipeline import TaggingPipeline
from llm4tag.ranking.cascade import FinalCalibration, RoutePlan, final_tags, route_items
from llm4tag.ranking.models import ScoredTag

FIXED_TAUS = (0.5, 0.8, 0.9)


def with_ranking(settings):
    """The settings of the store this script and precision_cut.py tag with: the ranking always fitted."""
    return settings.with_overrides({"ranking": {"enabled": "on"}})


def scored_candidates(row: dict) -> list[ScoredTag]:
    return [
        ScoredTag(c["tag"], c["confidence"], c.get("score", c["confidence"]), tuple(c["source"].split("+")))
        for c in row["candidates"]
    ]


def cascade(
    rows: dict, plan: RoutePlan, tau: float, calibration: FinalCalibration | None = None
) -> tuple[dict, float, float]:
    """The product's routing (llm4tag.ranking.cascade) at ``tau`` over route-off rows: an item or tag
    the ranker settles keeps its calibrated probability; the rest take the LLM's generation and its
    Yes-probability from the same row, raw or mapped by ``calibration`` (the final calibration fitted
    on held-out train items). Returns the predictions, the share of items sent to the LLM and the LLM
    seconds per item (the sent items' measured seconds over all items; NaN if unknown)."""
    at_tau = replace(plan, tau=tau, calibration=calibration)
    preds, sent, seconds = {}, 0, 0.0
    for item_id, row in rows.items():
        route = route_items([scored_candidates(row)], at_tau)[0]
        yes = {t["tag"]: t["yes"] for t in row["tags"] + row.get("dropped", []) if "yes" in t}
        finals = final_tags(route, at_tau, row.get("generated", []), yes)
        preds[item_id] = [f.to_dict() for f in finals if f.kept]
        if route.needs_llm:
            sent += 1
            seconds += row.get("seconds", float("nan"))
    return preds, sent / len(rows), seconds / len(rows)


def where_the_llm_differs(gold: dict, rows: dict) -> dict[str, int]:
    """Route off's first tag against the ranker's first candidate, per item: where the LLM fixes the
    ranker, where it breaks it, and where both are right or both wrong (an item without a tag counts
    as wrong)."""
    counts = {"both right": 0, "LLM fixes the ranker": 0, "LLM breaks the ranker": 0, "both wrong": 0}
    for item_id, row in rows.items():
        ranker = bool(row["candidates"]) and row["candidates"][0]["tag"] in gold[item_id]
        llm = bool(row["tags"]) and row["tags"][0]["tag"] in gold[item_id]
        key = (
            ("both right" if llm else "LLM breaks the ranker")
            if ranker
            else ("LLM fixes the ranker" if llm else "both wrong")
        )
        counts[key] += 1
    return counts


def add_taggpt(add, folder: Path, ids: list[str], emit: int) -> None:
    """TagGPT selective's rows from compare.py's cache (``folder``: its --out/<model>/<set>), with its
    measured LLM seconds per item, if it has tagged these items."""
    run = f"run python -m benchmarks.compare --methods taggpt-selective --limit {len(ids)} --no-vocab"
    rows = read_rows(folder / "taggpt-selective.jsonl", ids, emit, run)
    if rows is None:
        return
    timing = read_timings(folder, "taggpt-selective")
    seconds = timing["seconds"] / timing["items"] if timing.get("items") else float("nan")
    add("TagGPT selective (LLM on every item)", rows, 1.0, seconds)


def llm_seconds(rows: dict) -> float:
    """Mean measured seconds per item of rows tagged by the LLM pipeline (NaN where the cache predates
    per-row timing)."""
    return sum(r.get("seconds", float("nan")) for r in rows.values()) / max(len(rows), 1)


def summarize(gold: dict, found: Methods, ranker_label: str, share: dict, seconds: dict, task: str):
    """The table's rows and the results per method, every one on the same items."""
    keys = MULTI_KEYS if task == "multi" else SINGLE_KEYS
    first = keys[0] if task == "multi" else "f1"
    table, results = [], {}
    ranker = found.rows[ranker_label]
    for name, preds in found.rows.items():
        m = metric_intervals(gold, preds, task, baseline=None if name == ranker_label else ranker)
        row = {"method": name}
        for key in keys[:3]:
            row[key] = fmt_ci(m[key])
        row[f"{first} − ranker"] = fmt_diff(m[first]) if name != ranker_label else ""
        ece = expected_calibration_error(calibration_pairs(gold, preds))["ece"]
        coverage, _ = coverage_at_precision(gold, preds)
        row["ECE"] = f"{ece:.4f}"
        row["coverage @95% precision"] = f"{coverage:.3f}"
        # Rows that drop unsure tags show fewer: Acc@k (over the tags shown) rises as Coverage@k falls.
        row["tags/item"] = f"{sum(len(preds.get(i) or ()) for i in gold) / len(gold):.2f}"
        if task == "multi":
            row["coverage@3"] = f"{coverage_at_k(gold, preds, 3):.3f}"
        row["share to LLM"] = f"{share[name]:.2f}"
        row["LLM s/item"] = "–" if seconds[name] != seconds[name] else f"{seconds[name]:.2f}"
        table.append(row)
        results[name] = {
            "metrics": m,
            "ece": ece,
            "coverage_at_95_precision": coverage,
            "share_to_llm": share[name],
            "llm_seconds_per_item": seconds[name],
        }
    return table, results


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__file__, __doc__)
    add_dataset_argument(parser)
    add_limit_argument(parser, 100, "test items (a fixed seeded order's first N; default 100)")
    add_seed_argument(parser)
    parser.add_argument("--model", default="default")
    parser.add_argument("--chunk", type=int, default=4, help="items per pipeline call (and cache write)")
    add_data_arguments(parser)
    add_rebuild_argument(parser)
    add_out_argument(parser, OUT / "cascade")
    parser.add_argument("--annif", type=Path, default=OUT / "annif", help="Annif rows (annif_peer.py)")
    parser.add_argument(
        "--taggpt",
        type=Path,
        default=OUT / "compare",
        help="compare.py's --out: TagGPT selective's rows for these items, if it has tagged them",
    )
    parser.add_argument(
        "--no-llm",
        action="store_true",
        help="no rows of our LLM (route off, cascade, route: auto): the ranker, the peers and TagGPT's rows",
    )
    parser.add_argument(
        "--cascade-items", type=int, default=0, help="held-out train items that fit route: auto (0: no row)"
    )
    parser.add_argument(
        "--auto-offline",
        action="store_true",
        help="with --cascade-items: route: auto only replayed on the route-off rows, not tagged again",
    )
    args = parser.parse_args(argv)
    show_progress()
    if args.no_llm and args.cascade_items:
        parser.error("--cascade-items fits and runs route: auto, an LLM row: not with --no-llm")

    route = 0.0 if args.no_llm else "off"
    settings = with_ranking(dataset_settings(args.dataset, {"route": route}, args.model, None))
    encoder = Encoder(settings.encoder)
    ds = load_dataset(args.dataset, args.data, settings, encoder, args.cache)
    folder = args.out / args.dataset
    store = dataset_store(ds, settings, encoder, args.cache, rebuild=args.rebuild, copy_to=folder / "store")
    pipeline = TaggingPipeline.open(store, settings)
    cut = pipeline.ranking.models.precision_cut(0.95)
    sample = test_sample(ds, args.limit, args.seed)
    rows_path = folder / ("ranker.jsonl" if args.no_llm else "route_off.jsonl")
    cached = set(cached_rows(rows_path))
    if not args.no_llm and pipeline.ranking.cascade is not None and any(i.id not in cached for i in sample):
        # Route off's confidences would then be the final calibration's for some rows and not others.
        raise SystemExit(
            "the store has a cascade fit: route-off rows must all come before it (use a new --out)"
        )
    rows, stats = run_llm(pipeline, sample, rows_path, args.chunk, with_candidates=True)
    gold = {i.id: set(i.tags or ()) for i in sample}
    plan = pipeline.plan
    task = "multi" if plan.multi else "single"
    ids = [i.id for i in sample]

    # Every method on the same items: the peers first (the store's own recall and kNN, Annif's rows).
    found = Methods(ids)
    positions = {item.id: n for n, item in enumerate(ds.test)}
    vectors = ds.test_vectors[[positions[i] for i in ids]]
    add_peers(found, pipeline.recaller.store, vectors, plan.emit, args.annif / args.dataset, float("nan"))
    share: dict[str, float] = dict.fromkeys(found.rows, 0.0)
    seconds: dict[str, float] = dict.fromkeys(found.rows, 0.0)

    def add(label: str, preds: dict, sent: float, llm_s: float) -> None:
        found.add(label, preds, float("nan"), None)
        share[label], seconds[label] = sent, llm_s

    ranker_label = "ranker only"
    add(ranker_label, {k: r["candidates"][: plan.emit] for k, r in rows.items()}, 0.0, 0.0)
    # The ranker's tags kept at its cut (pipeline.threshold), as route: auto keeps them when it sends
    # nothing: the fair peer of the rows that drop unsure tags.
    add("ranker only, kept at its cut", *cascade(rows, plan, 0.0))
    add_taggpt(add, args.taggpt / args.model / args.dataset, ids, plan.emit)
    if args.no_llm:
        taus = []
    else:
        add("route off (LLM on every item)", {k: r["tags"] for k, r in rows.items()}, 1.0, llm_seconds(rows))
        taus = ([("held-out cut", cut)] if cut is not None else []) + [("fixed", t) for t in FIXED_TAUS]
    for label, tau in taus:
        add(f"cascade tau={tau:.3f} ({label})", *cascade(rows, plan, tau))
    auto_stats = None
    if args.cascade_items:
        # One LLM for route off, the fit and route: auto (1-2 GB each otherwise).
        fitted = fit_store_cascade(store, settings, args.cascade_items, engine=pipeline.engine)
        print(f"# cascade fit on {args.cascade_items} held-out train items: {json.dumps(fitted)}", flush=True)
        auto_settings = settings.with_overrides({"pipeline": {"route": "auto"}})
        auto = TaggingPipeline.open(store, auto_settings, engine=pipeline.engine)
        if not args.auto_offline:
            auto_rows, auto_stats = run_llm(
                auto,
                sample,
                folder / f"route_auto_{args.cascade_items}.jsonl",
                args.chunk,
                with_candidates=True,
            )
            sent = sum(r.get("route") == "llm" for r in auto_rows.values()) / len(auto_rows)
            label = f"route auto (tau={auto.plan.tau:.3f}, calibration: {args.cascade_items} held-out items)"
            add(label, {k: r["tags"] for k, r in auto_rows.items()}, sent, llm_seconds(auto_rows))
        # route: auto's decisions replayed on the route-off rows: the same candidates, generation and
        # judgments (greedy decoding, the same prompts), routed at the fitted tau and mapped by the
        # final calibration; where the real row ran too, the two should agree.
        label = f"route auto, offline (tau={auto.plan.tau:.3f}, from the route-off rows)"
        add(label, *cascade(rows, auto.plan, auto.plan.tau, auto.plan.calibration))
        if auto.plan.calibration is not None:
            # The LLM on every item, its judgments mapped as route: auto maps them: what the LLM's
            # answers are worth once calibrated with the ranker's probability beside them.
            label = "route off, final calibration (offline, from the route-off rows)"
            add(label, *cascade(rows, auto.plan, math.inf, auto.plan.calibration))

    table, results = summarize(gold, found, ranker_label, share, seconds, task)
    if auto_stats is not None and auto_stats["items"]:
        print(
            f"route auto: {auto_stats['seconds'] / auto_stats['items']:.2f} s per item over "
            f"{auto_stats['items']} newly tagged items (all stages; only the items under tau reach the LLM)"
        )
    # The fixed taus are a sensitivity, and the replay repeats a real row: ten curves are what one
    # palette tells apart.
    replayed_too = any(k.startswith("route auto (") for k in found.rows)
    plotted = {
        k: v
        for k, v in found.rows.items()
        if "(fixed)" not in k
        and k != "ranker only, kept at its cut"  # a point of the ranker's own curve
        and not (replayed_too and k.startswith("route auto, offline"))
    }
    curves = {name: threshold_curve(gold, preds, THRESHOLDS, task) for name, preds in plotted.items()}
    title = f"{args.dataset}: {len(sample)} test items, every method on the same items"
    png = accuracy_coverage_plot(curves, folder / "accuracy_coverage.png", task, title=title)
    if task == "multi":
        top1 = {k: [{**p, "precision": p["acc@1"]} for p in curve] for k, curve in curves.items()}
        accuracy_coverage_plot(top1, folder / "accuracy_coverage_acc1.png", "single", title=title)
    markdown = (
        f"### {args.dataset}: n = {len(sample)} test items, model {args.model}\n\n"
        + format_table(table, list(table[0]))
        + f"\n\nRanker cut for 95% precision (held-out train folds): {cut}. LLM seconds per item: the "
        "pipeline's measured seconds per item of its cached rows (a chunk's time shared by its items; "
        "'–' where rows predate per-row timing); a cascade row counts only the items it sends. "
        f"This run newly tagged {stats['items']} items in {stats['seconds']:.0f} s. Plot: {png}\n"
    )
    if not args.no_llm:
        markdown += "\nRoute off's first tag against the ranker's first candidate: " + (
            ", ".join(f"{k} {v}" for k, v in where_the_llm_differs(gold, rows).items()) + ".\n"
        )
    print("\n" + markdown)
    (folder / "table.md").write_text(markdown)
    (folder / "results.json").write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
