"""The learned recall and the fitted ranker against the baselines and Annif, on the WHOLE test split
of each shared data set (issue 17, bar a: the ranker alone at or above Annif Omikuji on every set).

    .venv-annif/bin/python benchmarks/annif_peer.py     # first: Annif's rows in out/annif/<set>/
    python benchmarks/ranker_quality.py [--datasets banking77,...] [--folds 5]

Per set: a store from the train split; the ranking models fitted on train only (cross-fitted folds
for the ranker and its calibration, then the learned recall refitted on all of train); every method
tags every test item:

* match: the tags most similar to the item (cosine), confidence = cosine;
* kNN vote: similarity-weighted vote of the 10 nearest train items' tags, confidence = vote share;
* graph recall: today's candidate order (c2t + c2c2t), confidence = that score / 2;
* Annif Omikuji, Annif TF-IDF: the real Annif (benchmarks/annif_peer.py), confidence = Annif's score;
* learned recall alone, confidence = its score; ranker: calibrated P(tag right).

Every method shows the same number of tags per item (1 single-tag, 5 multi-tag). Metrics: P/R/F1
(single-tag) or Acc@1/2/3 (multi-tag) with 95% percentile bootstrap intervals over items and the
paired difference against Annif Omikuji; ECE of the shown tags' confidences; coverage at 95%
precision of the top tag (the best threshold on test, for every method: an oracle), and for the
ranker its cut fitted on held-out train folds as applied to test; seconds to fit and ms per item.
Writes out/ranker_quality/tables.md, results.json and <set>/accuracy_coverage.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _datasets import DATASETS, DEFAULT_CACHE, DEFAULT_DATA, REPO, load_dataset

from llm4tag.config import Settings
from llm4tag.encoder import Encoder
from llm4tag.evaluation.plots import accuracy_coverage_plot
from llm4tag.evaluation.tables import format_table
from llm4tag.evaluation.tagging import (
    MULTI_KEYS,
    SINGLE_KEYS,
    calibration_pairs,
    expected_calibration_error,
    metric_intervals,
    threshold_curve,
)
from llm4tag.ranking import Annotated, LearnedConfig, RankerConfig, fit_ranking, precision_cut
from llm4tag.ranking.crossfit import build_store
from llm4tag.texts import item_text

KNN = 10
BASELINE = "Annif Omikuji"
THRESHOLDS = tuple(round(x, 2) for x in np.arange(0.0, 1.0, 0.05))


def clip(x: float) -> float:
    return float(min(max(x, 0.0), 1.0))


def knn_rows(store, vectors, k: int, emit: int) -> list[list[dict]]:
    out = []
    for hits in store.search(vectors):
        votes: dict[int, float] = {}
        sims = hits.neighbour_sims[:k]
        total = sum(max(s, 1e-6) for s in sims) or 1.0
        for sim, tags in zip(sims, hits.neighbour_tags[:k], strict=True):
            for t in tags.tolist():
                votes[t] = votes.get(t, 0.0) + max(sim, 1e-6)
        best = sorted(votes.items(), key=lambda kv: (-kv[1], kv[0]))[:emit]
        out.append([{"tag": store.graph.tag_names[t], "confidence": clip(v / total)} for t, v in best])
    return out


def read_annif(path: Path, ids: list[str], emit: int) -> dict[str, list] | None:
    if not path.exists():
        return None
    rows = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            rows[row["id"]] = row["tags"][:emit]
    missing = [i for i in ids if i not in rows]
    if missing:
        raise SystemExit(
            f"{path} has no row for {len(missing)} test items (e.g. {missing[0]}): rerun annif_peer.py"
        )
    return {i: rows[i] for i in ids}


def coverage_at_precision(gold: dict, preds: dict, target: float = 0.95) -> tuple[float, float | None]:
    """Share of items whose top tag is kept at the lowest confidence threshold that still gives the
    target precision on these items (an oracle threshold), and that threshold."""
    conf, right = [], []
    for item_id, tags in gold.items():
        shown = preds.get(item_id) or []
        if shown:
            conf.append(shown[0]["confidence"])
            right.append(shown[0]["tag"] in tags)
    cut = precision_cut(conf, right, target) if conf else None
    if cut is None:
        return 0.0, None
    return float(np.sum(np.asarray(conf) >= cut) / len(gold)), cut


def precision_and_coverage_at(gold: dict, preds: dict, cut: float | None) -> tuple[float, float]:
    if cut is None:
        return float("nan"), 0.0
    kept = [
        (preds[i][0]["tag"] in tags)
        for i, tags in gold.items()
        if preds.get(i) and preds[i][0]["confidence"] >= cut
    ]
    return (float(np.mean(kept)) if kept else float("nan")), len(kept) / len(gold)


def fmt_ci(m: dict) -> str:
    return f"{m['value']:.4f} [{m['low']:.4f}, {m['high']:.4f}]"


def fmt_diff(m: dict) -> str:
    if "diff" not in m:
        return ""
    return f"{m['diff']:+.4f} [{m['diff_low']:+.4f}, {m['diff_high']:+.4f}]"


def run_dataset(name: str, args, settings: Settings, encoder: Encoder) -> dict:
    ds = load_dataset(name, args.data, settings, encoder, args.cache)
    texts = [item_text(i, settings.texts.item_fields) for i in ds.train]
    data = Annotated(
        ids=[i.id for i in ds.train],
        texts=texts,
        vectors=ds.train_vectors,
        item_tags=[list(i.tags or ()) for i in ds.train],
        tags=[t.tag for t in ds.tags],
        tag_vectors=ds.tag_vectors,
        encoder_id=encoder.id,
    )
    test_ids = [i.id for i in ds.test]
    test_texts = [item_text(i, settings.texts.item_fields) for i in ds.test]
    gold = {i.id: set(i.tags or ()) for i in ds.test}
    started = time.perf_counter()
    store = build_store(data, settings.graph)
    store_s = time.perf_counter() - started
    leaked = [i for i in test_ids if i in store.graph.content_pos]
    if leaked:
        raise SystemExit(f"{name}: test item {leaked[0]} is in the store")

    started = time.perf_counter()
    models, held = fit_ranking(
        data,
        settings.graph,
        LearnedConfig(),
        RankerConfig(folds=args.folds),
        progress=lambda m: print(f"#   {name}: {m}", flush=True),
    )
    ranking_fit_s = time.perf_counter() - started
    models.assert_unseen(test_ids)
    multi = models.multi
    emit = models.ranker.emit
    task = "multi" if multi else "single"
    n = len(ds.test)

    methods: dict[str, dict] = {}
    fit_s: dict[str, float] = {}
    item_ms: dict[str, float] = {}

    def timed(label: str, fn, fit_seconds: float):
        t0 = time.perf_counter()
        rows = fn()
        item_ms[label] = 1000 * (time.perf_counter() - t0) / n
        fit_s[label] = fit_seconds
        methods[label] = dict(zip(test_ids, rows, strict=True))

    timed(
        "match",
        lambda: [
            [{"tag": c.tag, "confidence": clip(c.score)} for c in cands]
            for cands in store.match(ds.test_vectors, emit)
        ],
        store_s,
    )
    timed(f"kNN vote ({KNN})", lambda: knn_rows(store, ds.test_vectors, KNN, emit), store_s)
    timed(
        "graph recall (today's order)",
        lambda: [
            [{"tag": c.tag, "confidence": clip(c.score / 2)} for c in cands[:emit]]
            for cands in store.recall(ds.test_vectors)
        ],
        store_s,
    )
    for backend, label in (("omikuji", BASELINE), ("tfidf", "Annif TF-IDF")):
        rows = read_annif(args.annif / name / f"{backend}.jsonl", test_ids, emit)
        timings_path = args.annif / name / "timings.json"
        if rows is None:
            print(f"# {name}: no Annif {backend} rows (run .venv-annif/bin/python benchmarks/annif_peer.py)")
            continue
        methods[label] = rows
        timing = json.loads(timings_path.read_text()).get(backend, {}) if timings_path.exists() else {}
        fit_s[label] = timing.get("train_seconds", float("nan"))
        item_ms[label] = timing.get("suggest_ms_per_item", float("nan"))
    timed(
        "learned recall alone",
        lambda: [
            [{"tag": t, "confidence": clip(s)} for t, s in pred]
            for pred in models.learned.predict(test_texts, ds.test_vectors, emit)
        ],
        models.learned.fit_seconds,
    )

    def ranker_rows():
        scored = models.score(store, test_texts, ds.test_vectors, test_ids)
        return [[{"tag": s.tag, "confidence": s.probability} for s in item[:emit]] for item in scored]

    timed("**ranker**", ranker_rows, ranking_fit_s)

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
    for tags in data.item_tags:
        for t in tags:
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
        "gold_missed": held.gold_missed,
        "scarce": scarce,
        "curves": curves,
        "png": str(png),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--annif", type=Path, default=REPO / "out" / "annif")
    parser.add_argument("--out", type=Path, default=REPO / "out" / "ranker_quality")
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"shared data not found at {args.data}", file=sys.stderr)
        return 2
    settings = Settings()
    encoder = Encoder(settings.encoder)
    args.out.mkdir(parents=True, exist_ok=True)
    sections, everything = [], {}
    for name in args.datasets.split(","):
        result = run_dataset(name, args, settings, encoder)
        everything[name] = result
        cut = result["cut"]
        held = result["held_out"]
        cut_text = "none reaches it" if cut["cut"] is None else f"{cut['cut']:.3f}"
        section = (
            f"## {name} ({result['task']}-tag, {result['n']} test items = the whole test split, "
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
