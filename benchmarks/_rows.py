"""Tagging rows cached per item (never used by the product): a benchmark that runs the LLM pipeline
appends each item's row to a JSON-lines file as it comes, so an interrupted run resumes and a larger
--limit tags only the items not yet there."""

from __future__ import annotations

import json
import time
from pathlib import Path


def cached_rows(path: Path) -> dict[str, dict]:
    rows = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line from an interrupted run: that item is tagged again
            rows[row["id"]] = row
    return rows


def run_llm(
    pipeline, items, path: Path, chunk: int, log_every: int = 1, with_candidates: bool = False
) -> tuple[dict, dict]:
    """The rows of ``items`` from ``path``, tagging the missing ones with ``pipeline`` (``chunk`` items
    a call) and appending them, each with ``seconds``: its chunk's time shared equally. Returns the
    rows by id and what this run tagged (items, seconds)."""
    rows = cached_rows(path)
    todo = [i for i in items if i.id not in rows]
    stats = {"items": 0, "seconds": 0.0}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as sink:
        for start in range(0, len(todo), chunk):
            batch = todo[start : start + chunk]
            t0 = time.perf_counter()
            tagged = pipeline.tag(batch, with_dropped=True, with_candidates=with_candidates)
            seconds = time.perf_counter() - t0
            for row in tagged:
                row["seconds"] = round(seconds / len(batch), 3)  # the chunk's time, shared equally
                rows[row["id"]] = row
                sink.write(json.dumps(row) + "\n")
            sink.flush()
            stats["items"] += len(batch)
            stats["seconds"] += seconds
            if (start // chunk) % log_every == 0:
                done = len(items) - len(todo) + start + len(batch)
                rate = stats["items"] / stats["seconds"]
                print(
                    f"#   {path.parent.name}/{path.stem}: {done}/{len(items)} ({rate:.3f} items/s)",
                    flush=True,
                )
    return {i.id: rows[i.id] for i in items}, stats
