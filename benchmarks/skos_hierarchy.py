"""Does the SKOS hierarchy help recall? Measured before using it there (issue 19).

The debtags vocabulary as SKOS (data/sample/debtags/vocabulary.ttl: 28 facets as broader concepts of
232 tags), a store over the sample's 300 train items; recall on debtags TEST items of the shared set
(split test; gold tags outside the vocabulary left out, items left without gold skipped). Per item:
right@20 (gold tags among the 20 candidates) and hit@20 (at least one), means with 95% percentile
bootstrap intervals, and paired differences against the store built from tags.jsonl (same items).

Variants, each from one recall of 40 candidates cut to 20:
  jsonl     the store built from tags.jsonl (no facets, no hierarchy): the baseline
  skos      the SKOS store as built (facets are concepts, so they are tags and take slots)
  leaves    the hierarchy leaves out broader concepts (tags with narrower ones): their slots go on
  siblings  leaves + the hierarchy re-ranks: each candidate gains lambda x the summed recall score of
            the other candidates under the same broader concept (facet co-activation)

    .venv/bin/python -m benchmarks.skos_hierarchy [--limit 1000] [--lam 0.25]

Both stores are built once and cached (benchmarks/_stores.py).
"""

from __future__ import annotations

import gzip
import json
import time
from collections import defaultdict

import numpy as np

from benchmarks._paths import (
    SAMPLE,
    add_data_arguments,
    add_limit_argument,
    add_rebuild_argument,
    benchmark_parser,
)

DEBTAGS = SAMPLE / "debtags"


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__file__, __doc__)
    add_limit_argument(parser, 1000, "test items (the first N by id; default 1000)")
    parser.add_argument("--lam", type=float, default=0.25, help="siblings: weight of co-activation")
    add_data_arguments(parser)
    parser.add_argument("--source", help="the items file (default: debian_debtags/items.jsonl.gz in --data)")
    add_rebuild_argument(parser)
    args = parser.parse_args(argv)

    from benchmarks._stores import file_store
    from llm4tag.config import Settings
    from llm4tag.data import Item, read_tags
    from llm4tag.evaluation.tagging import bootstrap_interval
    from llm4tag.recaller import Recaller
    from llm4tag.skos import aliases, hierarchy

    skos_tags = read_tags(DEBTAGS / "vocabulary.ttl", "en")
    by_notation = aliases(skos_tags)
    plain = {t.tag for t in read_tags(DEBTAGS / "tags.jsonl")}
    source = args.source or args.data / "debian_debtags" / "items.jsonl.gz"
    with gzip.open(source, "rt") as handle:
        test = [r for r in map(json.loads, handle) if r["split"] == "test"]
    test.sort(key=lambda r: r["id"])
    test = [r for r in test if set(r["tags"]) & plain][: args.limit]
    items = [Item(id=r["id"], text=r["text"]) for r in test]
    gold_plain = {r["id"]: set(r["tags"]) & plain for r in test}
    gold_skos = {i: {by_notation[t] for t in tags} for i, tags in gold_plain.items()}

    broader_of: dict[str, list[str]] = defaultdict(list)
    for child, parent in hierarchy(skos_tags):
        broader_of[child].append(parent)
    grouping = {parent for parents in broader_of.values() for parent in parents}

    stores = {}
    for name, vocabulary in (("jsonl", DEBTAGS / "tags.jsonl"), ("skos", DEBTAGS / "vocabulary.ttl")):
        folder = file_store(
            DEBTAGS / "train.jsonl",
            vocabulary,
            Settings(),
            args.cache,
            language="en",
            rebuild=args.rebuild,
        )
        stores[name] = Recaller.open(folder)
    started = time.perf_counter()
    pools = {name: recaller.recall(items, "graph", 40) for name, recaller in stores.items()}
    seconds = time.perf_counter() - started

    def cut(pool, keep=lambda c: True, score=lambda c, pool: c.score):
        ranked = sorted((c for c in pool if keep(c)), key=lambda c: -score(c, pool))
        return [c.tag for c in ranked[:20]]

    def sibling_score(candidate, pool):
        parents = set(broader_of.get(candidate.tag, ()))
        shared = sum(
            c.score for c in pool if c.tag != candidate.tag and parents & set(broader_of.get(c.tag, ()))
        )
        return candidate.score + args.lam * shared

    variants = {
        "jsonl": (gold_plain, [cut(p) for p in pools["jsonl"]]),
        "skos": (gold_skos, [cut(p) for p in pools["skos"]]),
        "leaves": (gold_skos, [cut(p, lambda c: c.tag not in grouping) for p in pools["skos"]]),
        "siblings": (
            gold_skos,
            [cut(p, lambda c: c.tag not in grouping, sibling_score) for p in pools["skos"]],
        ),
    }
    columns = {}
    for name, (gold, ranked) in variants.items():
        right = np.array([len(gold[i.id] & set(r)) for i, r in zip(items, ranked, strict=True)], float)
        columns[name] = (right, (right >= 1).astype(float))

    def mean(*cols, axis=-1):
        return np.mean(cols[0], axis=axis)

    def diff(*cols, axis=-1):
        return np.mean(cols[0], axis=axis) - np.mean(cols[1], axis=axis)

    print(
        f"debtags test items: n={len(items)} (first {args.limit} by id with a gold tag in the vocabulary); "
        f"recall of 40 candidates, cut to 20; recall took {seconds:.1f} s for both stores"
    )
    print(
        "| variant | right@20 [95% CI] | diff vs jsonl [95% CI] | hit@20 [95% CI] | diff vs jsonl [95% CI] |"
    )
    print("|---|---|---|---|---|")
    for name, (right, hit) in columns.items():
        cells = []
        for k, col in ((0, right), (1, hit)):
            value, low, high = bootstrap_interval(mean, col)
            cells.append(f"{value:.3f} [{low:.3f}, {high:.3f}]")
            if name == "jsonl":
                cells.append("–")
            else:
                d, dl, dh = bootstrap_interval(diff, col, columns["jsonl"][k])
                cells.append(f"{d:+.3f} [{dl:+.3f}, {dh:+.3f}]")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
