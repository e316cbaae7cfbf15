"""Rebuild the small samples in data/sample/ from the shared data sets.

Run from anywhere:  python data/sample/make_sample.py [--source DIR]

DIR defaults to ../shared/data relative to the repository root. Only the standard library is used, the
choice is made with fixed seeds, and the output is byte-for-byte reproducible.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
DEFAULT_SOURCE = REPO_ROOT.parent / "shared" / "data"

SEED = 20240401
BANKING_TRAIN_ITEMS = 400
BANKING_MIN_PER_INTENT = 4
BANKING_QUERIES = 40
DEBTAGS_TRAIN_ITEMS = 300
ITEM_FIELDS = ("id", "text", "tags")


def read_jsonl_gz(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows):>4} rows to {path.relative_to(REPO_ROOT)}")


def keep_item_fields(rows: list[dict]) -> list[dict]:
    return [{key: row[key] for key in ITEM_FIELDS} for row in rows]


def sample_banking77(source: Path, out: Path) -> None:
    items = read_jsonl_gz(source / "banking77" / "items.jsonl.gz")
    tags = read_jsonl_gz(source / "banking77" / "tags.jsonl.gz")
    rng = random.Random(SEED)

    # Train: at least BANKING_MIN_PER_INTENT items of every intent, the rest drawn uniformly from the
    # remaining train items; written in the source order.
    train = [(i, row) for i, row in enumerate(items) if row["split"] == "train"]
    by_intent: dict[str, list[int]] = defaultdict(list)
    for position, (_, row) in enumerate(train):
        by_intent[row["tags"][0]].append(position)
    chosen: set[int] = set()
    for intent in sorted(by_intent):
        chosen.update(rng.sample(by_intent[intent], BANKING_MIN_PER_INTENT))
    rest = [p for p in range(len(train)) if p not in chosen]
    chosen.update(rng.sample(rest, BANKING_TRAIN_ITEMS - len(chosen)))
    write_jsonl(out / "train.jsonl", keep_item_fields([train[p][1] for p in sorted(chosen)]))

    # Queries: BANKING_QUERIES test items, each of a different intent (intents drawn at random).
    test_by_intent: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(items):
        if row["split"] == "test":
            test_by_intent[row["tags"][0]].append(i)
    intents = rng.sample(sorted(test_by_intent), BANKING_QUERIES)
    queries = sorted(rng.choice(test_by_intent[intent]) for intent in intents)
    write_jsonl(out / "queries.jsonl", keep_item_fields([items[i] for i in queries]))

    # Vocabulary: all 77 intents, description null as in the source.
    write_jsonl(out / "tags.jsonl", [{"tag": t["tag"], "description": t["description"]} for t in tags])


def sample_debtags(source: Path, out: Path) -> None:
    items = read_jsonl_gz(source / "debian_debtags" / "items.jsonl.gz")
    tags = read_jsonl_gz(source / "debian_debtags" / "tags.jsonl.gz")
    rng = random.Random(SEED)

    train = [row for row in items if row["split"] == "train" and row.get("tags")]
    positions = sorted(rng.sample(range(len(train)), DEBTAGS_TRAIN_ITEMS))
    sample = keep_item_fields([train[p] for p in positions])
    write_jsonl(out / "train.jsonl", sample)

    used = {tag for row in sample for tag in row["tags"]}
    vocabulary = [
        {"tag": t["tag"], "description": t["description"], "facet": t["facet"]}
        for t in tags
        if t["tag"] in used
    ]
    missing = used - {t["tag"] for t in vocabulary}
    if missing:
        raise SystemExit(f"tags used by the sample but absent from tags.jsonl.gz: {sorted(missing)}")
    write_jsonl(out / "tags.jsonl", vocabulary)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="the shared data folder")
    args = parser.parse_args()
    sample_banking77(args.source, HERE / "banking77")
    sample_debtags(args.source, HERE / "debtags")


if __name__ == "__main__":
    main()
