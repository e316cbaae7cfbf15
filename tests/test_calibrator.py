"""Calibration logic: confidence from Yes/No scores, threshold, ranking, prompt adjacency.

The engine here is a stand-in that returns scores chosen by the test (pure logic of the calibrator);
the real engines are tested against real models in test_llm_engine.py.
"""

import math

import pytest

from llm4tag.calibrator import Calibrator, split_by_threshold
from llm4tag.engines.base import EngineStats, YesNo
from llm4tag.generator import TagLabels
from llm4tag.prompts import PromptConfig, Prompts


class ScriptedEngine:
    name = "scripted"

    def __init__(self, scores: dict[str, YesNo]):
        self.scores = scores
        self.stats = EngineStats()
        self.seen: list[str] = []

    def score_yes_no(self, prompts):
        out = []
        for messages in prompts:
            text = messages[-1]["content"]
            self.seen.append(text)
            tag = text.split("Tag: ")[1].split("\n")[0].split(" (")[0]
            out.append(self.scores[tag])
        return out


def test_split_by_threshold_ranks_kept_then_dropped():
    judged = split_by_threshold(["a", "b", "c", "d"], [0.4, 0.9, 0.5, 0.7], 0.5)
    assert [(j.tag, j.kept) for j in judged] == [("b", True), ("d", True), ("c", True), ("a", False)]


def test_split_ties_keep_generation_order():
    judged = split_by_threshold(["x", "y", "z"], [0.6, 0.6, 0.6], 0.5)
    assert [j.tag for j in judged] == ["x", "y", "z"]


def test_calibrator_confidences_follow_formula_10():
    scores = {
        "card arrival": YesNo(yes=2.0, no=0.0),
        "refund": YesNo(yes=-1.0, no=1.0),
        "exchange rate": YesNo(yes=0.3, no=0.3),
    }
    engine = ScriptedEngine(scores)
    labels = TagLabels(["card_arrival", "refund", "exchange_rate"])
    calibrator = Calibrator(engine, Prompts(PromptConfig()), labels, {}, threshold=0.5)
    [judged] = calibrator.judge(["my card"], [["refund", "card_arrival", "exchange_rate"]])
    by_tag = {j.tag: j for j in judged}
    assert by_tag["card_arrival"].confidence == pytest.approx(math.exp(2) / (math.exp(2) + 1))
    assert by_tag["refund"].confidence == pytest.approx(math.exp(-1) / (math.exp(-1) + math.exp(1)))
    assert by_tag["exchange_rate"].confidence == pytest.approx(0.5)
    assert [j.tag for j in judged if j.kept] == ["card_arrival", "exchange_rate"]  # 0.5 is kept
    assert not by_tag["refund"].kept


def test_prompts_of_one_item_are_adjacent_and_readable():
    engine = ScriptedEngine({t: YesNo(0.0, 0.0) for t in ("a b", "c", "d")})
    calibrator = Calibrator(engine, Prompts(PromptConfig()), TagLabels(["a_b", "c", "d"]), {"c": "the c tag"})
    result = calibrator.judge(["first", "second", "third"], [["a_b", "c"], [], ["d"]])
    assert [len(r) for r in result] == [2, 0, 1]
    owners = [text.split("\n")[0] for text in engine.seen]
    assert owners == ["Content: first", "Content: first", "Content: third"]
    assert "Tag: c (the c tag)" in engine.seen[1]
    assert "Tag: a b\n" in engine.seen[0]


def test_threshold_is_validated():
    with pytest.raises(ValueError):
        Calibrator(ScriptedEngine({}), Prompts(PromptConfig()), TagLabels([]), {}, threshold=1.5)


def test_labels_are_one_to_one():
    labels = TagLabels(["card_arrival", "card arrival", "devel::lang:perl", "top_up"])
    assert labels.label["top_up"] == "top up"
    # "card_arrival" and "card arrival" would read alike: both keep their identifiers.
    assert labels.label["card_arrival"] == "card_arrival"
    assert labels.label["card arrival"] == "card arrival"
    assert labels.tags(labels.labels(["card_arrival", "top_up", "devel::lang:perl"])) == [
        "card_arrival",
        "top_up",
        "devel::lang:perl",
    ]


def test_in_context_judgments_continue_each_items_generation_and_others_stand_alone():
    engine = ScriptedEngine({"card arrival": YesNo(1.0, 0.0), "refund": YesNo(0.0, 1.0)})
    labels = TagLabels(["card_arrival", "refund"])
    prompts = Prompts(PromptConfig())
    generation = prompts.generation("my card", ["card arrival", "refund"], 1)
    seen = []
    engine.score_yes_no = lambda batch: [seen.append(m) or YesNo(0.0, 0.0) for m in batch]
    calibrator = Calibrator(engine, prompts, labels, {}, in_context=True)
    calibrator.judge(
        ["my card", "a refund"], [["card_arrival"], ["refund"]], [(generation, "card arrival"), None]
    )
    assert seen[0][: len(generation)] == generation and seen[0][-1]["content"].startswith("Is the")
    assert len(seen[1]) == 2 and "a refund" in seen[1][1]["content"]  # figure 5 without a context
    seen.clear()
    Calibrator(engine, prompts, labels, {}, in_context=False).judge(
        ["my card"], [["card_arrival"]], [(generation, "x")]
    )
    assert len(seen[0]) == 2  # not in context: the context is ignored
