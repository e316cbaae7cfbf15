"""Graph recall against match-based recall on the shared data sets (LLM4Tag table 2).

    python -m benchmarks.recall_quality [--datasets banking77,...] [--sweep coarse|fine] [--ann] [--limit N]

Builds a store from each set's train split (cached: benchmarks/_stores.py), recalls 20 candidates for
every test item (--limit: the first N of a fixed seeded order), and prints #Right and HR#1/2/3 for both
methods. --sweep tunes the recall thresholds on a validation slice
carved from train (never on test); --ann compares an IVF content index with exact search.
"""

from __future__ import annotations

import itertools
import json
import sys
import time

import numpy as np

from benchmarks._datasets import limit_test, load_dataset
from benchmarks._paths import (
    add_data_arguments,
    add_datasets_argument,
    add_limit_argument,
    add_rebuild_argument,
    add_seed_argument,
    benchmark_parser,
)
from benchmarks._stores import build_record, train_store
from graph_store import GraphStore, IndexConfig, RecallConfig, open_store
from llm4tag.config import Settings
from llm4tag.encoder import Encoder
from llm4tag.evaluation.recall_metrics import recall_metrics
from llm4tag.evaluation.tables import format_table


def build(label: str, items, vectors, ds, graph: dict, args, encoder) -> tuple[GraphStore, float]:
    """The store of ``items`` (with their ``vectors``) and the set's vocabulary, its graph settings
    overridden by ``graph``, and the seconds its graph took to build."""
    settings = Settings().with_overrides({"graph": graph, "ranking": {"enabled": "off"}})
    folder = train_store(
        label,
        items,
        ds.tags,
        settings,
        encoder,
        args.cache,
        train_vectors=vectors,
        tag_vectors=ds.tag_vectors,
        rebuild=args.rebuild,
    )
    return open_store(folder), build_record(folder)["seconds"]["graph"]


def score(items, candidates, k=20) -> dict:
    gold = {i.id: set(i.tags or ()) for i in items}
    predicted = {i.id: [c.tag for c in cands] for i, cands in zip(items, candidates, strict=True)}
    return recall_metrics(gold, predicted, k=k)


SWEEPS = {
    # A coarse grid around the paper's values, then a finer one around what won on validation.
    "coarse": {
        "delta_ct": (0.4, 0.5),
        "delta_cc": (0.5, 0.6, 0.8),
        "caps": ((15, 5), (10, 10), (5, 15)),
        "min_c2c": (5, 10, 20),
        "c2c_search_k": (30, 50),
    },
    "fine": {
        "delta_ct": (0.5,),
        "delta_cc": (0.5, 0.8),
        "caps": ((10, 10), (5, 15), (3, 17)),
        "min_c2c": (10, 20, 30, 50),
        "c2c_search_k": (30, 50, 100),
    },
}


