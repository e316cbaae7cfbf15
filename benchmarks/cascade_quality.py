"""The cascade against route off and the ranker alone, on the same test items of one shared set
(issue 17, bars b and d). Prints a table with 95% bootstrap intervals and paired differences against
the ranker alone.

One LLM run gives every row: the store of the train split is built with its ranking (cached in
``--out/<set>/store``), and the first ``--n`` items of the test split's fixed seed-0 order are tagged
with ``pipeline.route: off`` (every item to the LLM, choosing among the ranker's candidates), one row
per item appended to ``--out/<set>/route_off.jsonl`` as it comes (a rerun tags only the missing ones).

* ranker only: each row's first candidate (the ranker's top tag, its calibrated probability);
* route off: the LLM's rows as the pipeline wrote them (the Yes-probability cut at pipeline.threshold);
* cascade(tau): the ranker's top tag where its probability reaches tau, the LLM's row otherwise. tau is
  the ranker's held-out cut for 95% precision (fitted on train folds at build, never on test); a few
  fixed values are shown as a sensitivity, not chosen on these items.
* with ``--cascade-items N``: route: auto as shipped. The LLM first tags N held-out annotated TRAIN items
  of the store (out-of-fold candidates, never itself among its samples: llm4tag/cascade_fit.py), which
  fits tau and the final calibration; then the same test items are tagged with route: auto (only the
  items under tau reach the LLM; rows cached in ``route_auto_N.jsonl``). Its confidences are the final
  calibration's, so its ECE is bar (c)'s.

    nice -n 10 .venv/bin/python benchmarks/cascade_quality.py --dataset banking77 --n 500 --cascade-items 200
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _datasets import DEFAULT_CACHE, DEFAULT_DATA, REPO, load_dataset, test_sample
from pipeline_quality import cached_rows, run_llm, settings_for

from llm4tag import store_builder
from llm4tag.cascade_fit import fit_store_cascade
from llm4tag.encoder import Encoder
from llm4tag.evaluation.tables import format_table
from llm4tag.evaluation.tagging import (
    MULTI_KEYS,
    SINGLE_KEYS,
    calibration_pairs,
    expected_calibration_error,
    metric_intervals,
)
from llm4tag.pipeline import TaggingPipeline

FIXED_TAUS = (0.5, 0.8, 0.9)


def build(folder: Path, ds, settings, encoder) -> None:
    if (folder / "ranking" / "manifest.json").exists():
        return
    started = time.perf_counter()
    parts = store_builder.build_parts(
        ds.train, ds.tags, settings, encoder, item_vectors=ds.train_vectors, tag_vectors=ds.tag_vectors
    )
    store_builder.save_parts(parts, folder)
    summary = store_builder.fit_store_ranking(
        folder, parts.store, parts.report.annotated, parts.report.item_vectors, settings, encoder.id
    )
    print(f"# built {folder} in {time.perf_counter() - started:.0f} s: {json.dumps(summary)}", flush=True)


def cascade(rows: dict, tau: float) -> tuple[dict, float]:
    """Predictions and the share of items sent to the LLM."""
    preds, sent = {}, 0
    for item_id, row in rows.items():
        top = row["candidates"][0] if row["candidates"] else None
        if top is not None and top["confidence"] >= tau:
            preds[item_id] = [top]
        else:
            preds[item_id] = row["tags"]
            sent += 1
    return preds, sent / len(rows)


def cell(m: dict, diff: bool) -> str:
    out = f"{m['value']:.4f} [{m['low']:.4f}, {m['high']:.4f}]"
    if diff and "diff" in m:
        out = f"{m['diff']:+.4f} [{m['diff_low']:+.4f}, {m['diff_high']:+.4f}]"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="banking77")
    parser.add_argument("--n", type=int, default=100, help="test items (a fixed seed-0 order's first n)")
    parser.add_argument("--model", default="default")
    parser.add_argument("--chunk", type=int, default=4, help="items per pipeline call (and cache write)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=REPO / "out" / "cascade")
    parser.add_argument(
        "--cascade-items", type=int, default=0, help="held-out train items that fit route: auto (0: no row)"
    )
    args = parser.parse_args()

    settings = settings_for(args.dataset, {"route": "off"}, args.model, None).with_overrides(
        {"ranking": {"enabled": "on"}}
    )
    encoder = Encoder(settings.encoder)
    ds = load_dataset(args.dataset, args.data, settings, encoder, args.cache)
    folder = args.out / args.dataset
    build(folder / "store", ds, settings, encoder)
    pipeline = TaggingPipeline.open(folder / "store", settings)
    cut = pipeline.ranking.models.precision_cut(0.95)
    sample = test_sample(ds, args.n)
    cached = set(cached_rows(folder / "route_off.jsonl"))
    if pipeline.ranking.cascade is not None and any(i.id not in cached for i in sample):
        # Route off's confidences would then be the final calibration's for some rows and not others.
        raise SystemExit(
            "the store has a cascade fit: route-off rows must all come before it (use a new --out)"
        )
    rows, stats = run_llm(pipeline, sample, folder / "route_off.jsonl", args.chunk, with_candidates=True)
    gold = {i.id: set(i.tags or ()) for i in sample}
    task = "multi" if pipeline.plan.multi else "single"
    keys = MULTI_KEYS if task == "multi" else SINGLE_KEYS
    ranker = {k: r["candidates"][:1] for k, r in rows.items()}
    methods = {
        "ranker only": (ranker, 0.0),
        "route off (LLM on every item)": ({k: r["tags"] for k, r in rows.items()}, 1.0),
    }
    taus = ([("held-out cut", cut)] if cut is not None else []) + [("fixed", t) for t in FIXED_TAUS]
    for label, tau in taus:
        methods[f"cascade tau={tau:.3f} ({label})"] = cascade(rows, tau)
    auto_stats = None
    if args.cascade_items:
        fitted = fit_store_cascade(folder / "store", settings, args.cascade_items, progress=print)
        print(f"# cascade fit on {args.cascade_items} held-out train items: {json.dumps(fitted)}", flush=True)
        auto_settings = settings.with_overrides({"pipeline": {"route": "auto"}})
        auto = TaggingPipeline.open(folder / "store", auto_settings)
        auto_rows, auto_stats = run_llm(
            auto, sample, folder / f"route_auto_{args.cascade_items}.jsonl", args.chunk, with_candidates=True
        )
        share = sum(r.get("route") == "llm" for r in auto_rows.values()) / len(auto_rows)
        label = f"route auto (tau={auto.plan.tau:.3f}, calibration: {args.cascade_items} held-out items)"
        methods[label] = ({k: r["tags"] for k, r in auto_rows.items()}, share)
    table = []
    for name, (preds, share) in methods.items():
        m = metric_intervals(gold, preds, task, baseline=None if name == "ranker only" else ranker)
        row = {"method": name}
        for key in keys[:3]:
            row[key] = cell(m[key], False)
        row[f"{keys[0]} - ranker"] = cell(m[keys[0]], True) if name != "ranker only" else ""
        row["ECE"] = f"{expected_calibration_error(calibration_pairs(gold, preds))['ece']:.4f}"
        row["share to LLM"] = f"{share:.2f}"
        table.append(row)
    seconds = stats["seconds"] / stats["items"] if stats["items"] else float("nan")
    if auto_stats is not None and auto_stats["items"]:
        print(
            f"route auto: {auto_stats['seconds'] / auto_stats['items']:.2f} s per item over "
            f"{auto_stats['items']} newly tagged items (all stages; only the items under tau reach the LLM)"
        )
    print(f"\n### {args.dataset}: n = {len(sample)} test items, model {args.model}")
    print(format_table(table, list(table[0])))
    print(
        f"\nRanker cut for 95% precision (held-out train folds): {cut}. LLM seconds per item in this "
        f"run: {seconds:.2f} over {stats['items']} newly tagged items (the rest came from the cache)."
    )


if __name__ == "__main__":
    main()
