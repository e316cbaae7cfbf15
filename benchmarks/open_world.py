"""New tags on day one (issue 27): every method on the same test items of a seeded open-world split.

    nice -n 10 .venv/bin/python -m benchmarks.open_world [--datasets banking77,...] [--seed 0] [--llm]

Per data set, a seeded split of the tags that have annotations in both train and test:

* **new** (``--new``, default 20%): every train annotation removed; the tag stays in the vocabulary
  with its name and description (so C2T, the knowledge base's description snippet and the LLM's
  prompt still know it);
* **unknown** (``--unknown``, default 10%): removed from the vocabulary and from every annotation, so
  an item whose tags are all unknown has "no tag" as its right answer;
* **known**: the rest, as they are.

A train item left without a tag is left out of the store. Test items are scored against their gold
minus the unknown tags, in three groups: *unknown* (every gold tag unknown: right answer "no tag"),
*new* (a new tag among what is left) and *known* (the rest). A multi-tag item that loses some of its
tags to the unknown ones is scored on the rest, in the group they decide (counted in the report).
The test sample takes, in one seeded order of the test split, the first ``--n-new`` new-tag items,
``--n-unknown`` unknown-tag items and ``--n-known`` known-tag items: new- and unknown-tag items are
OVERSAMPLED against their share of the test split (the report prints both), so figures are per
group, never pooled. A larger quota keeps the items already drawn (per-item LLM caches stay valid).
``--holdout dev`` draws the test items from a fifth of the train split instead (by a hash of the id;
the store is built from the rest), for choosing settings without looking at the test split.

Methods, on the same items: match (cosine), kNN vote, graph recall's order (the store's own peers,
benchmarks/_peers.py), Annif Omikuji trained on the same reduced train split (``--annif``, run in
.venv-annif through benchmarks/annif_peer.py on a data folder written for the split), the ranker as
shipped (``build`` with its ranking, ``pipeline.route: auto`` without a cascade fit: the ranker's
tags at the default threshold) for each of ``VARIANTS`` (settings of the ranking, one store each),
and with ``--llm`` the LLM on every item (``route: off``) over the default variant's store. With
``--augment K``: a copy of the default variant's store where `llm4tag augment` has the LLM (``--model``)
write K synthetic examples for each new tag (one call per tag; from its name and description, in the
style of real items of its nearest annotated tags: never test items), then `llm4tag refit` (the learned
recall trains on them, the held-out rows stay real), ranked as shipped: one more method row.

Per group: top-1 (the first ranked tag before any cut; Acc@1 before the cut on multi-tag sets), P/R/F1
at the default threshold (Acc@1-3 on multi-tag sets, and the share of new-tag items with a new tag
among the shown ones), ECE of the ranked tags' confidences (top 1, or top 5 multi-tag; all wrong on
unknown-tag items), HR@20 of the candidates (for new-tag items: a NEW gold tag among them; Annif's
are its 10 suggestions, annif_peer.py's limit), rejection
("no tag" kept at the threshold) on unknown-tag items, coverage (a tag kept) on known-tag items, the
share sent to the LLM and seconds per item; 95% percentile bootstrap intervals over items, and the
paired difference of top-1 against the first variant (today's ranker). Peers without a calibrated cut
are cut at the same threshold on their own scores, for reference.

LLM rows cost seconds per item: they are cached per item in ``route_off-<key>.jsonl`` beside the store,
keyed by the store's ranking manifest, the settings and the model (a rerun tags only what is missing;
a rebuilt store starts a new file); they run last, at nice 19.

Writes ``--out/<set>/<split>/tables-n<items>[-llm].md`` and ``results-...json``.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import random
import shutil
import subprocess
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks._datasets import Dataset, dataset_settings, load_dataset
from benchmarks._paths import (
    DATASETS,
    OUT,
    REPO,
    add_data_arguments,
    add_datasets_argument,
    add_seed_argument,
    benchmark_parser,
)
from benchmarks._peers import KNN, clip, knn_rows, read_rows, read_timings
from benchmarks._rows import cached_rows, run_llm
from llm4tag import store_builder
from llm4tag.augment import augment_store
from llm4tag.data import Item, Tag
from llm4tag.encoder import Encoder
from llm4tag.evaluation.tables import format_table
from llm4tag.evaluation.tagging import bootstrap_interval, expected_calibration_error, metric_intervals
from llm4tag.pipeline import TaggingPipeline
from llm4tag.ranking import FewTags

GROUPS = ("new", "known", "unknown")
# The ranking's settings compared, one store each; the first is today's ranker (the reference of the
# paired differences), the last the shipped default.
VARIANTS: dict[str, tuple[str, dict]] = {
    "before": (
        "ranker, items cross-fitted (before issue 27)",
        {"few_tags": {"slots": 0}, "ranker": {"held_out_tags": 0.0}},
    ),
    "slots": ("ranker + few-tag slots", {"ranker": {"held_out_tags": 0.0}}),
    "default": ("ranker + few-tag slots + held-out-tag cross-fit (default)", {}),
}
DEFAULT_VARIANT = "default"
MAIN_VARIANTS = tuple(VARIANTS)
# Sensitivity of the defaults (run with --variants ... --holdout dev, never chosen on test items).
VARIANTS.update(
    {
        "tags-0.1": ("held-out-tag cross-fit, 10% of the tags", {"ranker": {"held_out_tags": 0.1}}),
        "tags-0.4": ("held-out-tag cross-fit, 40% of the tags", {"ranker": {"held_out_tags": 0.4}}),
        "slots-10": ("held-out-tag cross-fit, 10 few-tag slots", {"few_tags": {"slots": 10}}),
    }
)
ANNIF_LABEL = "Annif Omikuji"
HR_K = 20


# ----------------------------------------------------------------------------------------- the split
@dataclass
class Split:
    """An open-world split of one data set: the reduced train split and vocabulary, the test sample."""

    name: str
    key: str
    new: frozenset[str]
    unknown: frozenset[str]
    train: list[Item]
    train_vectors: np.ndarray
    tags: list[Tag]
    tag_vectors: np.ndarray
    test: list[Item]  # the sample; gold: the item's tags minus the unknown ones
    test_vectors: np.ndarray
    pool: list[Item]  # every test item, gold as in ``test`` (Annif tags them all once)
    group: dict[str, str]
    report: dict


def dev_dataset(ds: Dataset) -> Dataset:
    """The train split cut in two by a hash of the id: a fifth becomes the test items."""
    dev = np.asarray([zlib.crc32(f"dev:{item.id}".encode()) % 5 == 0 for item in ds.train])
    rest, held = np.flatnonzero(~dev), np.flatnonzero(dev)
    return Dataset(
        ds.name,
        ds.tags,
        [ds.train[i] for i in rest],
        [ds.train[i] for i in held],
        ds.tag_vectors,
        ds.train_vectors[rest],
        ds.train_vectors[held],
    )


def group_of(gold: Sequence[str], new: frozenset[str]) -> str:
    if not gold:
        return "unknown"
    return "new" if new.intersection(gold) else "known"


def make_split(ds: Dataset, args) -> Split:
    seed = args.seed
    in_train = {t for item in ds.train for t in item.tags or ()}
    in_test = {t for item in ds.test for t in item.tags or ()}
    eligible = sorted(in_train & in_test)
    random.Random(f"{seed}:{ds.name}:tags").shuffle(eligible)
    n_new, n_unknown = round(args.new * len(eligible)), round(args.unknown * len(eligible))
    new = frozenset(eligible[:n_new])
    unknown = frozenset(eligible[n_new : n_new + n_unknown])
    dropped = new | unknown

    train_rows, train = [], []
    for row, item in enumerate(ds.train):
        kept = tuple(t for t in item.tags or () if t not in dropped)
        if kept:
            train_rows.append(row)
            train.append(dataclasses.replace(item, tags=kept))
    tag_rows = [i for i, tag in enumerate(ds.tags) if tag.tag not in unknown]

    pool: dict[str, list[int]] = {g: [] for g in GROUPS}
    partial = 0
    order = random.Random(f"{seed}:{ds.name}:sample").sample(range(len(ds.test)), len(ds.test))
    gold_of = {}
    for row in order:
        item = ds.test[row]
        gold = tuple(t for t in item.tags or () if t not in unknown)
        gold_of[row] = gold
        pool[group_of(gold, new)].append(row)
    quota = {"new": args.n_new, "unknown": args.n_unknown, "known": args.n_known}
    chosen = {g: pool[g][: quota[g]] for g in GROUPS}
    position = {row: k for k, row in enumerate(order)}
    rows = sorted((r for g in GROUPS for r in chosen[g]), key=position.__getitem__)
    pool_items = [dataclasses.replace(ds.test[r], tags=gold_of[r] or None) for r in order]
    test, group = [], {}
    for row in rows:
        item = ds.test[row]
        gold = gold_of[row]
        partial += bool(gold) and len(gold) < len(item.tags or ())
        test.append(dataclasses.replace(item, tags=gold or None))
        group[item.id] = group_of(gold, new)
    size = len(ds.test)
    report = {
        "tags_eligible": len(eligible),
        "tags_new": len(new),
        "tags_unknown": len(unknown),
        "vocabulary": len(tag_rows),
        "train_items": len(train),
        "train_items_left_out": len(ds.train) - len(train),
        "test_pool": {g: len(pool[g]) for g in GROUPS},
        "test_pool_share": {g: round(len(pool[g]) / size, 4) for g in GROUPS},
        "sampled": {g: len(chosen[g]) for g in GROUPS},
        "sample_share": {g: round(len(chosen[g]) / max(len(rows), 1), 4) for g in GROUPS},
        "sampled_items_that_lost_unknown_tags": partial,
    }
    key = hashlib.sha256(
        json.dumps([args.holdout, seed, args.new, args.unknown, sorted(new), sorted(unknown)]).encode()
    ).hexdigest()[:10]
    return Split(
        name=ds.name,
        key=f"{args.holdout}-seed{seed}-{key}",
        new=new,
        unknown=unknown,
        train=train,
        train_vectors=ds.train_vectors[train_rows],
        tags=[ds.tags[i] for i in tag_rows],
        tag_vectors=ds.tag_vectors[tag_rows],
        test=test,
        test_vectors=ds.test_vectors[rows],
        pool=pool_items,
        group=group,
        report=report,
    )


# ------------------------------------------------------------------------------------------ methods
@dataclass
class Rows:
    """One method's answer per test item: ``ranked`` its tags with confidences before any cut (top
    1, or top ``emit`` multi-tag), ``shown`` what it keeps at the default threshold, ``candidates``
    the tags it recalled (None: it has no candidate list)."""

    ranked: dict[str, list[dict]]
    shown: dict[str, list[dict]]
    candidates: dict[str, list[str]] | None
    sent: float  # share of the items sent to the LLM
    seconds: float  # per item


def cut_rows(ranked: dict[str, list[dict]], threshold: float) -> dict[str, list[dict]]:
    return {
        i: [t for t in tags if t.get("confidence") is not None and t["confidence"] >= threshold]
        for i, tags in ranked.items()
    }


def pipeline_rows(rows: dict[str, dict], emit: int, seconds: float) -> Rows:
    """The pipeline's rows (``--candidates --dropped``): its kept tags, and before the cut its kept and
    dropped tags (the LLM's) or its ranked candidates (the ranker's), best first."""
    ranked, shown, candidates, sent = {}, {}, {}, 0
    for item_id, row in rows.items():
        shown[item_id] = list(row["tags"])
        if row.get("route") == "llm":
            sent += 1
            ranked[item_id] = [
                t for t in row["tags"] + row.get("dropped", []) if t.get("confidence") is not None
            ]
        else:
            ranked[item_id] = list(row["candidates"][:emit])
        candidates[item_id] = [c["tag"] for c in row["candidates"]]
    return Rows(ranked, shown, candidates, sent / max(len(rows), 1), seconds)


def timed(fn: Callable[[], list], n: int) -> tuple[list, float]:
    started = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - started) / max(n, 1)


def peer_rows(store, split: Split, emit: int, threshold: float) -> dict[str, Rows]:
    ids = [item.id for item in split.test]
    vectors = split.test_vectors
    out = {}
    matched, s = timed(lambda: store.match(vectors, HR_K), len(ids))
    ranked = {
        i: [{"tag": c.tag, "confidence": clip(c.score)} for c in m[:emit]]
        for i, m in zip(ids, matched, strict=True)
    }
    cands = {i: [c.tag for c in m] for i, m in zip(ids, matched, strict=True)}
    out["match"] = Rows(ranked, cut_rows(ranked, threshold), cands, 0.0, s)
    voted, s = timed(lambda: knn_rows(store, vectors, KNN, emit), len(ids))
    ranked = dict(zip(ids, voted, strict=True))
    out[f"kNN vote ({KNN})"] = Rows(ranked, cut_rows(ranked, threshold), None, 0.0, s)
    recalled, s = timed(lambda: store.recall(vectors), len(ids))
    ranked = {
        i: [{"tag": c.tag, "confidence": clip(c.score / 2)} for c in r[:emit]]
        for i, r in zip(ids, recalled, strict=True)
    }
    cands = {i: [c.tag for c in r] for i, r in zip(ids, recalled, strict=True)}
    out["graph recall (today's order)"] = Rows(ranked, cut_rows(ranked, threshold), cands, 0.0, s)
    return out


def write_split_folder(split: Split, folder: Path) -> None:
    """The split as a shared-data folder (items.jsonl.gz, tags.jsonl.gz), for annif_peer.py: its
    reduced train split, and every test item (so that any sample of them has Annif's rows)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"id": i.id, "text": i.text, "tags": list(i.tags or ()), "split": "train"} for i in split.train]
    rows += [{"id": i.id, "text": i.text, "tags": list(i.tags or ()), "split": "test"} for i in split.pool]
    for name, records in (
        ("items.jsonl.gz", rows),
        ("tags.jsonl.gz", [{"tag": t.tag, "description": t.description} for t in split.tags]),
    ):
        tmp = folder / f".{name}.tmp"
        with gzip.open(tmp, "wt", encoding="utf-8") as fh:
            for record in records:
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        os.replace(tmp, folder / name)


def read_ids(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line)["id"] for line in fh if line.strip()]


