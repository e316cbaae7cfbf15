"""The order of the stages, written once: encode -> recall (every shard, merged) -> generate ->
calibrate -> rows (-> write back), and feedback's two writes.

With a fitted ranking in the store (``plan``: llm4tag.ranking.store_routing.route_plan) the tag flow ranks
the merged candidates (the learned recall's join them), routes each item (llm4tag.ranking.cascade):
confident items take the ranker's tags, only the others are sent to Generate (and Calibrate), so in
every way of tagging the routed items never reach the LLM.

A flow is a generator that yields the stage calls it needs and receives their answers (no I/O of its
own). :class:`llm4tag.pipeline.TaggingPipeline` answers them in process (:func:`run`); the Serve
ingress answers them by calling the stage deployments, fanning out per item and per shard, and
awaiting the answers. So the stage order, the merge of the shards' hits, the rows and the default
when nothing calibrates exist in one place, and both serve the same rows.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graph_store import Candidate, RecallConfig
from graph_store.metapaths import Hits, merge_hits, select_merged
from llm4tag.calibrator import Judged
from llm4tag.data import Item
from llm4tag.encoded_text import item_text
from llm4tag.errors import LLM4TagError
from llm4tag.generator import Generation
from llm4tag.knowledge import Sample
from llm4tag.ranking.cascade import FinalTag, ItemRoute, RoutePlan, final_tags, judged_tags, route_items

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
class Rank:
    """Every candidate of each item (graph recall's from its merged hits, and the learned recall's)
    with the ranker's calibrated probability, best first -> list[list[ScoredTag]]."""

    contents: list[str]
    vectors: np.ndarray
    hits: list[Hits]


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


Call = Encode | Search | Rank | Generate | Calibrate | Record | RecordSamples | Writes


@dataclass
class Tagged:
    rows: list[dict]
    candidates: list[list[Candidate]] = field(default_factory=list)
    verdicts: list[list[Judged]] = field(default_factory=list)
    sent_to_llm: int | None = None  # with a route plan: items that went to the LLM (the rest: the ranker)


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
    unnamed: Collection[str] = frozenset(),
    plan: RoutePlan | None = None,
) -> Generator[Call, Any, Tagged]:
    """``judge_with_generation``: the judgments continue the generation conversations
    (``judges_in_context``), so the stage that generated judges, in the same call. ``unnamed``: ids
    the caller did not give (the service numbered the items), never written back. ``plan``: route
    with the store's ranking (None: recall's candidates go to the LLM, the paper's pipeline)."""
    if not items:
        return Tagged([], sent_to_llm=0 if plan is not None else None)
    ids = [item.id for item in items]
    contents = [item_text(item, item_fields) for item in items]
    vectors = yield Encode(contents)
    per_shard = yield Search(vectors)
    if plan is not None:
        tagged = yield from _routed(
            ids,
            contents,
            vectors,
            per_shard,
            recall,
            plan,
            calibrate,
            judge_with_generation,
            with_candidates,
            with_dropped,
        )
        if write_back:
            yield from _record_named(ids, vectors, tagged.rows, [item.text for item in items], unnamed)
        return tagged
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
        yield from _record_named(ids, vectors, rows, [item.text for item in items], unnamed)
    return Tagged(rows, candidates, verdicts)


def _record_named(
    ids: Sequence[str],
    vectors: np.ndarray,
    rows: Sequence[dict],
    texts: Sequence[str],
    unnamed: Collection[str],
) -> Generator[Call, Any, None]:
    """Write back: final tags become deterministic edges (the graph grows as it serves; new items are
    inserted), for the items the caller named."""
    named = [row for row, item_id in enumerate(ids) if item_id not in unnamed]
    if named:
        yield Record(
            [ids[r] for r in named],
            vectors[named],
            [[t["tag"] for t in rows[r]["tags"]] for r in named],
            [texts[r] for r in named],
        )


def route_flow(
    contents: list[str],
    vectors: np.ndarray,
    per_shard: Sequence[Sequence[Hits]],
    recall: RecallConfig,
    plan: RoutePlan,
) -> Generator[Call, Any, list[ItemRoute]]:
    """Rank each item's merged candidates and route it (the bulk job's recall stage runs this too)."""
    hits = [merge_hits(list(parts), recall.c2c_search_k) for parts in zip(*per_shard, strict=True)]
    return route_items((yield Rank(contents, vectors, hits)), plan)


