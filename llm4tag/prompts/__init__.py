"""Prompt templates as data (paper figures 3-5) and their rendering into chat messages."""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass, fields
from importlib import resources
from typing import Any

import yaml

from llm4tag.engines.base import Messages
from llm4tag.errors import ConfigError

# Placeholders each template may use; anything else is a typo caught at load time.
_ALLOWED = {
    "system": {"domain", "item_kind"},
    "judgment_system": {"domain", "item_kind"},
    "generation_basic": {"domain", "item_kind", "item_kind_title", "content", "candidates", "instruction"},
    "generation_retrieval": {
        "domain",
        "item_kind",
        "item_kind_title",
        "content",
        "candidates",
        "instruction",
        "item_kinds",
        "samples",
        "knowledge",
    },
    "instruction_single": {"domain", "item_kind"},
    "instruction_multi": {"domain", "item_kind", "max_tags"},
    "sample": {"text", "correct", "incorrect"},
    "sample_incorrect": {"tags"},
    "snippet": {"text"},
    "none_retrieved": set(),
    "judgment": {"domain", "item_kind", "item_kind_title", "content", "tag", "tag_description"},
    "judgment_followup": {"domain", "item_kind", "item_kind_title", "tag", "tag_description"},
}
LAYOUTS = ("auto", "paper", "continuation")
for _names in _ALLOWED.values():
    if "item_kind" in _names:
        _names |= {"item_kinds", "item_kind_title"}


def _defaults() -> dict[str, Any]:
    return yaml.safe_load(resources.files("llm4tag.prompts").joinpath("default.yaml").read_text())


@dataclass
class PromptConfig:
    domain: str = ""
    item_kind: str = ""
    # Plural of item_kind for "similar {item_kinds}"; derived when empty.
    item_kind_plural: str = ""
    system: str = ""
    generation_basic: str = ""
    generation_retrieval: str = ""
    instruction_single: str = ""
    instruction_multi: str = ""
    sample: str = ""
    sample_incorrect: str = ""
    snippet: str = ""
    none_retrieved: str = ""
    judgment_system: str = ""
    judgment: str = ""
    judgment_followup: str = ""
    # paper | continuation | auto (see default.yaml).
    layout: str = ""
    # Lengths in characters: the prompt's cost on CPU is its token count.
    max_content_chars: int = 600
    max_sample_chars: int = 200
    max_snippet_chars: int = 240
    max_tag_description_chars: int = 160

    def __post_init__(self) -> None:
        defaults = _defaults()
        for f in fields(self):
            if isinstance(getattr(self, f.name), str) and not getattr(self, f.name) and f.name in defaults:
                setattr(self, f.name, defaults[f.name])
        if self.layout not in LAYOUTS:
            raise ConfigError(f"prompts.layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        for name, allowed in _ALLOWED.items():
            template = getattr(self, name)
            try:
                used = {p for _, p, _, _ in string.Formatter().parse(template) if p is not None}
            except ValueError as exc:
                raise ConfigError(f"prompts.{name} is not a valid template: {exc}") from exc
            unknown = sorted(used - allowed)
            if unknown:
                raise ConfigError(
                    f"prompts.{name} uses unknown placeholder(s) {', '.join('{' + u + '}' for u in unknown)}"
                    f" (allowed: {', '.join(sorted(allowed)) or 'none'})"
                )


def _plural(word: str) -> str:
    if word.endswith("y") and word[-2:-1] not in ("a", "e", "i", "o", "u"):
        return word[:-1] + "ies"
    return word + ("es" if word.endswith(("s", "x", "ch", "sh")) else "s")


def _clip(text: str, chars: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= chars else text[: chars - 1].rstrip() + "…"


@dataclass(frozen=True)
class RetrievedSample:
    text: str
    correct: tuple[str, ...]
    incorrect: tuple[str, ...] = ()


class Prompts:
    """Renders the three prompts; tag names pass through `label` so the LLM reads words."""

    def __init__(self, config: PromptConfig | None = None):
        self.config = config or PromptConfig()
        c = self.config
        self._common = {
            "domain": c.domain,
            "item_kind": c.item_kind,
            "item_kind_title": c.item_kind[:1].upper() + c.item_kind[1:],
            "item_kinds": c.item_kind_plural or _plural(c.item_kind),
        }

    def _none(self) -> str:
        return self.config.none_retrieved

    def generation(
        self,
        content: str,
        candidates: Sequence[str],
        max_tags: int,
        samples: Sequence[RetrievedSample] | None = None,
        snippets: Sequence[str] | None = None,
    ) -> Messages:
        """Figure 4 when knowledge is given (samples or snippets not None), else figure 3."""
        c = self.config
        if max_tags <= 1:
            instruction = c.instruction_single.format(**self._common)
        else:
            instruction = c.instruction_multi.format(**self._common, max_tags=max_tags)
        values = {
            **self._common,
            "content": _clip(content, c.max_content_chars),
            "candidates": ", ".join(candidates),
            "instruction": instruction,
        }
        if samples is None and snippets is None:
            user = c.generation_basic.format(**values)
        else:
            shown = [
                c.sample.format(
                    text=_clip(s.text, c.max_sample_chars),
                    correct=", ".join(s.correct),
                    incorrect=c.sample_incorrect.format(tags=", ".join(s.incorrect)) if s.incorrect else "",
                )
                for s in samples or ()
            ]
            knowledge = [c.snippet.format(text=_clip(t, c.max_snippet_chars)) for t in snippets or ()]
            user = c.generation_retrieval.format(
                **values,
                samples="\n".join(shown) or self._none(),
                knowledge="\n".join(knowledge) or self._none(),
            )
        return [
            {"role": "system", "content": c.system.format(**self._common)},
            {"role": "user", "content": user},
        ]

    def judgment(
        self,
        content: str,
        tag: str,
        description: str | None = None,
        context: tuple[Messages, str] | None = None,
    ) -> Messages:
        """Figure 5; with ``context`` (the generation prompt and the answer given to it), the follow-up
        question that continues that conversation instead."""
        c = self.config
        described = f" ({_clip(description, c.max_tag_description_chars)})" if description else ""
        if context is not None:
            messages, answer = context
            question = c.judgment_followup.format(**self._common, tag=tag, tag_description=described)
            return [
                *messages,
                {"role": "assistant", "content": answer},
                {"role": "user", "content": question},
            ]
        user = c.judgment.format(
            **self._common,
            content=_clip(content, c.max_content_chars),
            tag=tag,
            tag_description=described,
        )
        return [
            {"role": "system", "content": c.judgment_system.format(**self._common)},
            {"role": "user", "content": user},
        ]


def prompt_config_from_dict(data: dict[str, Any] | None) -> PromptConfig:
    data = data or {}
    known = {f.name for f in fields(PromptConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"config section 'prompts' has unknown setting(s): {', '.join(unknown)}")
    return PromptConfig(**data)
