"""A vocabulary with no annotations at all (issue 27, item 8): ``llm4tag build --tags`` without
``--items``, tagged as shipped, against match (cosine of item and tag text) on the same test items.

    nice -n 10 .venv/bin/python -m benchmarks.vocabulary_only [--datasets ...] [--limit 150]

Per data set: the vocabulary (names and descriptions, as tags.jsonl.gz holds them) is all the store
gets: no item, no annotation, no knowledge file. Graph recall then has only its content-to-tag edges
(C2T: the item's cosine to each tag's text), and with no ranking fitted every item goes to the LLM
(``--model``), which chooses among those 20 candidates with the tags' descriptions as knowledge.
Match is the same cosine's first tags, so the LLM's difference to it is what it adds.

The test items are the first ``--limit`` of benchmarks/_datasets.py's seeded order of the test split
(real items with their gold; nothing of the test split reaches the store). Per method: the first tag
before any cut (Acc@1 before the cut, over all items), the data set's table-1 metrics of what is
shown at the default threshold (precision/recall/F1 on single-tag sets, Acc@1-3 on multi-tag ones)
with 95% bootstrap intervals and the paired difference to match, ECE of the shown tags, HR@20 of the
candidates and seconds per item. LLM rows are cached per item (``llm-<model>-<key>.jsonl``) so a
rerun or a larger ``--limit`` tags only what is missing.

Writes ``--out/<set>/table-n<items>.md`` and ``results-n<items>.json``.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from benchmarks._datasets import dataset_settings, load_dataset, test_sample
from benchmarks._paths import OUT, add_data_arguments, add_datasets_argument, benchmark_parser
from benchmarks._peers import clip
from benchmarks._rows import run_llm
from benchmarks.open_world import mean_ci, paired_ci
from llm4tag import store_builder
from llm4tag.encoder import Encoder
from llm4tag.evaluation.tables import format_table
from llm4tag.evaluation.tagging import (
    calibration_pairs,
    expected_calibration_error,
    metric_intervals,
    task_type,
)
from llm4tag.pipeline import TaggingPipeline

CANDIDATES = 20


def vocabulary_store(folder: Path, tags, settings, encoder) -> Path:
    """The store `llm4tag build --tags` writes without items (built once per data set and encoder)."""
    store = folder / "store"
    if not (store / "CURRENT").exists():
        summary = store_builder.build_store_folder(store, [], tags, settings, encoder)
        print(f"# built {store}: {json.dumps(summary)}", flush=True)
    return store


def first_right(ranked: dict[str, list[dict]], gold: dict[str, set[str]]) -> list[float]:
    return [float(bool(ranked[i]) and ranked[i][0]["tag"] in gold[i]) for i in gold]


def method_results(name, ranked, shown, candidates, gold, task, seconds, base=None) -> dict:
    first = first_right(ranked, gold)
    out = {
        "method": name,
        "first": mean_ci(first) | (paired_ci(first, base["_first"]) if base else {}),
        "_first": first,
        "shown": metric_intervals(gold, shown, task, baseline=base["_shown"] if base else None),
        "_shown": shown,
        "ece_shown": expected_calibration_error(calibration_pairs(gold, shown))["ece"],
        "hr@20": float(np.mean([bool(set(candidates[i]) & gold[i]) for i in gold])),
        "coverage": float(np.mean([bool(shown[i]) for i in gold])),
        "seconds_per_item": seconds,
    }
    return out


def fmt(m: dict) -> str:
    text = f"{m['value']:.3f} [{m['low']:.3f}, {m['high']:.3f}]"
    if "diff" in m:
        text += f" ({m['diff']:+.3f} [{m['diff_low']:+.3f}, {m['diff_high']:+.3f}])"
    return text


def run_set(name: str, args, encoder: Encoder) -> dict:
    settings = dataset_settings(name, {}, args.model, None)
    ds = load_dataset(name, args.data, settings, encoder, args.cache)
    items = test_sample(ds, args.limit, args.seed)
    position = {item.id: n for n, item in enumerate(ds.test)}
    vectors = ds.test_vectors[[position[i.id] for i in items]]
    gold = {i.id: set(i.tags or ()) for i in items}
    task = task_type(gold)
    folder = args.out / name
    store = vocabulary_store(folder, ds.tags, settings, encoder)
    pipeline = TaggingPipeline.open(store, settings)
    emit = pipeline.plan.emit or 1
    threshold = settings.pipeline.threshold

    started = time.perf_counter()
    matched = pipeline.recaller.store.match(vectors, CANDIDATES)
    match_s = (time.perf_counter() - started) / len(items)
    ranked = {
        i.id: [{"tag": c.tag, "confidence": clip(c.score)} for c in m[:emit]]
        for i, m in zip(items, matched, strict=True)
    }
    shown = {i: [t for t in tags if t["confidence"] >= threshold] for i, tags in ranked.items()}
    cands = {i.id: [c.tag for c in m] for i, m in zip(items, matched, strict=True)}
    results = [method_results("match (cosine)", ranked, shown, cands, gold, task, match_s)]

    # A rebuilt store (another encoder, vocabulary or settings) starts a new file of LLM rows.
    key = hashlib.sha256(
        json.dumps([encoder.id, [t.tag for t in ds.tags], settings.model_dump(mode="json")]).encode()
    ).hexdigest()[:10]
    rows, stats = run_llm(
        pipeline, items, folder / f"llm-{args.model}-{key}.jsonl", args.chunk, with_candidates=True
    )
    print(f"# {name}: {stats['items']} items newly tagged by the LLM in {stats['seconds']:.0f} s", flush=True)
    ranked = {
        i: sorted(
            (t for t in r["tags"] + r.get("dropped", []) if t.get("confidence") is not None),
            key=lambda t: -t["confidence"],
        )
        for i, r in rows.items()
    }
    shown = {i: r["tags"] for i, r in rows.items()}
    cands = {i: [c["tag"] for c in r["candidates"]] for i, r in rows.items()}
    seconds = float(np.mean([r["seconds"] for r in rows.values()]))
    label = f"vocabulary-only store, LLM on every item ({args.model})"
    results.append(method_results(label, ranked, shown, cands, gold, task, seconds, base=results[0]))

    metric_keys = list(results[0]["shown"])
    table = [
        {
            "method": r["method"],
            "first tag right (Δ match)": fmt(r["first"]),
            **{f"{k} at {threshold}": fmt(r["shown"][k]) for k in metric_keys},
            "coverage": f"{r['coverage']:.3f}",
            "ECE (shown)": f"{r['ece_shown']:.3f}",
            "HR@20": f"{r['hr@20']:.3f}",
            "s/item": f"{r['seconds_per_item']:.3f}",
        }
        for r in results
    ]
    markdown = (
        f"### {name}: vocabulary only ({len(ds.tags)} tags, no annotation), {len(items)} test items "
        f"({task}-tag)\n\n" + format_table(table, list(table[0])) + "\n"
    )
    print("\n" + markdown, flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"table-n{len(items)}.md").write_text(markdown)
    public = [{k: v for k, v in r.items() if not k.startswith("_")} for r in results]
    (folder / f"results-n{len(items)}.json").write_text(json.dumps(public, indent=1, default=str))
    return {"tags": len(ds.tags), "items": len(items), "results": public}


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__file__, __doc__)
    add_datasets_argument(parser)
    add_data_arguments(parser)
    parser.add_argument("--out", type=Path, default=OUT / "vocabulary_only")
    parser.add_argument("--limit", type=int, default=150, help="test items per set (default 150)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="default", help="the LLM (bundled name or alias)")
    parser.add_argument("--chunk", type=int, default=8, help="items per LLM call batch")
    args = parser.parse_args(argv)
    encoder = Encoder(dataset_settings(args.datasets[0], {}, args.model, None).encoder)
    for name in args.datasets:
        run_set(name, args, encoder)


if __name__ == "__main__":
    main()