def annif_rows(split: Split, args, folder: Path, emit: int, threshold: float) -> Rows | None:
    """Annif Omikuji trained on the split's reduced train split (annif_peer.py in .venv-annif)."""
    python = Path(args.annif_python)
    if not python.exists():
        print(f"# no Annif row: {python} not found (bash scripts/setup_annif.sh)")
        return None
    out = folder / "annif"
    rows_path = out / split.name / "omikuji.jsonl"
    ids = [item.id for item in split.test]
    if not rows_path.exists() or not {i.id for i in split.test} <= set(read_ids(rows_path)):
        data = args.cache / "open_world" / split.key
        write_split_folder(split, data / split.name)
        command = [
            str(python),
            "-m",
            "benchmarks.annif_peer",
            "--data",
            str(data),
            "--datasets",
            split.name,
            "--backends",
            "omikuji",
            "--work",
            str(data / "annif-work"),
            "--out",
            str(out),
        ]
        print(f"# Annif: {' '.join(command)}", flush=True)
        subprocess.run(command, check=True, cwd=REPO)
    found = read_rows(rows_path, ids, emit, "annif_peer.py")
    assert found is not None
    timing = read_timings(out / split.name, "omikuji")
    seconds = timing.get("suggest_ms_per_item", float("nan")) / 1000
    full = {}
    with open(rows_path, encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            full[row["id"]] = [t["tag"] for t in row["tags"]]
    return Rows(found, cut_rows(found, threshold), {i: full[i] for i in ids}, 0.0, seconds)


# ------------------------------------------------------------------------------------------ metrics
def mean_ci(values: Sequence[float]) -> dict:
    v, lo, hi = bootstrap_interval(lambda x, axis=-1: np.mean(x, axis=axis), np.asarray(values, float))
    return {"value": v, "low": lo, "high": hi, "n": len(values)}


def paired_ci(a: Sequence[float], b: Sequence[float]) -> dict:
    v, lo, hi = bootstrap_interval(
        lambda x, y, axis=-1: np.mean(x, axis=axis) - np.mean(y, axis=axis),
        np.asarray(a, float),
        np.asarray(b, float),
    )
    return {"diff": v, "diff_low": lo, "diff_high": hi}


def fmt(m: dict | None, digits: int = 3) -> str:
    if m is None:
        return "–"
    if m["low"] != m["low"]:
        return f"{m['value']:.{digits}f}"
    return f"{m['value']:.{digits}f} [{m['low']:.{digits}f}, {m['high']:.{digits}f}]"


def fmt_diff(m: dict | None) -> str:
    if not m or m["diff_low"] != m["diff_low"]:
        return ""
    return f"{m['diff']:+.3f} [{m['diff_low']:+.3f}, {m['diff_high']:+.3f}]"


def top1_column(rows: Rows, items: list[Item]) -> list[float]:
    return [float(bool(rows.ranked[i.id]) and rows.ranked[i.id][0]["tag"] in (i.tags or ())) for i in items]


def group_metrics(rows: Rows, items: list[Item], group: str, split: Split, multi: bool, base: Rows | None):
    ids = [i.id for i in items]
    gold = {i.id: set(i.tags or ()) for i in items}
    out: dict = {"n": len(items), "share_to_llm": rows.sent, "seconds_per_item": rows.seconds}
    pairs = [
        (t["confidence"], t["tag"] in gold[i])
        for i in ids
        for t in rows.ranked[i]
        if t.get("confidence") is not None
    ]
    out["ece"] = expected_calibration_error(pairs)["ece"] if pairs else float("nan")
    out["mean_confidence"] = float(np.mean([p for p, _ in pairs])) if pairs else float("nan")
    shown_any = [float(bool(rows.shown[i])) for i in ids]
    if group == "unknown":
        out["rejected"] = mean_ci([1.0 - s for s in shown_any])
        return out
    top1 = top1_column(rows, items)
    out["top1"] = mean_ci(top1)
    if base is not None and base is not rows:
        out["top1_vs_reference"] = paired_ci(top1, top1_column(base, items))
    shown = {i: rows.shown[i] for i in ids}
    out["at_cut"] = metric_intervals(gold, shown, "multi" if multi else "single")
    if group == "known":
        out["coverage"] = mean_ci(shown_any)
    wanted = {i: (gold[i] & split.new) if group == "new" else gold[i] for i in ids}
    if rows.candidates is not None:
        out["hr20"] = mean_ci([float(bool(wanted[i] & set(rows.candidates[i][:HR_K]))) for i in ids])
    if group == "new" and multi:
        out["new_tag_shown"] = mean_ci(
            [float(bool(wanted[i] & {t["tag"] for t in rows.shown[i]})) for i in ids]
        )
    return out


def weighted_ece(confidence: np.ndarray, right: np.ndarray, weight: np.ndarray, bins: int = 10) -> float:
    """ECE (equal-width bins) with a weight per pair."""
    if not len(confidence):
        return float("nan")
    index = np.minimum(np.floor(confidence * bins).astype(np.int64), bins - 1)
    total = np.bincount(index, weights=weight, minlength=bins)
    conf = np.bincount(index, weights=weight * confidence, minlength=bins)
    hit = np.bincount(index, weights=weight * right, minlength=bins)
    used = total > 0
    return float(np.sum(np.abs(hit[used] - conf[used])) / total.sum())


def calibration_by_kind(rows: Rows, split: Split) -> dict:
    """ECE of the ranked tags' confidences over every sampled item, each weighted back to its group's
    share of the test split (the sample oversamples new- and unknown-tag items), apart for the tags
    with few annotations in the store (the new ones among them) and the others. Grouping by the
    gold answer, as the per-group ECE does, selects the items a tag is right for: no honest
    probability is calibrated within such a group; grouping by what the tag is, is what a user sees."""
    counts: dict[str, int] = {}
    for item in split.train:
        for tag in item.tags or ():
            counts[tag] = counts.get(tag, 0) + 1
    few = FewTags().annotations
    weight = {
        g: split.report["test_pool_share"][g] / split.report["sample_share"][g]
        for g in GROUPS
        if split.report["sample_share"][g]
    }
    cols: dict[str, list] = {"few": [], "conf": [], "right": [], "w": []}
    for item in split.test:
        gold = set(item.tags or ())
        for t in rows.ranked[item.id]:
            if t.get("confidence") is None:
                continue
            cols["few"].append(counts.get(t["tag"], 0) < few)
            cols["conf"].append(t["confidence"])
            cols["right"].append(t["tag"] in gold)
            cols["w"].append(weight[split.group[item.id]])
    few_mask, conf, right, w = (np.asarray(cols[k], float) for k in ("few", "conf", "right", "w"))
    few_mask = few_mask.astype(bool)
    out = {}
    for kind, mask in (("few", few_mask), ("annotated", ~few_mask), ("all", np.ones_like(few_mask))):
        out[kind] = {
            "ece": weighted_ece(conf[mask], right[mask], w[mask]),
            "n": int(mask.sum()),
            "mean_confidence": float(np.average(conf[mask], weights=w[mask])) if mask.any() else float("nan"),
            "accuracy": float(np.average(right[mask], weights=w[mask])) if mask.any() else float("nan"),
        }
    return out


def summary(results: dict, multi: bool, split: Split) -> str:
    """One row per method: the figures the issue's bars read."""
    table = []
    top1 = "Acc@1 before the cut" if multi else "top-1"
    for method, per_group in results.items():
        new, known, unknown = (per_group.get(g) for g in GROUPS)
        by_kind = per_group["calibration_by_kind"]
        row = {"method": method}
        if new:
            row[f"new: {top1}"] = fmt(new["top1"])
            row["new: " + ("new tag shown" if multi else "recall at the cut")] = fmt(
                new["new_tag_shown"] if multi else new["at_cut"]["recall"]
            )
            row["new: HR@20"] = fmt(new.get("hr20"))
        if known:
            row[f"known: {top1}"] = fmt(known["top1"])
            row["known: − today's ranker"] = fmt_diff(known.get("top1_vs_reference"))
            row["known: coverage"] = fmt(known["coverage"])
        if unknown:
            row["unknown: rejected"] = fmt(unknown["rejected"])
        row["ECE: few-annotation / annotated tags"] = (
            f"{by_kind['few']['ece']:.3f} / {by_kind['annotated']['ece']:.3f}"
        )
        row["s/item"] = f"{(known or new)['seconds_per_item']:.3f}"
        table.append(row)
    return (
        f"#### {split.name}: summary (n = {split.report['sampled']})\n\n"
        + format_table(table, list(dict.fromkeys(k for r in table for k in r)))
        + "\n"
    )


def tables(results: dict, multi: bool, split: Split) -> str:
    lines = [summary(results, multi, split)]
    for group in GROUPS:
        table = []
        for method, per_group in results.items():
            m = per_group.get(group)
            if m is None or not m["n"]:
                continue
            row = {"method": method, "n": m["n"]}
            if group != "unknown":
                row["top-1" if not multi else "Acc@1 (before the cut)"] = fmt(m["top1"])
                row["top-1 − today's ranker"] = fmt_diff(m.get("top1_vs_reference"))
                keys = ("acc@1", "acc@2", "acc@3") if multi else ("precision", "recall", "f1")
                for k in keys:
                    row[k if not multi else f"{k} (at the cut)"] = fmt(m["at_cut"][k])
                if group == "new" and multi:
                    row["new tag shown"] = fmt(m["new_tag_shown"])
                if group == "known":
                    row["coverage"] = fmt(m["coverage"])
                row["HR@20" + (" (a new tag)" if group == "new" else "")] = fmt(m.get("hr20"))
            else:
                row["rejected"] = fmt(m["rejected"])
                row["mean confidence"] = f"{m['mean_confidence']:.3f}"
            row["ECE"] = f"{m['ece']:.3f}"
            row["share to LLM"] = f"{m['share_to_llm']:.2f}"
            row["s/item"] = f"{m['seconds_per_item']:.3f}"
            table.append(row)
        if not table:
            continue
        columns = list(dict.fromkeys(k for r in table for k in r))
        lines.append(f"#### {split.name}: {group}-tag items\n\n" + format_table(table, columns) + "\n")
    table = []
    for method, per_group in results.items():
        by_kind = per_group["calibration_by_kind"]
        row = {"method": method}
        for kind, label in (
            ("few", "tags with few annotations"),
            ("annotated", "annotated tags"),
            ("all", "all"),
        ):
            k = by_kind[kind]
            row[f"{label}: n"] = k["n"]
            row[f"{label}: confidence / accuracy"] = f"{k['mean_confidence']:.3f} / {k['accuracy']:.3f}"
            row[f"{label}: ECE"] = f"{k['ece']:.3f}"
        table.append(row)
    lines.append(
        f"#### {split.name}: calibration by what the tag is (every sampled item, weighted back to its "
        "group's share of the test split)\n\n" + format_table(table, list(table[0])) + "\n"
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- runs
def build_store(folder: Path, split: Split, settings, encoder) -> None:
    if (folder / "ranking" / "manifest.json").exists():
        return
    started = time.perf_counter()
    parts = store_builder.build_parts(
        split.train,
        split.tags,
        settings,
        encoder,
        item_vectors=split.train_vectors,
        tag_vectors=split.tag_vectors,
    )
    store_builder.save_parts(parts, folder)
    summary = store_builder.fit_store_ranking(
        folder, parts.store, parts.report.annotated, parts.report.item_vectors, settings, encoder.id
    )
    print(f"# built {folder} in {time.perf_counter() - started:.0f} s: {json.dumps(summary)}", flush=True)


def augmented_store(folder: Path, name: str, split: Split, k: int, model: str, encoder) -> tuple[Path, dict]:
    """A copy of the default variant's store with ``k`` synthetic examples per new tag (`llm4tag
    augment`, resumable) and its ranking refitted; the store and what augment and refit reported.
    ``k`` 0: the copy refitted without any (the control: Omikuji's fits take no seed, so a refit alone
    moves the figures a little)."""
    settings = variant_settings(name, VARIANTS[DEFAULT_VARIANT][1], model, "auto")
    source = folder / DEFAULT_VARIANT / "store"
    build_store(source, split, settings, encoder)
    store = folder / (f"augment-k{k}-{model}" if k else "refit-control") / "store"
    done = store.parent / "augment.json"
    if done.exists():
        return store, json.loads(done.read_text())
    if not store.exists():
        shutil.copytree(source, store)
    summary = augment_store(store, settings, k=k, tags=sorted(split.new)) if k else {}
    print(f"# augment: {json.dumps(summary)}", flush=True)
    started = time.perf_counter()
    refit = store_builder.refit_store_ranking(store, settings)
    summary["refit_s"] = round(time.perf_counter() - started, 1)
    summary["synthetic_examples_fitted"] = refit["ranking"]["synthetic_examples"]
    done.write_text(json.dumps(summary))
    return store, summary


def variant_settings(name: str, overrides: dict, model: str, route):
    settings = dataset_settings(name, {"route": route}, model, None)
    return settings.with_overrides({"ranking": {"enabled": "on", **overrides}})


def llm_key(store: Path, settings, model: str) -> str:
    manifest = (store / "ranking" / "manifest.json").read_text()
    return hashlib.sha256(
        json.dumps([manifest, settings.model_dump(mode="json"), model]).encode()
    ).hexdigest()[:10]


def llm_rows_path(folder: Path, name: str, args) -> Path:
    """Where the LLM rows of the default variant's store are cached (keyed by its ranking manifest,
    the settings and the model)."""
    store = folder / DEFAULT_VARIANT / "store"
    settings = variant_settings(name, VARIANTS[DEFAULT_VARIANT][1], args.model, "off")
    return store.parent / f"route_off-{args.model}-{llm_key(store, settings, args.model)}.jsonl"


def tagged_only(split: Split, path: Path) -> Split:
    """The sample cut to the items the LLM has tagged (a prefix of its seeded order, so still a random
    sample of each group), for a table of every method on them while the LLM run goes on."""
    tagged = set(cached_rows(path))
    keep = [k for k, item in enumerate(split.test) if item.id in tagged]
    if not keep:
        raise SystemExit(f"--llm-tagged-only: no LLM rows in {path} yet")
    test = [split.test[k] for k in keep]
    sampled = {g: sum(split.group[i.id] == g for i in test) for g in GROUPS}
    report = {
        **split.report,
        "sampled": sampled,
        "sample_share": {g: round(sampled[g] / len(test), 4) for g in GROUPS},
        "llm_tagged_only": True,
    }
    return dataclasses.replace(split, test=test, test_vectors=split.test_vectors[keep], report=report)


def run_set(name: str, args, encoder) -> dict:
    base_settings = dataset_settings(name, {}, args.model, None)
    ds = load_dataset(name, args.data, base_settings, encoder, args.cache)
    if args.holdout == "dev":
        ds = dev_dataset(ds)
    split = make_split(ds, args)
    folder = args.out / name / split.key
    folder.mkdir(parents=True, exist_ok=True)
    if args.llm_tagged_only:
        split = tagged_only(split, llm_rows_path(folder, name, args))
    print(f"## {name} ({split.key}): {json.dumps(split.report)}", flush=True)
    items = {g: [i for i in split.test if split.group[i.id] == g] for g in GROUPS}
    methods: dict[str, Rows] = {}
    multi = emit = threshold = None
    variants = args.variants
    for variant in variants:
        label, overrides = VARIANTS[variant]
        store = folder / variant / "store"
        settings = variant_settings(name, overrides, args.model, "auto")
        build_store(store, split, settings, encoder)
        pipeline = TaggingPipeline.open(store, settings, load_engine=False)
        plan = pipeline.plan
        multi, emit, threshold = plan.multi, plan.emit, settings.pipeline.threshold
        rows, seconds = timed(
            lambda p=pipeline: p.tag(split.test, with_candidates=True, with_dropped=True), len(split.test)
        )
        methods[label] = pipeline_rows({r["id"]: r for r in rows}, emit, seconds)
        if variant == variants[-1]:
            methods.update(peer_rows(pipeline.recaller.store, split, emit, threshold))
    augmented = None
    for k in (0, args.augment) if args.augment else ():
        store, summary = augmented_store(folder, name, split, k, args.model, encoder)
        settings = variant_settings(name, VARIANTS[DEFAULT_VARIANT][1], args.model, "auto")
        pipeline = TaggingPipeline.open(store, settings, load_engine=False)
        multi, emit, threshold = pipeline.plan.multi, pipeline.plan.emit, settings.pipeline.threshold
        rows, seconds = timed(
            lambda p=pipeline: p.tag(split.test, with_candidates=True, with_dropped=True), len(split.test)
        )
        label = (
            f"ranker (default) + augment: {k} synthetic examples per new tag ({args.model}), refitted"
            if k
            else "ranker (default), refitted (control for augment)"
        )
        methods[label] = pipeline_rows({r["id"]: r for r in rows}, emit, seconds)
        augmented = summary if k else augmented
    if args.annif:
        annif = annif_rows(split, args, folder, emit, threshold)
        if annif is not None:
            methods[ANNIF_LABEL] = annif
    if args.llm:
        os.nice(max(0, 19 - os.nice(0)))  # the LLM rows run last, at the lowest priority
        settings = variant_settings(name, VARIANTS[DEFAULT_VARIANT][1], args.model, "off")
        pipeline = TaggingPipeline.open(folder / DEFAULT_VARIANT / "store", settings)
        path = llm_rows_path(folder, name, args)
        rows, stats = run_llm(pipeline, split.test, path, args.chunk, with_candidates=True)
        seconds = float(np.mean([r.get("seconds", float("nan")) for r in rows.values()]))
        methods[f"LLM on every item (route: off, {args.model})"] = pipeline_rows(rows, emit, seconds)
        print(f"# LLM: {stats['items']} items newly tagged in {stats['seconds']:.0f} s", flush=True)
    reference = methods[VARIANTS[variants[0]][0]]
    results = {
        method: {
            **{
                g: group_metrics(rows, items[g], g, split, multi, reference) if items[g] else None
                for g in GROUPS
            },
            "calibration_by_kind": calibration_by_kind(rows, split),
        }
        for method, rows in methods.items()
    }
    markdown = (
        f"### {name}: open-world split {split.key}, threshold {threshold}\n\n"
        f"Split: {json.dumps(split.report)}\n\n"
        + (f"Augment: {json.dumps(augmented)}\n\n" if augmented else "")
        + tables(results, multi, split)
    )
    print("\n" + markdown, flush=True)
    # Named by the sample, so that a smaller run (the LLM rows on fewer items) keeps the larger one's.
    sample = (
        f"n{len(split.test)}"
        + ("-llm" if args.llm else "")
        + (f"-augment{args.augment}" if augmented else "")
    )
    (folder / f"tables-{sample}.md").write_text(markdown)
    (folder / f"results-{sample}.json").write_text(
        json.dumps({"split": split.report, "augment": augmented, "results": results}, indent=1, default=str)
    )
    return results


def main(argv: list[str] | None = None) -> None:
    parser = benchmark_parser(__file__, __doc__)
    add_datasets_argument(parser)
    add_data_arguments(parser)
    parser.add_argument("--out", type=Path, default=OUT / "open_world")
    add_seed_argument(parser, help="the split's and the sample's seed")
    parser.add_argument("--new", type=float, default=0.2, help="share of the tags made new")
    parser.add_argument("--unknown", type=float, default=0.1, help="share of the tags made unknown")
    parser.add_argument("--n-new", type=int, default=175, help="new-tag test items (oversampled)")
    parser.add_argument("--n-unknown", type=int, default=100, help="unknown-tag test items (oversampled)")
    parser.add_argument("--n-known", type=int, default=225, help="known-tag test items")
    parser.add_argument(
        "--holdout", choices=("test", "dev"), default="test", help="dev: test items from train"
    )
    parser.add_argument(
        "--variants",
        default=",".join(MAIN_VARIANTS),
        help=f"which of {', '.join(VARIANTS)} (the ranking's settings; the first is the reference)",
    )
    parser.add_argument("--no-annif", dest="annif", action="store_false", help="leave Annif out")
    parser.add_argument("--annif-python", default=str(REPO / ".venv-annif" / "bin" / "python"))
    parser.add_argument("--llm", action="store_true", help="also the LLM on every item (route: off; slow)")
    parser.add_argument(
        "--llm-tagged-only",
        action="store_true",
        help="with --llm: every method on only the sampled items the LLM has tagged so far (tags no more)",
    )
    parser.add_argument("--model", default="default")
    parser.add_argument(
        "--augment",
        type=int,
        default=0,
        metavar="K",
        help="also the default ranker after `llm4tag augment` wrote K examples per new tag (--model)",
    )
    parser.add_argument("--chunk", type=int, default=4, help="items per LLM pipeline call (and cache write)")
    args = parser.parse_args(argv)
    if not 0 < args.new + args.unknown < 1:
        parser.error("--new and --unknown must be shares that leave some tags known")
    args.variants = [v for v in args.variants.split(",") if v] or list(MAIN_VARIANTS)
    unknown_variants = [v for v in args.variants if v not in VARIANTS]
    if unknown_variants:
        parser.error(f"unknown variant(s) {unknown_variants}; choose among {list(VARIANTS)}")
    encoder = Encoder(dataset_settings(DATASETS[-1], {}, args.model, None).encoder)
    for name in args.datasets:
        run_set(name, args, encoder)


if __name__ == "__main__":
    main()
