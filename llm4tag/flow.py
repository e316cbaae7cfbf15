"""The order of the stages, written once: encode -> recall (every shard, merged) -> generate ->
calibrate -> rows (-> write back), and feedback's two writes.

A flow is a generator that yields the stage calls it needs and receives their answers (no I/O of its
own). :class:`llm4tag.pipeline.TaggingPipeline` answers them in process (:func:`run`); the Serve
ingress answers them by calling the stage deployments, fanning out per item and per shard, and
awaiting the answers. So the stage order, the merge of the shards' hits, the rows and the default
when nothing calibrates exist in one place, and both serve the same rows.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graph_store import Candidate, RecallConfig
from graph_store.metapaths import select_merged
from llm4tag.calibrator import Judged
from llm4tag.data import Item
from llm4tag.errors import LLM4TagError
from llm4tag.generator import Generation
from llm4tag.knowledge import Sample
from llm4tag.texts import item_text

# --- the calls a flow yields (each answered by the pipeline in process, or by a deployment)


@dataclass
class Encode:
    """Unit vectors of the items' contents -> np.ndarray (n, dim)."""

    contents: list[str]


@dataclass
class Search:
    """Search hits of the vectors in every content shard -> list (one per shard) of list[Hits]."""

    vectors: np.ndarray


@dataclass
class Generate:
    """The LLM's tags among the candidates, with retrieved knowledge -> list[Generation].

    With ``judge``, each batch is also judged in the same call, continuing its generation
    conversations where they were computed (prompts.layout) -> list[tuple[Generation, list[Judged]]].
    """

    ids: list[str]
    contents: list[str]
    vectors: np.ndarray
    candidates: list[list[str]]
    judge: bool = False


@dataclass
class Calibrate:
    """Yes/No verdicts per generated tag -> list[list[Judged]]. ``contexts``: per item, the generation
    prompt and answer that a judgment may continue (prompts.layout; used where the calibrator judges in
    context)."""

    contents: list[str]
    tags: list[list[str]]
    contexts: list[tuple | None]


@dataclass
class Record:
    """Durable upserts of items with tags into their owning shards (their journals) -> None."""

    ids: list[str]
    vectors: np.ndarray
    tags: list[list[str]]
    texts: list[str]


@dataclass
class RecordSamples:
    """Durable samples in the sample knowledge base (its log) -> number recorded."""

    samples: list[Sample]
    vectors: np.ndarray


@dataclass
class Writes:
    """Independent writes, run concurrently where they can be -> one outcome each, in order: its
    answer, or the exception it raised (a failed write does not stop the others)."""

    writes: list[Any]


Call = Encode | Search | Generate | Calibrate | Record | RecordSamples | Writes


@dataclass
class Tagged:
    rows: list[dict]
    candidates: list[list[Candidate]] = field(default_factory=list)
    verdicts: list[list[Judged]] = field(default_factory=list)


@dataclass
class Recorded:
    items: int
    samples: int  # samples written (0: no sample knowledge base)


class FeedbackIncomplete(LLM4TagError):
    """One of feedback's two writes failed. Both are upserts, so the same feedback sent again
    converges; until then a reader sees the part that was written (the sample in prompts, or the
    graph edge in recall), not the other."""

    def __init__(self, written: Sequence[str], failed: Sequence[tuple[str, BaseException]]):
        self.written, self.failed = list(written), list(failed)
        done = f"{' and '.join(written)} recorded, " if written else ""
        problems = "; ".join(f"{name}: {type(exc).__name__}: {exc}" for name, exc in failed)
        super().__init__(
            f"feedback only partly recorded ({done}not {' and '.join(n for n, _ in failed)}: {problems}); "
            "send the same feedback again: it is idempotent"
        )


# --- the flows


def judgment_context(generation: Generation) -> tuple | None:
    """What a judgment continues (the generation prompt and its answer), if the generation has it."""
    if generation.messages and generation.answer:
        return (generation.messages, generation.answer)
    return None


def unjudged(tags: Sequence[Sequence[str]]) -> list[list[Judged]]:
    """Without calibration every generated tag is kept, with an unknown (NaN) confidence."""
    return [[Judged(t, float("nan"), True) for t in item_tags] for item_tags in tags]


