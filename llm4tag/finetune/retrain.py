"""`llm4tag retrain`: the product keeps learning (paper: retrain every two weeks on new annotations).

1. The annotated items (and the store's feedback) are split into training items and a held-out set,
   chosen by a hash of the item id: stable across runs, so an item evaluated once is never trained on.
   Held-out labels are the annotations and reviewed feedback only (:func:`promotion_split`).
2. Nothing new since the active adapters' data (item digests in their data manifest): exit 0 unless
   --force.
3. Training data from the training items (``train-data``), then one adapter per role (``train``).
4. The pipeline tags the held-out items twice, with the active adapters and with the new ones, on a
   store built from the training items only; the project's metrics (F1 of the top tag for single-tag
   sets, Acc@1 for multi-tag ones; ECE) are reported for both.
5. Promotion when the new score is not worse (within finetune.retrain.tolerance): active.json is
   rewritten (serving follows it) and a record appended to promotions.jsonl either way.

Exit codes (for cron): 0 promoted or nothing new, 3 trained but not promoted (old adapters kept),
2 bad input, 1 an unexpected failure.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from graph_store.durable import append_lines
from llm4tag.data import Item
from llm4tag.encoder import Encoder
from llm4tag.engines import make_engine
from llm4tag.errors import LLM4TagError
from llm4tag.evaluation.tagging import evaluate_tagging
from llm4tag.finetune.registry import read_active, write_active
from llm4tag.finetune.train import train
from llm4tag.finetune.training_data import (
    annotated_mode,
    build_data,
    item_digest,
    load_feedback,
    merge_feedback,
    read_pool,
)
from llm4tag.knowledge import Sample
from llm4tag.pipeline import TaggingPipeline
from llm4tag.progress import step
from llm4tag.recaller import Recaller
from llm4tag.store_builder import build_parts

EXIT_NOT_PROMOTED = 3


def in_holdout(item_id: str, fraction: float) -> bool:
    digest = int(hashlib.sha1(item_id.encode()).hexdigest()[:8], 16)
    return digest / 0xFFFFFFFF < fraction


def promotion_split(
    items: Sequence[Item], feedback: Sequence[Sample], fraction: float, held_max: int | None
) -> tuple[list[Item], list[Item]]:
    """The training items and the held-out items that decide promotion. All feedback joins the training
    items (it may be noisy; the held-out score tells). The held-out items carry only labels someone
    vouched for: the annotations, and feedback a reviewer decided (``Sample.reviewed``). Unreviewed
    feedback, which any holder of a write key can send, neither relabels a held-out item (its
    annotation stands) nor adds one, so it cannot choose which adapter is promoted."""
    merged, _, _ = merge_feedback(items, feedback)
    vouched, _, _ = merge_feedback(items, [s for s in feedback if s.reviewed])
    train_items = [i for i in merged if i.tags and not in_holdout(i.id, fraction)]
    held = [i for i in vouched if i.tags and in_holdout(i.id, fraction)]
    return train_items, held[:held_max]


def _previous_items(active: dict[str, Any]) -> dict[str, str]:
    """Item digests of the data the active adapters were trained on (empty: none)."""
    seen: dict[str, str] = {}
    for role in ("generator", "calibrator"):
        path = active.get(role)
        if not path:
            continue
        manifest_path = Path(path) / "training_manifest.json"
        if not manifest_path.is_file():
            continue
        data_path = Path(json.loads(manifest_path.read_text()).get("data", {}).get("path", ""))
        if (data_path / "manifest.json").is_file():
            seen.update(json.loads((data_path / "manifest.json").read_text()).get("items", {}))
    return seen


def primary_metric(report: dict[str, Any]) -> tuple[str, float]:
    key = "f1" if report["task"] == "single" else "acc@1"
    return key, float(report.get(key) or 0.0)


def evaluate_adapters(pipeline, engine, items, adapters: dict[str, str | None]) -> dict[str, Any]:
    """Tag ``items`` with the given adapter per role (None: base model); the project's metrics."""
    for role in ("generator", "calibrator"):
        engine.adapters.load(role, adapters.get(role))
    started = time.perf_counter()
    rows = pipeline.tag(items, with_dropped=True)
    gold = {i.id: set(i.tags or ()) for i in items}
    kept = {r["id"]: r["tags"] for r in rows}
    everything = {r["id"]: r["tags"] + r.get("dropped", []) for r in rows}
    report = evaluate_tagging(gold, kept)
    full = evaluate_tagging(gold, everything, task=report["task"])
    metric, value = primary_metric(report)
    keys = ("items", "precision", "recall", "f1", "acc@1", "acc@2", "acc@3", "coverage@1", "tags_per_item")
    return {
        "adapters": adapters,
        "metric": metric,
        "value": value,
        **{k: report.get(k) for k in keys},
        "ece": (full.get("calibration") or {}).get("ece"),
        "seconds": round(time.perf_counter() - started, 2),
    }


