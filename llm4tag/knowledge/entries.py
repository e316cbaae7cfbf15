"""The entries of the knowledge bases: annotated samples and domain-knowledge snippets."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from llm4tag.data import Item
from llm4tag.encoded_text import item_text
from llm4tag.errors import LLM4TagError

SAMPLE_SOURCES = ("annotation", "feedback")


class KnowledgeError(LLM4TagError):
    """A knowledge base cannot be used as asked (bad vectors, no log to write to...)."""


def _check_string(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{name} must not be empty")
    return value


def _tag_tuple(name: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ValueError(f"{name} must be a sequence of tag names, got {type(value).__name__}")
    out: dict[str, None] = {}
    for tag in value:
        out.setdefault(_check_string(f"a tag of {name}", tag), None)
    return tuple(out)


@dataclass(frozen=True)
class Sample:
    """An annotated content: its text (as encoded) with the tags it has and, from feedback, does not have.

    ``correct`` and ``incorrect`` are disjoint; lists are accepted and stored as tuples (duplicates dropped).
    ``source`` is ``"annotation"`` (training data) or ``"feedback"`` (added at run time). Feedback says
    who sent it (``sender``: the API key's name, ``cli``; None when the service checks no keys) and who
    reviewed it (``reviewer``: a review queue decision's reviewer, ``llm4tag feedback --reviewer``);
    only reviewed feedback may decide which adapter is promoted (llm4tag/finetune/retrain.py).
    """

    id: str
    text: str
    correct: tuple[str, ...] = ()
    incorrect: tuple[str, ...] = ()
    source: str = "annotation"
    sender: str | None = None
    reviewer: str | None = None

    def __post_init__(self) -> None:
        _check_string("id", self.id)
        _check_string("text", self.text)
        correct = _tag_tuple("correct", self.correct)
        incorrect = _tag_tuple("incorrect", self.incorrect)
        marked_incorrect = set(incorrect)
        both = [t for t in correct if t in marked_incorrect]
        if both:
            raise ValueError(f"sample '{self.id}': tag '{both[0]}' is marked both correct and incorrect")
        if self.source not in SAMPLE_SOURCES:
            raise ValueError(
                f"sample '{self.id}': source must be one of {SAMPLE_SOURCES}, got {self.source!r}"
            )
        for name in ("sender", "reviewer"):
            if getattr(self, name) is not None:
                _check_string(name, getattr(self, name))
        object.__setattr__(self, "correct", correct)
        object.__setattr__(self, "incorrect", incorrect)

    @classmethod
    def from_item(
        cls, item: Item, item_fields: Sequence[str] = ("text",), source: str = "annotation"
    ) -> Sample:
        """A sample of an annotated item; its text is what the encoder reads (``texts.item_text``)."""
        return cls(id=item.id, text=item_text(item, item_fields), correct=item.tags or (), source=source)

    def merged(self, update: Sample) -> Sample:
        """This sample updated by another of the same id.

        Text and source are the update's. Tags the update marks correct become correct (leaving
        ``incorrect``), tags it marks incorrect become incorrect (leaving ``correct``); others keep
        their mark.
        """
        drop_correct, drop_incorrect = set(update.incorrect), set(update.correct)
        correct = dict.fromkeys(t for t in self.correct if t not in drop_correct)
        correct.update(dict.fromkeys(update.correct))
        incorrect = dict.fromkeys(t for t in self.incorrect if t not in drop_incorrect)
        incorrect.update(dict.fromkeys(update.incorrect))
        # Who sent and reviewed it: the update's (a reviewed sample updated by unreviewed feedback is
        # unreviewed again: its tags are no longer all the reviewer's).
        return Sample(
            self.id,
            update.text,
            tuple(correct),
            tuple(incorrect),
            update.source,
            update.sender,
            update.reviewer,
        )

    @property
    def reviewed(self) -> bool:
        return self.reviewer is not None

    def to_record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "text": self.text,
            "correct": list(self.correct),
            "incorrect": list(self.incorrect),
            "source": self.source,
        } | {name: getattr(self, name) for name in ("sender", "reviewer") if getattr(self, name) is not None}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Sample:
        return cls(
            id=record["id"],
            text=record["text"],
            correct=record.get("correct") or (),
            incorrect=record.get("incorrect") or (),
            source=record.get("source", "annotation"),
            sender=record.get("sender"),
            reviewer=record.get("reviewer"),
        )


@dataclass(frozen=True)
class SampleHit:
    sample: Sample
    similarity: float


@dataclass(frozen=True)
class Snippet:
    """A piece of domain knowledge: a tag description, a definition or a tagging rule.

    ``tags`` are the tags it is about; empty means a general rule, eligible for every item. ``source`` says
    where it came from: ``"vocabulary"``, a knowledge file's name, ``"runtime"``...
    """

    id: str
    text: str
    tags: tuple[str, ...] = ()
    source: str = "runtime"

    def __post_init__(self) -> None:
        _check_string("id", self.id)
        _check_string("text", self.text)
        _check_string("source", self.source)
        object.__setattr__(self, "tags", _tag_tuple("tags", self.tags))

    @property
    def general(self) -> bool:
        return not self.tags

    def merged(self, update: Snippet) -> Snippet:
        """A snippet updated by another of the same id is replaced by it."""
        return update

    def to_record(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "tags": list(self.tags), "source": self.source}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Snippet:
        return cls(
            id=record["id"],
            text=record["text"],
            tags=record.get("tags") or (),
            source=record.get("source", "runtime"),
        )


@dataclass(frozen=True)
class SnippetHit:
    snippet: Snippet
    similarity: float


E = TypeVar("E", Sample, Snippet)