def tag_flow(
    items: Sequence[Item],
    *,
    item_fields: Sequence[str],
    tag_names: Sequence[str],
    recall: RecallConfig,
    calibrate: bool,
    write_back: bool,
    judge_with_generation: bool = False,
    with_candidates: bool = False,
    with_dropped: bool = False,
) -> Generator[Call, Any, Tagged]:
    """``judge_with_generation``: the judgments continue the generation conversations
    (``judges_in_context``), so the stage that generated judges, in the same call."""
    if not items:
        return Tagged([])
    ids = [item.id for item in items]
    contents = [item_text(item, item_fields) for item in items]
    vectors = yield Encode(contents)
    per_shard = yield Search(vectors)
    candidates = select_merged(per_shard, tag_names, recall)
    names = [[c.tag for c in cands] for cands in candidates]
    if calibrate and judge_with_generation:
        judged = yield Generate(ids, contents, vectors, names, judge=True)
        generations = [generation for generation, _ in judged]
        verdicts = [item_verdicts for _, item_verdicts in judged]
    else:
        generations = yield Generate(ids, contents, vectors, names)
        tags = [list(g.tags) for g in generations]
        contexts = [judgment_context(g) for g in generations]
        verdicts = (yield Calibrate(contents, tags, contexts)) if calibrate else unjudged(tags)
    rows = [
        result_row(item_id, cands, generation, judged, with_candidates, with_dropped)
        for item_id, cands, generation, judged in zip(ids, candidates, generations, verdicts, strict=True)
    ]
    if write_back:
        # Final tags become deterministic edges (the graph grows as it serves); new items are inserted.
        final = [[t["tag"] for t in row["tags"]] for row in rows]
        yield Record(ids, vectors, final, [item.text for item in items])
    return Tagged(rows, candidates, verdicts)


def feedback_flow(
    items: Sequence[Item], incorrect: Sequence[Sequence[str]], *, item_fields: Sequence[str]
) -> Generator[Call, Any, Recorded]:
    """Corrected annotations: each item's ``tags`` are right, ``incorrect`` (per item) were wrong.

    Two durable writes, independent of each other: the item as a retrievable sample (correct and
    incorrect tags), and its correct tags as deterministic graph edges (a new item is inserted).
    """
    if not items:
        return Recorded(0, 0)
    contents = [item_text(item, item_fields) for item in items]
    vectors = yield Encode(contents)
    samples = [
        Sample(
            id=item.id,
            text=content,
            correct=tuple(item.tags or ()),
            incorrect=tuple(wrong),
            source="feedback",
        )
        for item, content, wrong in zip(items, contents, incorrect, strict=True)
    ]
    edges = Record(
        [i.id for i in items], vectors, [list(i.tags or ()) for i in items], [i.text for i in items]
    )
    outcomes = yield Writes([RecordSamples(samples, vectors), edges])
    names = ("the samples", "the graph edges")
    failed = [
        (name, out) for name, out in zip(names, outcomes, strict=True) if isinstance(out, BaseException)
    ]
    if failed:
        written = [
            name for name, out in zip(names, outcomes, strict=True) if not isinstance(out, BaseException)
        ]
        raise FeedbackIncomplete(written, failed) from failed[0][1]
    return Recorded(len(items), outcomes[0] or 0)


def run(flow: Generator[Call, Any, Any], answer: Callable[[Call], Any]) -> Any:
    """Drive a flow in process: ``answer`` gives each call's result."""
    result = None
    while True:
        try:
            call = flow.send(result)
        except StopIteration as stop:
            return stop.value
        if isinstance(call, Writes):
            result = []
            for write in call.writes:
                try:
                    result.append(answer(write))
                except Exception as exc:  # reported per write: the flow says what was written
                    result.append(exc)
        else:
            result = answer(call)


# --- output rows


def result_row(
    item_id: str,
    candidates: Sequence[Candidate],
    generation: Generation,
    verdicts: Sequence[Judged],
    with_candidates: bool = False,
    with_dropped: bool = False,
) -> dict:
    """One output row: kept tags with confidence and provenance (the recall meta-path that found them)."""
    by_tag = {c.tag: c for c in candidates}
    row = {
        "id": item_id,
        "tags": [_tag_row(v, by_tag.get(v.tag)) for v in verdicts if v.kept],
        "knowledge": {"samples": generation.sample_ids, "snippets": generation.snippet_ids},
        # The LLM's own order, before calibration re-ranks and filters.
        "generated": list(generation.tags),
    }
    if with_dropped:
        row["dropped"] = [_tag_row(v, by_tag.get(v.tag)) for v in verdicts if not v.kept]
    if with_candidates:
        row["candidates"] = [c.to_dict() for c in candidates]
    if generation.raw is not None:
        row["raw"] = generation.raw
    return row


def _tag_row(verdict: Judged, candidate) -> dict:
    row = {
        "tag": verdict.tag,
        "confidence": None if verdict.confidence != verdict.confidence else round(verdict.confidence, 6),
        "source": "+".join(candidate.paths) if candidate is not None else "llm",
    }
    if candidate is not None:
        row["recall_score"] = round(float(candidate.score), 6)
        if candidate.via:
            row["via"] = list(candidate.via)
    return row
