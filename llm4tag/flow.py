"""The order of the stages, written once, as sub-flows that every way of tagging runs:

    route_flow      Encode -> Search (every shard, merged) -> Rank (a fitted ranking) -> route each item
    generate_flow   Generate among the candidates, for the items routed to the LLM (judged in the same
                    call where the judgments continue the generation conversations)
    judge_flow      Calibrate the generated tags that generate_flow did not judge
    tagged_rows     one row per item (pure), then the write-back (WriteEdges) when configured

``tag_flow`` runs them in that order. The in-process pipeline drives it with :func:`run`, the Serve
ingress with :func:`run_async` over the stage deployments, and the bulk job runs each sub-flow in an
actor pool of its own, passing :class:`Routed` and :class:`Generated` between them as columns
(cluster/bulk.py). So the stage order, the merge of the shards' hits, the routing rule and the rows
exist once.

Without a fitted ranking the plan is :meth:`RoutePlan.unranked`: every item goes to the LLM with graph
recall's candidates (the paper's pipeline is the route plan that ranks nothing). With one, confident
items take the ranker's tags and only the others reach Generate and Calibrate (llm4tag/ranking/cascade).

A flow is a generator that yields the stage calls it needs and receives their answers (no I/O of its
own); the settings it needs are one :class:`FlowOptions`, built once from the settings.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Collection, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graph_store import RecallConfig
from graph_store.metapaths import Hits, merge_hits, select_merged
from llm4tag.calibrator import Judged
from llm4tag.config import Settings
from llm4tag.data import Item
from llm4tag.encoded_text import item_text
from llm4tag.errors import LLM4TagError
from llm4tag.generator import Generation
from llm4tag.knowledge import Sample
from llm4tag.ranking.cascade import FinalTag, ItemRoute, RoutePlan, final_tags, judged_tags, route_items
from llm4tag.ranking.models import ScoredTag

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
class WriteEdges:
    """Durable upserts of items with tags, as deterministic edges, into their owning shards (their
    journals) -> None."""

    ids: list[str]
    vectors: np.ndarray
    tags: list[list[str]]
    texts: list[str]


@dataclass
class WriteSamples:
    """Durable samples in the sample knowledge base (its log) -> number recorded."""

    samples: list[Sample]
    vectors: np.ndarray


@dataclass
class Writes:
    """Independent writes, run concurrently where they can be -> one outcome each, in order: its
    answer, or the exception it raised (a failed write does not stop the others)."""

    writes: list[Any]


Call = Encode | Search | Rank | Generate | Calibrate | WriteEdges | WriteSamples | Writes
WRITES = (WriteEdges, WriteSamples, Writes)
# The stage a call's time is reported as (timings, the stage latency metric).
STAGE_OF = {
    Encode: "encode",
    Search: "recall",
    Rank: "rank",
    Generate: "generate",
    Calibrate: "calibrate",
    WriteEdges: "write_back",
    WriteSamples: "write",
    Writes: "write",
}


# --- what the flows need, built once


@dataclass(frozen=True)
class FlowOptions:
    """What the tag flow needs of the settings and the store, built once (:meth:`of`) by every driver."""

    item_fields: tuple[str, ...]
    tag_names: tuple[str, ...]
    recall: RecallConfig
    plan: RoutePlan
    calibrate: bool
    # The judgments continue the generation conversations: the stage that generated judges, in the
    # same call (Settings.judges_with_generation).
    judges_with_generation: bool
    write_back: bool

    @classmethod
    def of(cls, settings: Settings, tag_names: Sequence[str], plan: RoutePlan) -> FlowOptions:
        return cls(
            item_fields=tuple(settings.texts.item_fields),
            tag_names=tuple(tag_names),
            recall=settings.graph.recall,
            plan=plan,
            calibrate=settings.pipeline.calibrate,
            judges_with_generation=settings.judges_with_generation,
            write_back=settings.pipeline.write_back,
        )


# --- what passes between the sub-flows


@dataclass
class Routed:
    """route_flow's result: the items' contents, vectors and routes."""

    ids: list[str]
    contents: list[str]
    vectors: np.ndarray
    routes: list[ItemRoute]

    @property
    def sent(self) -> list[int]:
        """The positions of the items routed to the LLM."""
        return [i for i, route in enumerate(self.routes) if route.needs_llm]


@dataclass
class Generated:
    """generate_flow's and judge_flow's results, per item: the generation (None: not sent to the LLM)
    and the verdicts on its tags (None: not judged yet)."""

    generations: list[Generation | None]
    verdicts: list[list[Judged] | None]


@dataclass
class Tagged:
    rows: list[dict]
    routes: list[ItemRoute] = field(default_factory=list)
    final: list[list[FinalTag]] = field(default_factory=list)  # per item, kept and dropped tags

    @property
    def sent_to_llm(self) -> int:
        return sum(route.needs_llm for route in self.routes)


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


# --- the sub-flows


def judgment_context(generation: Generation) -> tuple | None:
    """What a judgment continues (the generation prompt and its answer), if the generation has it."""
    if generation.messages and generation.answer:
        return (generation.messages, generation.answer)
    return None


def unjudged(tags: Sequence[Sequence[str]]) -> list[list[Judged]]:
    """Without calibration every generated tag is kept, with an unknown (NaN) confidence."""
    return [[Judged(t, float("nan"), True) for t in item_tags] for item_tags in tags]


def route_flow(items: Sequence[Item], options: FlowOptions) -> Generator[Call, Any, Routed]:
    """Encode, search every shard, rank (with a ranking) and route each item."""
    ids = [item.id for item in items]
    contents = [item_text(item, options.item_fields) for item in items]
    vectors = yield Encode(contents)
    per_shard = yield Search(vectors)
    if options.plan.ranked:
        search_k = options.recall.c2c_search_k
        hits = [merge_hits(list(parts), search_k) for parts in zip(*per_shard, strict=True)]
        scored = yield Rank(contents, vectors, hits)
    else:
        scored = [
            [ScoredTag.of_candidate(c) for c in candidates]
            for candidates in select_merged(per_shard, options.tag_names, options.recall)
        ]
    return Routed(ids, contents, vectors, route_items(scored, options.plan))


def generate_flow(routed: Routed, options: FlowOptions) -> Generator[Call, Any, Generated]:
    """Generation for the items routed to the LLM; judged in the same call where the judgments
    continue the generation conversations."""
    generations: list[Generation | None] = [None] * len(routed.routes)
    verdicts: list[list[Judged] | None] = [None] * len(routed.routes)
    sent = routed.sent
    if sent:
        call = Generate(
            [routed.ids[i] for i in sent],
            [routed.contents[i] for i in sent],
            routed.vectors[sent],
            [routed.routes[i].candidates for i in sent],
            judge=options.judges_with_generation,
        )
        answers = yield call
        for i, answer in zip(sent, answers, strict=True):
            if call.judge:
                generations[i], verdicts[i] = answer
            else:
                generations[i] = answer
    return Generated(generations, verdicts)


def judge_flow(routed: Routed, generated: Generated, options: FlowOptions) -> Generator[Call, Any, Generated]:
    """Verdicts on the generated tags not judged yet (all kept, unjudged, without calibration)."""
    todo = [i for i, g in enumerate(generated.generations) if g is not None and generated.verdicts[i] is None]
    if not todo:
        return generated
    tags = [judged_tags(routed.routes[i], generated.generations[i].tags) for i in todo]
    if options.calibrate:
        contexts = [judgment_context(generated.generations[i]) for i in todo]
        judged = yield Calibrate([routed.contents[i] for i in todo], tags, contexts)
    else:
        judged = unjudged(tags)
    verdicts = list(generated.verdicts)
    for i, item_verdicts in zip(todo, judged, strict=True):
        verdicts[i] = item_verdicts
    return Generated(list(generated.generations), verdicts)


def tag_flow(
    items: Sequence[Item],
    options: FlowOptions,
    *,
    with_candidates: bool = False,
    with_dropped: bool = False,
    unnamed: Collection[str] = frozenset(),
) -> Generator[Call, Any, Tagged]:
    """The sub-flows in their order. ``unnamed``: ids the caller did not give (the service numbered
    the items), never written back."""
    if not items:
        return Tagged([])
    routed = yield from route_flow(items, options)
    generated = yield from generate_flow(routed, options)
    generated = yield from judge_flow(routed, generated, options)
    tagged = tagged_rows(routed, generated, options.plan, with_candidates, with_dropped)
    if options.write_back:
        yield from write_back_flow(routed, tagged.rows, [item.text for item in items], unnamed)
    return tagged


def write_back_flow(
    routed: Routed, rows: Sequence[dict], texts: Sequence[str], unnamed: Collection[str]
) -> Generator[Call, Any, None]:
    """Final tags become deterministic edges (the graph grows as it serves; new items are inserted),
    for the items the caller named."""
    named = [row for row, item_id in enumerate(routed.ids) if item_id not in unnamed]
    if named:
        yield WriteEdges(
            [routed.ids[r] for r in named],
            routed.vectors[named],
            [[t["tag"] for t in rows[r]["tags"]] for r in named],
            [texts[r] for r in named],
        )


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
    edges = WriteEdges(
        [i.id for i in items], vectors, [list(i.tags or ()) for i in items], [i.text for i in items]
    )
    outcomes = yield Writes([WriteSamples(samples, vectors), edges])
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


# --- the drivers


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


class DeadlinePassed(LLM4TagError):
    """A flow still ran at its deadline: the call in progress (of ``stage``) was cancelled."""

    def __init__(self, stage: str):
        self.stage = stage
        super().__init__(f"the request ran past its deadline during {stage}")


async def run_async(
    flow: Generator[Call, Any, Any],
    answer: Callable[[Call], Awaitable[Any]],
    *,
    deadline: float | None = None,
    timings: dict[str, float] | None = None,
) -> Any:
    """Drive a flow over asynchronous stages (the Serve ingress). ``deadline`` (the event loop's
    clock): a call still running then is cancelled and :class:`DeadlinePassed` raised; writes are
    shielded, never cut short (by the deadline or by a client that goes away). ``timings``: the
    milliseconds of each stage are added to it (a call may split its own time: an answer of type
    :class:`Timed`)."""
    result = None
    loop = asyncio.get_running_loop()
    while True:
        try:
            call = flow.send(result)
        except StopIteration as stop:
            return stop.value
        started = time.perf_counter()
        if isinstance(call, WRITES):
            result = await asyncio.shield(asyncio.ensure_future(answer(call)))
        else:
            try:
                result = await asyncio.wait_for(
                    answer(call), None if deadline is None else max(0.0, deadline - loop.time())
                )
            except TimeoutError:
                raise DeadlinePassed(STAGE_OF[type(call)]) from None
        split: dict[str, float] = {}
        if isinstance(result, Timed):
            result, split = result.value, result.ms
        if timings is not None:
            stage = STAGE_OF[type(call)]
            ms = (time.perf_counter() - started) * 1000
            timings[stage] = timings.get(stage, 0.0) + ms - sum(split.values())
            for other, other_ms in split.items():
                timings[other] = timings.get(other, 0.0) + other_ms


@dataclass
class Timed:
    """An answer that says how much of its call's time went to another stage (a Generate call that
    also judged: the judging is reported as calibrate)."""

    value: Any
    ms: dict[str, float]


# --- output rows


def tagged_rows(
    routed: Routed,
    generated: Generated,
    plan: RoutePlan,
    with_candidates: bool = False,
    with_dropped: bool = False,
) -> Tagged:
    """The output rows, one per item (docs/usage.md: "Output rows")."""
    rows, finals = [], []
    for item_id, route, generation, verdicts in zip(
        routed.ids, routed.routes, generated.generations, generated.verdicts, strict=True
    ):
        yes = {v.tag: v.confidence for v in verdicts or ()}
        final = final_tags(route, plan, list(generation.tags) if generation else [], yes)
        finals.append(final)
        rows.append(tagged_row(item_id, route, final, generation, plan, with_candidates, with_dropped))
    return Tagged(rows, list(routed.routes), finals)


def why_no_tag(
    route: ItemRoute, final: Sequence[FinalTag], generation: Generation | None, plan: RoutePlan
) -> str:
    """Why an item's answer holds no tag: no tag of the vocabulary fits it well enough, which is an
    answer (an item outside what the vocabulary covers), said so that a reader can tell it from a loss."""
    if not final:  # nothing kept nor dropped: nothing to choose from, or the LLM chose nothing
        if not route.scored and not route.candidates:
            return "recall found no candidate tag"
        return "the LLM chose none of the candidate tags"
    scored = [t for t in final if not math.isnan(t.confidence)]  # NaN: not calibrated
    if not scored:
        return "no tag was kept"
    best = max(scored, key=lambda t: t.confidence)
    cut = plan.ranker_cut if best.by == "ranker" else plan.llm_cut
    return (
        f"no tag reaches the cut {cut:.3g}: the likeliest, '{best.tag}', has confidence {best.confidence:.3g}"
    )


def tagged_row(
    item_id: str,
    route: ItemRoute,
    final: Sequence[FinalTag],
    generation: Generation | None,
    plan: RoutePlan,
    with_candidates: bool = False,
    with_dropped: bool = False,
) -> dict:
    """One output row: ``route`` says who settled the item (ranker or llm); each tag its final
    confidence, ``by`` whom it was kept, its provenance and, where known, the ranker's probability and
    the LLM's Yes."""
    row = {
        "id": item_id,
        "tags": [t.to_dict() for t in final if t.kept],
        "route": "llm" if route.needs_llm else "ranker",
        "knowledge": {
            "samples": generation.sample_ids if generation else [],
            "snippets": generation.snippet_ids if generation else [],
        },
        # The LLM's own order, before calibration re-ranks and filters.
        "generated": list(generation.tags) if generation else [],
    }
    if not row["tags"]:
        row["no_tag"] = why_no_tag(route, final, generation, plan)
    if with_dropped:
        row["dropped"] = [t.to_dict() for t in final if not t.kept]
    if with_candidates:
        row["candidates"] = [s.to_dict() for s in route.scored[: plan.num_candidates]]
    if generation is not None and generation.raw is not None:
        row["raw"] = generation.raw
    return row
