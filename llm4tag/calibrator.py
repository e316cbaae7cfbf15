"""Tag confidence calibration (paper section 3.4): the LLM judges each (item, tag) pair with Yes/No;
confidence = exp(s_Yes) / (exp(s_Yes) + exp(s_No)); tags under the threshold are dropped."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from llm4tag.engines.base import Engine, Messages
from llm4tag.prompts import Prompts


@dataclass(frozen=True)
class Judged:
    tag: str
    confidence: float
    kept: bool


def split_by_threshold(tags: Sequence[str], confidences: Sequence[float], threshold: float) -> list[Judged]:
    """Kept tags first, ranked by confidence (ties keep generation order), then the dropped ones."""
    judged = [Judged(t, c, c >= threshold) for t, c in zip(tags, confidences, strict=True)]
    order = sorted(range(len(judged)), key=lambda i: (not judged[i].kept, -judged[i].confidence, i))
    return [judged[i] for i in order]


class Calibrator:
    def __init__(
        self,
        engine: Engine,
        prompts: Prompts,
        labels,
        descriptions: Mapping[str, str | None],
        threshold: float = 0.5,
        in_context: bool = False,
    ):
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"calibration threshold must be within [0, 1], got {threshold}")
        self.engine = engine
        self.prompts = prompts
        self.labels = labels
        self.descriptions = descriptions
        self.threshold = threshold
        self.in_context = in_context

    def judge(
        self,
        contents: Sequence[str],
        tags: Sequence[Sequence[str]],
        contexts: Sequence[tuple[Messages, str] | None] | None = None,
    ) -> list[list[Judged]]:
        """Verdicts per item. ``contexts`` (per item: the generation prompt and its answer) are used when
        this calibrator judges in context; an item without one gets the stand-alone judgment."""
        if contexts is None or not self.in_context:
            contexts = [None] * len(contents)
        # One item's prompts are adjacent so that the engine computes their shared prefix once.
        prompts, owners = [], []
        for index, (content, item_tags, context) in enumerate(zip(contents, tags, contexts, strict=True)):
            for tag in item_tags:
                prompts.append(
                    self.prompts.judgment(
                        content, self.labels.label.get(tag, tag), self.descriptions.get(tag), context
                    )
                )
                owners.append(index)
        scores = self.engine.score_yes_no(prompts) if prompts else []
        confidences: list[list[float]] = [[] for _ in contents]
        for owner, score in zip(owners, scores, strict=True):
            confidences[owner].append(score.confidence)
        return [
            split_by_threshold(item_tags, conf, self.threshold)
            for item_tags, conf in zip(tags, confidences, strict=True)
        ]
