"""The stage order (llm4tag/flow.py) driven by a fake answerer: which calls a flow makes, and that
judging with the generation (judgments in context) gives the rows of the separate calibrate call."""

from __future__ import annotations

import numpy as np

from graph_store import RecallConfig
from graph_store.metapaths import Hits
from llm4tag import flow
from llm4tag.calibrator import Judged
from llm4tag.data import Item
from llm4tag.generator import Generation

TAGS = ["card_arrival", "top_up", "refund"]


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
        log.append(call)
        if isinstance(call, flow.Encode):
            return np.eye(len(call.contents), 4, dtype=np.float32)
        if isinstance(call, flow.Search):
            hits = Hits(np.array([0, 1, 2]), np.array([0.9, 0.5, 0.1], dtype=np.float32))
            return [[hits for _ in range(len(call.vectors))]]
        if isinstance(call, flow.Generate):
            made = generations(call)
            if not call.judge:
                return made
            contexts = [flow.judgment_context(g) for g in made]
            return list(zip(made, verdicts([g.tags for g in made], contexts), strict=True))
        if isinstance(call, flow.Calibrate):
            return verdicts(call.tags, call.contexts)
        raise AssertionError(call)

    return answer


def tag(**kwargs) -> tuple[list[type], flow.Tagged]:
    log: list = []
    items = [Item("a", "my card has not arrived"), Item("b", "top up failed")]
    steps = flow.tag_flow(
        items,
        item_fields=("text",),
        tag_names=TAGS,
        recall=RecallConfig(),
        write_back=False,
        **kwargs,
    )
    tagged = flow.run(steps, answerer(log))
    return [type(call) for call in log], tagged


def test_the_flow_calls_the_stages_in_order():
    calls, tagged = tag(calibrate=True)
    assert calls == [flow.Encode, flow.Search, flow.Generate, flow.Calibrate]
    assert [row["generated"] for row in tagged.rows] == [["card_arrival"], ["card_arrival"]]
    calls, tagged = tag(calibrate=False)
    assert calls == [flow.Encode, flow.Search, flow.Generate]
    assert all(row["tags"][0]["confidence"] is None for row in tagged.rows)  # kept, unjudged


def test_judging_with_the_generation_is_one_call_with_the_same_rows():
    _, separate = tag(calibrate=True)
    calls, together = tag(calibrate=True, judge_with_generation=True)
    assert calls == [flow.Encode, flow.Search, flow.Generate]  # no Calibrate call
    assert together.rows == separate.rows
    assert together.verdicts == separate.verdicts
    assert all(t["confidence"] == 0.9 for row in together.rows for t in row["tags"])  # in context
    # Without calibration there is nothing to judge, in context or not.
    calls, _ = tag(calibrate=False, judge_with_generation=True)
    assert calls == [flow.Encode, flow.Search, flow.Generate]