def eval_pipeline(settings, train_items, tags, knowledge=()):
    """A pipeline over a store built from ``train_items`` only (in memory), with its engine."""
    encoder = Encoder(settings.encoder)
    parts = build_parts(train_items, tags, settings, encoder, knowledge_files=list(knowledge))
    engine = make_engine(settings.llm)
    mode = annotated_mode(settings.pipeline.mode, train_items)
    max_tags = 1 if mode == "single" else settings.pipeline.max_tags
    pipeline = TaggingPipeline(
        Recaller(parts.store, encoder, settings.texts),
        engine,
        settings,
        parts.samples,
        parts.domain,
        max_tags=max_tags,
    )
    return pipeline, engine


def retrain(
    settings,
    items_path: str,
    tags_path: str,
    adapters_dir: str,
    *,
    store: str | None = None,
    split: str | None = "train",
    knowledge=(),
    eval_items: int | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    config = settings.finetune.retrain
    root = Path(adapters_dir)
    active_path = root / "active.json"
    active = read_active(active_path)
    items, tags = read_pool(items_path, tags_path, split)
    feedback = load_feedback(store) if store and settings.finetune.data.use_feedback else []
    train_items, held = promotion_split(
        items, feedback, config.holdout_fraction, eval_items or config.holdout_max
    )
    held_ids = {i.id for i in held}
    if not held or not train_items:
        raise LLM4TagError(f"cannot split {len(items)} items into training and held-out items")
    previous = _previous_items(active)
    new = [i.id for i in train_items if previous.get(i.id) != item_digest(i)]
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    report: dict[str, Any] = {
        "started": stamp,
        "items": len(items),
        "feedback": {
            "reviewed": sum(s.reviewed for s in feedback),
            "unreviewed": sum(not s.reviewed for s in feedback),
        },
        "train_items": len(train_items),
        "held_out": len(held),
        "new_since_active": len(new),
        "active_before": {r: active.get(r) for r in ("generator", "calibrator")},
    }
    if not new and not force:
        report.update(status="nothing new", exit_code=0)
        return report
    data_dir = root / "data" / stamp
    with step(f"retrain: training data from {len(train_items)} items ({len(new)} new)"):
        data = build_data(settings, train_items, tags, data_dir, knowledge=knowledge, exclude=held_ids)
    report["data"] = {"path": str(data_dir), "hash": data["hash"], "counts": data["counts"]}
    trained: dict[str, str] = {}
    report["training"] = {}
    for role in config.roles:
        out = root / role / stamp
        manifest = train(role, data_dir, out, settings, progress=progress)
        trained[role] = str(out)
        report["training"][role] = {
            k: manifest.get(k) for k in ("steps", "loss_before", "loss_after", "seconds", "peak_memory_mb")
        }
    pipeline, engine = eval_pipeline(settings, train_items, tags, knowledge)
    try:
        old = {r: active.get(r) for r in ("generator", "calibrator")}
        candidate = {**old, **trained}
        with step("retrain: evaluate the adapters", total=2 * len(held)) as bar:
            report["old"] = evaluate_adapters(pipeline, engine, held, old)
            bar.update(len(held))
            report["new"] = evaluate_adapters(pipeline, engine, held, candidate)
            bar.update(len(held))
    finally:
        engine.close()
    promote = report["new"]["value"] >= report["old"]["value"] - config.tolerance
    report["promoted"] = promote
    if promote:
        write_active(active_path, trained, by=f"retrain {stamp}")
    report.update(
        status="promoted" if promote else "kept the active adapters",
        exit_code=0 if promote else EXIT_NOT_PROMOTED,
    )
    report["finished"] = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    _append(root / "promotions.jsonl", report)
    return report


def _append(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    append_lines(path, [json.dumps(record, default=str).encode()])
