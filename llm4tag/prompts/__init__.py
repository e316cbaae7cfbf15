"""Prompt templates as data (paper figures 3-5) and their rendering into chat messages."""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, ClassVar, Literal

import yaml
from pydantic import Field, model_validator

from llm4tag.config_section import Section
from llm4tag.engines.base import Messages

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


def _defaults(name: str = "default.yaml") -> dict[str, Any]:
    return yaml.safe_load(resources.files("llm4tag.prompts").joinpath(name).read_text())


_TEXT_FIELDS = (*_ALLOWED, "domain", "item_kind", "item_kind_plural", "layout")


class Templates(Section):
    """A section of prompt templates: empty fields take the defaults of ``DEFAULTS`` (a YAML file of
    this package), and a template may use only its ``ALLOWED`` placeholders (typos are errors)."""

    DEFAULTS: ClassVar[str]
    ALLOWED: ClassVar[dict[str, set[str]]]
    FILLED: ClassVar[tuple[str, ...]]

    @model_validator(mode="before")
    @classmethod
    def _fill_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        defaults = _defaults(cls.DEFAULTS)
        return {**data, **{k: defaults[k] for k in cls.FILLED if k in defaults and not data.get(k)}}

    @model_validator(mode="after")
    def _check_templates(self) -> Templates:
        for name, allowed in self.ALLOWED.items():
            try:
                used = {p for _, p, _, _ in string.Formatter().parse(getattr(self, name)) if p is not None}
            except ValueError as exc:
                raise ValueError(f"{name} is not a valid template: {exc}") from exc
            unknown = sorted(used - allowed)
            if unknown:
                raise ValueError(
                    f"{name} uses unknown placeholder(s) {', '.join('{' + u + '}' for u in unknown)}"
                    f" (allowed: {', '.join(sorted(allowed)) or 'none'})"
                )
        return self


class PromptConfig(Templates):
    """The prompt templates of figures 3-5 (the `prompts:` section); empty: the defaults of
    prompts/default.yaml."""

    section: ClassVar[str] = "prompts"
    DEFAULTS: ClassVar[str] = "default.yaml"
    ALLOWED: ClassVar[dict[str, set[str]]] = _ALLOWED
    FILLED: ClassVar[tuple[str, ...]] = _TEXT_FIELDS

    domain: str = Field("", description="the domain words, e.g. banking customer support")
    item_kind: str = Field("", description="what an item is, e.g. customer query")
    item_kind_plural: str = Field(
        "", description='plural of item_kind for "similar {item_kinds}" (derived if empty)'
    )
    system: str = Field("", description="generation: system message")
    generation_basic: str = Field("", description="generation without retrieved knowledge (figure 3)")
    generation_retrieval: str = Field(
        "", description="generation with retrieved samples and snippets (figure 4)"
    )
    instruction_single: str = Field("", description="generation: the single-tag instruction")
    instruction_multi: str = Field("", description="generation: the multi-tag instruction")
    sample: str = Field("", description="one retrieved sample in the generation prompt")
    sample_incorrect: str = Field("", description="a retrieved sample's incorrect tags")
    snippet: str = Field("", description="one retrieved knowledge snippet")
    none_retrieved: str = Field("", description="when nothing was retrieved")
    judgment_system: str = Field("", description="calibration: system message")
    judgment: str = Field("", description="calibration: the Yes/No question (figure 5)")
    judgment_followup: str = Field("", description="calibration: the question that continues the generation")
    layout: Literal["", "auto", "paper", "continuation"] = Field(
        "",
        description="paper | continuation | auto (judgments continue the generation conversation where "
        "the engine keeps it)",
    )
    # The prompt's cost on CPU is its token count.
    max_content_chars: int = Field(600, ge=1, description="item text shown, in characters")
    max_sample_chars: int = Field(200, ge=1, description="per retrieved sample")
    max_snippet_chars: int = Field(240, ge=1, description="per knowledge snippet")
    max_tag_description_chars: int = Field(160, ge=1, description="per tag description in a judgment")

    @model_validator(mode="after")
    def _layout(self) -> PromptConfig:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")
        return self


def _with_domain_words(allowed: dict[str, set[str]]) -> dict[str, set[str]]:
    """``allowed`` with the store's domain words allowed in every template."""
    return {
        name: names | {"domain", "item_kind", "item_kinds", "item_kind_title"}
        for name, names in allowed.items()
    }


_BASELINE_ALLOWED = _with_domain_words(
    {
        "system": set(),
        "generative": {"content", "example"},
        "example": {"text", "tags"},
        "selective": {"content", "candidates", "instruction"},
        "selective_single": set(),
        "selective_multi": {"max_tags"},
    }
)


class PeerPromptConfig(Templates):
    """Templates of the baseline taggers and of vocabulary construction (defaults: prompts/peers.yaml)."""

    section: ClassVar[str] = "peers.prompts"
    DEFAULTS: ClassVar[str] = "peers.yaml"
    ALLOWED: ClassVar[dict[str, set[str]]] = _BASELINE_ALLOWED
    FILLED: ClassVar[tuple[str, ...]] = tuple(_BASELINE_ALLOWED)

    system: str = Field("", description="system message")
    generative: str = Field("", description="TagGPT's generative tagger (and vocab build)")
    example: str = Field("", description="the worked example in the generative prompt")
    selective: str = Field("", description="TagGPT's selective tagger")
    selective_single: str = Field("", description="selective: single-tag instruction")
    selective_multi: str = Field("", description="selective: multi-tag instruction")


_AUGMENT_ALLOWED = _with_domain_words(
    {
        "system": set(),
        "request": {"tag", "tag_description", "knowledge", "examples", "k"},
        "knowledge": {"text"},
        "example": {"text"},
        "none": set(),
    }
)


class AugmentPromptConfig(Templates):
    """The template of `llm4tag augment` (defaults: prompts/augment.yaml): example items for a tag with
    few annotations."""

    section: ClassVar[str] = "augment.prompts"
    DEFAULTS: ClassVar[str] = "augment.yaml"
    ALLOWED: ClassVar[dict[str, set[str]]] = _AUGMENT_ALLOWED
    FILLED: ClassVar[tuple[str, ...]] = tuple(_AUGMENT_ALLOWED)

    system: str = Field("", description="system message")
    request: str = Field("", description="the request: the tag, its knowledge, style examples, k")
    knowledge: str = Field("", description="one snippet about the tag")
    example: str = Field("", description="one real item of a related tag")
    none: str = Field("", description="when there is no snippet or example to show")


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

    @property
    def common(self) -> dict[str, str]:
        """The placeholders every template may use ({domain}, {item_kind}, {item_kinds},
        {item_kind_title}), filled from this section."""
        return dict(self._common)

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
