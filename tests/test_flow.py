"""The stage order (llm4tag/flow.py) driven by a fake answerer (pure logic, no Ray, no model): which
calls a flow makes, routing with and without a ranker, judging with the generation, and the three
drivers (in process, the Serve ingress's asynchronous one, the bulk job's stages) making the same
calls in the same order and writing the same rows."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from cluster import bulk
from graph_store import RecallConfig
from graph_store.metapaths import Hits
from llm4tag import flow
from llm4tag.calibrator import Judged
from llm4tag.data import Item
from llm4tag.generator import Generation
from llm4tag.ranking.cascade import RoutePlan
from llm4tag.ranking.models import ScoredTag

TAGS = ["card_arrival", "top_up", "refund"]
ITEMS = [Item("a", "my card has not arrived"), Item("b", "top up failed"), Item("c", "refund please")]
# The ranker's top probability per item: with tau 0.5, "a" and "c" are settled, "b" goes to the LLM.
TOP = {"my card has not arrived": 0.9, "top up failed": 0.3, "refund please": 0.7}


def ranked_plan(tau: float | None = 0.5) -> RoutePlan:
    return RoutePlan(tau=tau, multi=False, emit=1, num_candidates=20, ranker_cut=0.5, llm_cut=0.5)


def options(plan: RoutePlan | None = None, **kwargs) -> flow.FlowOptions:
    base = {"calibrate": True, "judges_with_generation": False, "write_back": False}
    return flow.FlowOptions(
        item_fields=("text",),
        tag_names=tuple(TAGS),
        recall=RecallConfig(),
        plan=plan or RoutePlan.unranked(20, 0.5),
        **{**base, **kwargs},
    )


def summary(call) -> tuple:
    """What identifies a call (its arrays compared by value)."""
    if isinstance(call, flow.Encode | flow.Calibrate):
        return type(call).__name__, tuple(call.contents), repr(getattr(call, "tags", None))
    if isinstance(call, flow.Search):
        return type(call).__name__, call.vectors.tobytes()
    if isinstance(call, flow.Rank):
        return type(call).__name__, tuple(call.contents), call.vectors.tobytes()
    if isinstance(call, flow.Generate):
        return type(call).__name__, tuple(call.ids), repr(call.candidates), call.judge, call.vectors.tobytes()
    if isinstance(call, flow.WriteEdges):
        return type(call).__name__, tuple(call.ids), repr(call.tags)
    raise AssertionError(call)


def answerer(log: list):
    """Answers each call as the stages would, recording the calls."""

    def generations(call):
        return [
            Generation([call.candidates[i][0]], messages=[{"role": "user", "content": c}], answer="x")
            for i, c in enumerate(call.contents)
        ]

    def verdicts(tags, contexts):
        # The confidence tells whether the judgment saw the generation's conversation.
        return [
            [Judged(t, 0.9 if context is not None else 0.1, True) for t in item_tags]
            for item_tags, context in zip(tags, contexts, strict=True)
        ]

    def answer(call):
        log.append(summary(call))
        if isinstance(call, flow.Encode):
            return np.eye(len(call.contents), 4, dtype=np.float32)
        if isinstance(call, flow.Search):
            hits = Hits(np.array([0, 1, 2]), np.array([0.9, 0.5, 0.1], dtype=np.float32))
            return [[hits for _ in range(len(call.vectors))]]
        if isinstance(call, flow.Rank):
            return [
                [ScoredTag("refund", TOP[c], 2.0, ("learned",)), ScoredTag("top_up", 0.1, 1.0, ("c2t",))]
                for c in call.contents
            ]
        if isinstance(call, flow.Generate):
            made = generations(call)
            if not call.judge:
                return made
            contexts = [flow.judgment_context(g) for g in made]
            return list(zip(made, verdicts([g.tags for g in made], contexts), strict=True))
        if isinstance(call, flow.Calibrate):
            return verdicts(call.tags, call.contexts)
        if isinstance(call, flow.WriteEdges):
            return None
        raise AssertionError(call)

    return answer


def in_process(opts: flow.FlowOptions, **kwargs) -> tuple[list, flow.Tagged]:
    log: list = []
    return log, flow.run(flow.tag_flow(ITEMS, opts, **kwargs), answerer(log))


def in_serve(opts: flow.FlowOptions, **kwargs) -> tuple[list, flow.Tagged]:
    """The ingress's driver: asynchronous answers, a deadline, timings."""
    log: list = []
    sync = answerer(log)

    async def answer(call):
        await asyncio.sleep(0)
        return sync(call)

    timings: dict[str, float] = {}

    async def main():
        deadline = asyncio.get_running_loop().time() + 60
        return await flow.run_async(
            flow.tag_flow(ITEMS, opts, **kwargs), answer, deadline=deadline, timings=timings
        )

    tagged = asyncio.run(main())
    assert set(timings) <= set(flow.STAGE_OF.values()) and "encode" in timings
    return log, tagged


