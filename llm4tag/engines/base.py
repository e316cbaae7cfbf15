"""The one interface every LLM engine implements, and the pure logic the engines share.

Prompts cross this boundary as chat messages (lists of ``{"role", "content"}`` dicts); the engine applies
its model's chat template. Answers come back as plain strings and floats, never framework objects.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

Messages = list[dict[str, str]]

# Surface forms of the calibrator's answers. The paper reads s["Yes"] and s["No"]; a tokenizer may
# spell the answer with or without a leading space, so each side's score is the log-sum-exp over the
# single-token variants the tokenizer has.
YES_VARIANTS: tuple[str, ...] = ("Yes", " Yes", "yes", " yes", "YES")
NO_VARIANTS: tuple[str, ...] = ("No", " No", "no", " no", "NO")

# Between two chosen tags in a multi-tag answer.
CHOICE_SEPARATOR = ", "


@dataclass(frozen=True)
class ChoiceRequest:
    """Pick up to ``max_choices`` distinct answers from ``choices`` (1 = single-tag mode).

    The engine guarantees that every returned string is one of ``choices``, in the order generated.
    A multi-choice answer is written as the choices joined by ``CHOICE_SEPARATOR``.
    """

    messages: Messages
    choices: tuple[str, ...]
    max_choices: int = 1


@dataclass(frozen=True)
class YesNo:
    """Log-scores of the answers "Yes" and "No" at the first answer position (logits or log-probs:
    only their difference matters)."""

    yes: float
    no: float

    @property
    def confidence(self) -> float:
        """exp(s_yes) / (exp(s_yes) + exp(s_no)), computed stably (paper formula 10)."""
        return yes_no_confidence(self.yes, self.no)


@dataclass
class EngineStats:
    """Work done, for benchmarks: tokens the model actually computed (cached prefixes excluded)."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    generated_tokens: int = 0
    calls: dict[str, int] = field(default_factory=dict)

    def count(self, what: str, n: int = 1) -> None:
        self.calls[what] = self.calls.get(what, 0) + n


@runtime_checkable
class Engine(Protocol):
    """A loaded LLM. All methods are batched: one call, many prompts."""

    name: str
    stats: EngineStats

    def choose(self, requests: Sequence[ChoiceRequest]) -> list[list[str]]:
        """Constrained decoding: the answer to each request, as a list of its choices."""
        ...

    def score_yes_no(self, prompts: Sequence[Messages]) -> list[YesNo]:
        """Yes/No log-scores of the next token after each prompt's assistant turn begins.

        Prompts that share a token prefix (one item judged against several tags) should share its
        computation where the engine allows; callers order such prompts next to each other.
        """
        ...

    def generate(self, prompts: Sequence[Messages], max_tokens: int = 64) -> list[str]:
        """Free greedy generation (for parse-and-match taggers and diagnostics)."""
        ...

    def generate_diverse(
        self,
        prompts: Sequence[Messages],
        max_tokens: int = 48,
        num_beams: int = 6,
        num_beam_groups: int = 3,
        diversity_penalty: float = 1.0,
        length_penalty: float = 1.0,
    ) -> list[list[str]]:
        """Diverse beam search (beam groups with a Hamming diversity penalty, as BETag generates):
        per prompt, ``num_beams`` answers, group by group, best first within a group."""
        ...

    def close(self) -> None: ...


def single_token_ids(encode, variants: Sequence[str]) -> list[int]:
    """Ids of the variants that ``encode`` (text -> ids, no special tokens) writes as exactly one token."""
    ids: list[int] = []
    for text in variants:
        encoded = encode(text)
        if len(encoded) == 1 and encoded[0] not in ids:
            ids.append(encoded[0])
    return ids


def render_chat(tokenizer, messages: Messages, max_model_len: int) -> list[int]:
    """The chat-templated prompt as token ids, ending where the assistant's answer begins.

    The template already holds the special tokens, so none are added when encoding.
    """
    from llm4tag.errors import ModelError

    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) >= max_model_len:
        raise ModelError(f"prompt of {len(ids)} tokens exceeds llm.max_model_len={max_model_len}")
    return ids


def yes_no_confidence(yes: float, no: float) -> float:
    diff = no - yes
    if diff > 0:
        z = math.exp(-diff)
        return z / (1.0 + z)
    return 1.0 / (1.0 + math.exp(diff))


def logsumexp(values: Sequence[float]) -> float:
    if not values:
        return -math.inf
    top = max(values)
    if top == -math.inf:
        return top
    return top + math.log(sum(math.exp(v - top) for v in values))
