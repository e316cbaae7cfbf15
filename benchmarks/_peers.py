"""The methods without an LLM that every quality table sets beside ours, and the table cells they share
(never used by the product): match, kNN vote, graph recall's own order, and the real Annif's rows.

ranker_quality.py runs them on the whole test split; cascade_quality.py on the same test items as its
LLM rows, so that every row of its table is measured on the same items.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from llm4tag.ranking import precision_cut

KNN = 10
BASELINE = "Annif Omikuji"
ANNIF_BACKENDS = (("omikuji", BASELINE), ("tfidf", "Annif TF-IDF"))
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


def read_rows(path: Path, ids: list[str], emit: int, run: str) -> dict[str, list] | None:
    """A peer's cached rows for these items (its first ``emit`` tags each), or None, saying so, if it
    has not run; ``run``: the command that tags the items."""
    if not path.exists():
        print(f"# no rows in {path}: {run}")
        return None
    rows = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            rows[row["id"]] = row["tags"][:emit]
    missing = [i for i in ids if i not in rows]
    if missing:
        raise SystemExit(f"{path} has no row for {len(missing)} test items (e.g. {missing[0]}): {run}")
    return {i: rows[i] for i in ids}


def read_timings(folder: Path, method: str) -> dict:
    """What a peer's run measured for ``method`` (its ``timings.json``), empty if nothing."""
    path = folder / "timings.json"
    return json.loads(path.read_text()).get(method, {}) if path.exists() else {}


class Methods:
    """Each method's rows on the same items (``ids``), with its fit seconds and ms per item."""

    def __init__(self, ids: list[str]):
        self.ids = ids
        self.rows: dict[str, dict[str, list]] = {}
        self.fit_s: dict[str, float] = {}
        self.item_ms: dict[str, float] = {}

    def timed(self, label: str, fn, fit_seconds: float) -> None:
        """``fn()`` returns one row per item of ``ids``, in order; its time is the method's per item."""
        started = time.perf_counter()
        rows = fn()
        ms = 1000 * (time.perf_counter() - started) / max(len(self.ids), 1)
        self.add(label, dict(zip(self.ids, rows, strict=True)), fit_seconds, ms)

    def add(self, label: str, rows: dict[str, list], fit_seconds: float, ms_per_item: float | None) -> None:
        self.rows[label] = rows
        self.fit_s[label] = fit_seconds
        self.item_ms[label] = float("nan") if ms_per_item is None else ms_per_item


ANNIF_RUN = ".venv-annif/bin/python -m benchmarks.annif_peer"


def add_peers(methods: Methods, store, vectors: np.ndarray, emit: int, annif: Path, fit_s: float) -> None:
    """The peers' rows on ``methods.ids`` (aligned with ``vectors``). ``annif``: the data set's folder
    of Annif rows; a backend without rows is left out, saying so."""
    methods.timed(
        "match",
        lambda: [
            [{"tag": c.tag, "confidence": clip(c.score)} for c in cands]
            for cands in store.match(vectors, emit)
        ],
        fit_s,
    )
    methods.timed(f"kNN vote ({KNN})", lambda: knn_rows(store, vectors, KNN, emit), fit_s)
    methods.timed(
        "graph recall (today's order)",
        lambda: [
            [{"tag": c.tag, "confidence": clip(c.score / 2)} for c in cands[:emit]]
            for cands in store.recall(vectors)
        ],
        fit_s,
    )
    for backend, label in ANNIF_BACKENDS:
        rows = read_rows(annif / f"{backend}.jsonl", methods.ids, emit, ANNIF_RUN)
        if rows is None:
            continue
        timing = read_timings(annif, backend)
        methods.add(label, rows, timing.get("train_seconds", float("nan")), timing.get("suggest_ms_per_item"))


def coverage_at_precision(gold: dict, preds: dict, target: float = 0.95) -> tuple[float, float | None]:
    """Share of items whose top tag is kept at the lowest confidence threshold that still gives the
    target precision on these items (an oracle threshold, the same for every method), and that
    threshold."""
    conf, right = [], []
    for item_id, tags in gold.items():
        shown = preds.get(item_id) or []
        if shown and shown[0].get("confidence") is not None:
            conf.append(shown[0]["confidence"])
            right.append(shown[0]["tag"] in tags)
    cut = precision_cut(conf, right, target, confidence=None) if conf else None
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