def _routed(
    ids: list[str],
    contents: list[str],
    vectors: np.ndarray,
    per_shard: Sequence[Sequence[Hits]],
    recall: RecallConfig,
    plan: RoutePlan,
    calibrate: bool,
    judge_with_generation: bool,
    with_candidates: bool,
    with_dropped: bool,
) -> Generator[Call, Any, Tagged]:
    routes = yield from route_flow(contents, vectors, per_shard, recall, plan)
    sent = [i for i, r in enumerate(routes) if r.needs_llm]
    generations: list[Generation | None] = [None] * len(routes)
    verdicts: list[list[Judged]] = [[] for _ in routes]
    if sent:
        call = Generate(
            [ids[i] for i in sent],
            [contents[i] for i in sent],
            vectors[sent],
            [routes[i].candidates for i in sent],
        )
        if calibrate and judge_with_generation:
            call.judge = True
            for i, (generation, judged) in zip(sent, (yield call), strict=True):
                generations[i], verdicts[i] = generation, judged
        else:
            for i, generation in zip(sent, (yield call), strict=True):
                generations[i] = generation
            tags = [judged_tags(routes[i], generations[i].tags) for i in sent]
            contexts = [judgment_context(generations[i]) for i in sent]
            judged = (
                (yield Calibrate([contents[i] for i in sent], tags, contexts))
                if calibrate
                else unjudged(tags)
            )
            for i, item_verdicts in zip(sent, judged, strict=True):
                verdicts[i] = item_verdicts
    rows = routed_rows(ids, routes, generations, verdicts, plan, with_candidates, with_dropped)
    return Tagged(rows, [], verdicts, sent_to_llm=len(sent))


def feedback_flow(
    items: Sequence[Item],
    incorrect: Sequence[Sequence[str]],
    *,
    item_fields: Sequence[str],
    sender: str | None = None,
    reviewer: str | None = None,
) -> Generator[Call, Any, Recorded]:
    """Corrected annotations: each item's ``tags`` are right, ``incorrect`` (per item) were wrong;
    ``sender`` and ``reviewer`` are recorded on the samples (see :class:`Sample`).

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
            sender=sender,
            reviewer=reviewer,
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


def routed_rows(
    ids: Sequence[str],
    routes: Sequence[ItemRoute],
    generations: Sequence[Generation | None],
    verdicts: Sequence[Sequence[Judged]],
    plan: RoutePlan,
    with_candidates: bool = False,
    with_dropped: bool = False,
) -> list[dict]:
    """The output rows of routed items (``generations``/``verdicts``: None/[] for those the ranker
    settled)."""
    rows = []
    for item_id, item_route, generation, judged in zip(ids, routes, generations, verdicts, strict=True):
        yes = {v.tag: v.confidence for v in judged}
        final = final_tags(item_route, plan, list(generation.tags) if generation else [], yes)
        rows.append(routed_row(item_id, item_route, final, generation, plan, with_candidates, with_dropped))
    return rows


def routed_row(
    item_id: str,
    item_route: ItemRoute,
    final: Sequence[FinalTag],
    generation: Generation | None,
    plan: RoutePlan,
    with_candidates: bool = False,
    with_dropped: bool = False,
) -> dict:
    """One output row of a routed item: ``route`` says who settled it (ranker or llm); each tag says
    ``by`` whom, its final confidence, the ranker's probability and (judged) the LLM's Yes."""
    row = {
        "id": item_id,
        "tags": [t.to_dict() for t in final if t.kept],
        "route": "llm" if item_route.needs_llm else "ranker",
        "knowledge": {
            "samples": generation.sample_ids if generation else [],
            "snippets": generation.snippet_ids if generation else [],
        },
        "generated": list(generation.tags) if generation else [],
    }
    if with_dropped:
        row["dropped"] = [t.to_dict() for t in final if not t.kept]
    if with_candidates:
        row["candidates"] = [s.to_dict() for s in item_route.scored[: plan.num_candidates]]
    if generation is not None and generation.raw is not None:
        row["raw"] = generation.raw
    return row
