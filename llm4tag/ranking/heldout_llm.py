"""What the LLM does with annotated items it has not seen: the outcomes the cascade is fitted on
(``route: auto``'s tau and the final calibration, ranking/cascade.py: fit_cascade).

Each item is one of the store's annotated items, and what the LLM is given about it is what a new
item would get, without the item itself:
* its candidates are its out-of-fold ones (``heldout.jsonl.gz``: ranked and scored by learned recall,
  graph folds and a ranker that never saw it), the first ``num_candidates`` as in ``route: off``;
* the samples retrieved for its prompt exclude its own id (llm4tag/generator.py passes every item's id
  as ``exclude_ids``);
* the generation and the judgments are the pipeline's own calls, with the configured prompts and
  adapters. (An adapter fine-tuned on the store's annotations has seen the item: the outcomes are then
  optimistic; ``train-data`` holds out items for that reason, and the note in the summary says so.)

Outcomes are appended to ``RANKING/llm_outcomes.jsonl`` as they come, so an interrupted run resumes;
the file lives in the ranking folder, so a refit of the ranking (new out-of-fold candidates) starts
it afresh.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from graph_store.durable import append_lines
from llm4tag.progress import step
from llm4tag.ranking.cascade import HeldOutOutcome
from llm4tag.ranking.models import HeldOutItem
from llm4tag.ranking.provenance import LeakError

OUTCOMES = "llm_outcomes.jsonl"


def choose_items(held: Sequence[HeldOutItem], n: int, seed: int = 0) -> list[HeldOutItem]:
    """``n`` held-out items in a fixed random order (the same ``seed`` picks the same items, so a
    resumed or enlarged run keeps what it has)."""
    order = list(held)
    random.Random(seed).shuffle(order)
    return order[: max(0, n)]


def read_outcomes(path: str | Path) -> dict[str, HeldOutOutcome]:
    """The outcomes a run wrote (a torn last line from an interrupted run is skipped)."""
    out: dict[str, HeldOutOutcome] = {}
    path = Path(path)
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            outcome = HeldOutOutcome.from_dict(json.loads(line))
        except (ValueError, KeyError, TypeError):
            continue
        out[outcome.id] = outcome
    return out


def run_held_out(
    pipeline,
    items: Sequence[HeldOutItem],
    texts: dict[str, str],
    vectors: dict[str, np.ndarray],
    num_candidates: int,
    log_path: str | Path,
    chunk: int = 8,
) -> list[HeldOutOutcome]:
    """The LLM's outcome on each item (those already in ``log_path`` are read, not run again)."""
    done = read_outcomes(log_path)
    todo = [i for i in items if i.id not in done and i.id in texts]
    with step("held-out LLM outcomes", total=len(items), initial=len(items) - len(todo)) as bar:
        for start in range(0, len(todo), chunk):
            batch = todo[start : start + chunk]
            _run_chunk(pipeline, batch, texts, vectors, num_candidates, log_path, done)
            bar.update(len(batch))
    return [done[i.id] for i in items if i.id in done]


def _run_chunk(pipeline, batch, texts, vectors, num_candidates, log_path, done) -> None:
    """One chunk of items through generation and calibration, appended to the log as it ends."""
    ids = [i.id for i in batch]
    contents = [texts[i] for i in ids]
    candidates = [[s.tag for s in i.scored[:num_candidates]] for i in batch]
    clock = time.perf_counter()
    generations = pipeline.generate(ids, contents, np.stack([vectors[i] for i in ids]), candidates)
    verdicts = pipeline.calibrate(contents, [list(g.tags) for g in generations], generations)
    seconds = (time.perf_counter() - clock) / len(batch)
    rows = []
    for item, generation, judged in zip(batch, generations, verdicts, strict=True):
        outcome = HeldOutOutcome(
            item.id,
            item.scored[:num_candidates],
            list(item.gold),
            list(generation.tags),
            {v.tag: float(v.confidence) for v in judged if v.confidence == v.confidence},
            seconds,
            list(generation.sample_ids),
        )
        if item.id in outcome.samples:  # the generator excludes it: never fit on an item that saw itself
            raise LeakError(f"held-out item {item.id!r} was shown itself among the retrieved samples")
        done[item.id] = outcome
        rows.append(json.dumps(outcome.to_dict()).encode())
    append_lines(log_path, rows)