def in_bulk(
    opts: flow.FlowOptions, with_candidates: bool = False, with_dropped: bool = False
) -> tuple[list, list]:
    """The bulk job's stages, each with its own answerer as each actor has its own pipeline, and the
    columns between them as Ray Data carries them."""
    log: list = []
    answer = answerer(log)
    rows = bulk.RowOptions(with_candidates, with_dropped, with_raw=False)
    routed = bulk.route_step(ITEMS, opts, answer)
    columns = bulk.routed_columns(routed)
    if opts.plan.sends_nothing:
        nothing = flow.Generated([None] * len(ITEMS), [None] * len(ITEMS))
        return log, rows.table(routed, nothing, opts).to_pylist()
    generated = bulk.generate_step(bulk.routed_of(columns), opts, answer)
    columns |= bulk.generated_columns(generated)
    routed, generated = bulk.routed_of(columns), bulk.generated_of(columns)
    generated = bulk.judge_step(routed, generated, opts, answer)
    return log, rows.table(routed, generated, opts).to_pylist()


VARIANTS = {
    "no ranking": options(),
    "no ranking, judged with the generation": options(judges_with_generation=True),
    "no ranking, no calibration": options(calibrate=False),
    "ranked": options(ranked_plan()),
    "ranked, judged with the generation": options(ranked_plan(), judges_with_generation=True),
    "ranked, sends nothing": options(ranked_plan(0.0)),
    "ranked, route off": options(ranked_plan(None)),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_three_drivers_make_the_same_calls_and_rows(variant):
    from cluster.bulk_files import _strip_nulls

    opts = VARIANTS[variant]
    calls, tagged = in_process(opts, with_candidates=True, with_dropped=True)
    served_calls, served = in_serve(opts, with_candidates=True, with_dropped=True)
    bulk_calls, bulk_rows = in_bulk(opts, with_candidates=True, with_dropped=True)
    assert served_calls == calls and bulk_calls == calls
    assert served.rows == tagged.rows
    assert [_strip_nulls(row) for row in bulk_rows] == tagged.rows


def test_without_a_ranking_every_item_goes_to_the_llm_with_recalls_candidates():
    calls, tagged = in_process(options())
    assert [c[0] for c in calls] == ["Encode", "Search", "Generate", "Calibrate"]
    assert {row["route"] for row in tagged.rows} == {"llm"} and tagged.sent_to_llm == 3
    assert [row["generated"] for row in tagged.rows] == [["card_arrival"]] * 3
    tag = tagged.rows[0]["tags"][0]
    assert tag["by"] == "llm" and tag["source"] == "c2t" and "ranker" not in tag and tag["yes"] == 0.9
    calls, tagged = in_process(options(calibrate=False))
    assert [c[0] for c in calls] == ["Encode", "Search", "Generate"]
    assert all(row["tags"][0]["confidence"] is None for row in tagged.rows)  # kept, unjudged


def test_a_ranking_settles_the_confident_items_and_sends_only_the_others():
    calls, tagged = in_process(options(ranked_plan()), with_dropped=True)
    assert [c[0] for c in calls] == ["Encode", "Search", "Rank", "Generate", "Calibrate"]
    generate = next(c for c in calls if c[0] == "Generate")
    assert generate[1] == ("b",)
    assert [row["route"] for row in tagged.rows] == ["ranker", "llm", "ranker"]
    assert tagged.rows[0]["tags"] == [
        {"tag": "refund", "confidence": 0.9, "source": "learned", "by": "ranker", "ranker": 0.9}
    ]
    assert tagged.rows[1]["generated"] == ["refund"]
    assert tagged.rows[1]["tags"] == [
        {"tag": "refund", "confidence": 0.9, "source": "learned", "by": "llm", "ranker": 0.3, "yes": 0.9}
    ]
    # Nothing is sent: no Generate call at all.
    calls, tagged = in_process(options(ranked_plan(0.0)))
    assert [c[0] for c in calls] == ["Encode", "Search", "Rank"] and tagged.sent_to_llm == 0


def test_judging_with_the_generation_is_one_call_with_the_same_rows():
    _, separate = in_process(options())
    calls, together = in_process(options(judges_with_generation=True))
    assert [c[0] for c in calls] == ["Encode", "Search", "Generate"]  # no Calibrate call
    assert [t["tag"] for row in together.rows for t in row["tags"]] == [
        t["tag"] for row in separate.rows for t in row["tags"]
    ]
    assert all(t["confidence"] == 0.9 for row in together.rows for t in row["tags"])  # in context


def test_items_the_caller_did_not_name_are_not_written_back():
    calls, _ = in_process(options(calibrate=False, write_back=True), unnamed={"b"})
    assert [c[0] for c in calls] == ["Encode", "Search", "Generate", "WriteEdges"]
    assert calls[-1][1] == ("a", "c")
    # Nothing named: no write at all.
    calls, _ = in_process(options(calibrate=False, write_back=True), unnamed={"a", "b", "c"})
    assert [c[0] for c in calls] == ["Encode", "Search", "Generate"]


def test_a_call_past_the_deadline_is_cancelled_but_a_write_is_not():
    written: list = []

    def slow_at(kind: type, seconds: float):
        async def answer(call):
            if isinstance(call, kind):
                await asyncio.sleep(seconds)
                written.append(call)
            return answerer([])(call)

        return answer

    async def main(opts, answer):
        deadline = asyncio.get_running_loop().time() + 0.02
        return await flow.run_async(flow.tag_flow(ITEMS, opts), answer, deadline=deadline)

    with pytest.raises(flow.DeadlinePassed, match="during encode"):
        asyncio.run(main(options(), slow_at(flow.Encode, 0.2)))
    assert written == []  # cancelled before it answered
    tagged = asyncio.run(main(options(calibrate=False, write_back=True), slow_at(flow.WriteEdges, 0.2)))
    assert len(tagged.rows) == 3 and len(written) == 1  # the write ran to its end past the deadline