def sweep(ds, grid: dict, args, encoder) -> list[dict]:
    """Recall settings scored on a validation slice held out of train (10%, seeded)."""
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(ds.train))
    n_val = max(1, len(order) // 10)
    val, fit = order[:n_val], order[n_val:]
    fit_items = [ds.train[i] for i in fit]
    store, _ = build(
        f"{ds.name}-fit",
        fit_items,
        ds.train_vectors[fit],
        ds,
        {"materialize_similarity": False},
        args,
        encoder,
    )
    val_items, val_vectors = [ds.train[i] for i in val], ds.train_vectors[val]
    rows = [{"setting": "match", **score(val_items, store.match(val_vectors, 20))}]
    rows.append({"setting": "defaults", **score(val_items, store.recall(val_vectors))})
    for delta_ct, delta_cc, (max_c2t, max_c2c2t), min_c2c, search_k in itertools.product(*grid.values()):
        if min_c2c > search_k:
            continue
        rc = RecallConfig(
            delta_ct=delta_ct,
            delta_cc=delta_cc,
            max_c2t=max_c2t,
            max_c2c2t=max_c2c2t,
            min_c2t=max_c2t,
            min_c2c=min_c2c,
            c2c_search_k=search_k,
        )
        m = score(val_items, store.recall(val_vectors, rc))
        rows.append(
            {
                "setting": f"ct={delta_ct} cc={delta_cc} caps={max_c2t}/{max_c2c2t} min_cc={min_c2c} "
                f"k_cc={search_k}",
                **m,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = benchmark_parser(__file__, __doc__)
    add_data_arguments(parser)
    add_datasets_argument(parser)
    add_limit_argument(parser, None, "test items per set (default: the whole test split)")
    add_seed_argument(parser, help="seed of the validation slice (--sweep) and of --limit's order")
    add_rebuild_argument(parser)
    parser.add_argument(
        "--sweep", choices=sorted(SWEEPS), help="tune recall settings on a validation slice of train"
    )
    parser.add_argument("--ann", action="store_true", help="IVF content index vs exact search")
    parser.add_argument("-k", type=int, default=20)
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"shared data not found at {args.data}", file=sys.stderr)
        return 2
    settings = Settings()
    encoder = Encoder(settings.encoder)
    print(f"# encoder {encoder.id}; recall defaults {settings.graph.recall.model_dump()}")
    table, ann_rows, sweeps = [], [], {}
    for name in args.datasets:
        ds = load_dataset(name, args.data, settings, encoder, args.cache)
        if args.sweep:
            rows = sweep(ds, SWEEPS[args.sweep], args, encoder)
            rows.sort(key=lambda r: -r["right"])
            print(f"\n## {name}: validation sweep ({rows[0]['items']} items held out of train), best first\n")
            shown = rows[:10] + [r for r in rows[10:] if r["setting"] in ("match", "defaults")]
            print(format_table(shown, ["setting", "right", "hr1", "hr2", "hr3"]))
            sweeps[name] = {r["setting"]: r["right"] for r in rows}
        store, build_s = build(name, ds.train, ds.train_vectors, ds, {}, args, encoder)
        ds = limit_test(ds, args.limit, args.seed)
        started = time.perf_counter()
        match = score(ds.test, store.match(ds.test_vectors, args.k), args.k)
        match_s = time.perf_counter() - started
        started = time.perf_counter()
        graph = score(ds.test, store.recall(ds.test_vectors), args.k)
        graph_s = time.perf_counter() - started
        for method, m, seconds in (("match-based", match, match_s), ("graph (ours)", graph, graph_s)):
            table.append(
                {
                    "data set": name,
                    "recall": method,
                    "test items": m["items"],
                    "#Right": m["right"],
                    "HR#1": m["hr1"],
                    "HR#2": m["hr2"],
                    "HR#3": m["hr3"],
                    "items/s": round(m["items"] / seconds),
                }
            )
        gain = {
            key: (graph[key] / match[key] - 1) * 100 if match[key] else float("nan")
            for key in ("right", "hr3")
        }
        table.append(
            {
                "data set": name,
                "recall": "gain",
                "#Right": f"{gain['right']:+.1f}%",
                "HR#3": f"{gain['hr3']:+.1f}%" if match["hr3"] else "n/a",
            }
        )
        print(
            f"# {name}: train {len(ds.train)}, test {len(ds.test)}, tags {len(ds.tags)}, "
            f"build {build_s:.1f} s",
            flush=True,
        )
        if args.ann:
            # Float lists with 32 probes, and the default for large stores (8-bit lists, 16 probes).
            for index_config in (
                IndexConfig(kind="ivf", encoding="flat", nprobe=32),
                IndexConfig(kind="ivf"),
            ):
                ivf = {"content_index": index_config.model_dump(), "materialize_similarity": False}
                approx_store, _ = build(name, ds.train, ds.train_vectors, ds, ivf, args, encoder)
                approx = score(ds.test, approx_store.recall(ds.test_vectors), args.k)
                nlist = approx_store.content_index.index.nlist
                ann_rows.append(
                    {
                        "data set": name,
                        "index": f"IVF {index_config.encoding} nlist={nlist} nprobe={index_config.nprobe}",
                        "HR#1 exact": graph["hr1"],
                        "HR#1 IVF": approx["hr1"],
                        "#Right exact": graph["right"],
                        "#Right IVF": approx["right"],
                        "#Right change": f"{(approx['right'] / graph['right'] - 1) * 100:+.2f}%",
                    }
                )
    print("\n## Graph vs match-based recall, 20 candidates, test split\n")
    print(
        format_table(table, ["data set", "recall", "test items", "#Right", "HR#1", "HR#2", "HR#3", "items/s"])
    )
    if ann_rows:
        print("\n## Approximate (IVF) content index vs exact, graph recall, test split\n")
        print(format_table(ann_rows, list(ann_rows[0])))
    if len(sweeps) > 1:
        # One default for every data set: the setting with the best mean #Right relative to each
        # set's best (so the single-tag sets, all near 1.0, do not drown the multi-tag one).
        common = set.intersection(*(set(s) for s in sweeps.values())) - {"match"}
        rel = {k: float(np.mean([s[k] / max(s.values()) for s in sweeps.values()])) for k in common}
        best = sorted(rel, key=lambda k: -rel[k])[:5]
        print("\n## Settings best across data sets (mean #Right relative to each set's best, validation)\n")
        print(
            format_table(
                [
                    {"setting": k, "relative": rel[k], **{n: s[k] for n, s in sweeps.items()}}
                    for k in [*best, "defaults"]
                ],
                ["setting", "relative", *sweeps],
            )
        )
    best = {name: max(s.items(), key=lambda kv: kv[1]) for name, s in sweeps.items()}
    print(json.dumps({"table": table, "ann": ann_rows, "best_on_validation": best}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
