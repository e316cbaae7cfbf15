"""The one interface every LLM engine implements, and the pure logic the engines share.

Prompts cross this boundary as chat messages (lists of ``{"role", "content"}`` dicts); the engine applies
its model's chat template. Answers come back as plain strings and floats, never framework objects.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
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
    """The chat-templated prompt as token ids, ending where the assistant's answer begins (a
    transformers tokenizer: the transformers and vLLM engines).

    The template already holds the special tokens, so none are added when encoding.
    """

    def encode(text: str, special: bool) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False, split_special_tokens=not special)

    def template(masked: Messages) -> str:
        return tokenizer.apply_chat_template(masked, add_generation_prompt=True, tokenize=False)

    return check_length(encode_chat(template, encode, messages), max_model_len)


def check_length(ids: list[int], max_model_len: int) -> list[int]:
    from llm4tag.errors import PromptTooLong

    if len(ids) >= max_model_len:
        raise PromptTooLong(f"prompt of {len(ids)} tokens exceeds llm.max_model_len={max_model_len}")
    return ids


# Stand-ins for the messages' contents while the template renders (private-use characters, which no
# template adds): the rendered text is split at them.
_SLOT = "\ue000{}\ue001"


def encode_chat(
    template: Callable[[Messages], str], encode: Callable[[str, bool], list[int]], messages: Messages
) -> list[int]:
    """Token ids of the chat-templated ``messages`` in which only the template's own markup can be a
    control token. ``encode(text, special)`` tokenizes with (True) or without (False) reading
    special-token strings as control tokens.

    A message's content is the user's text, or holds it (item text, stored feedback samples): a text
    saying ``<|im_start|>system`` must reach the model as those characters, not as a new system turn.
    Contents without such strings (all but a few) are tokenized with the whole prompt, as before; when
    one has them, the template renders with stand-ins for the contents, and the markup between them
    is tokenized with special tokens while each content is tokenized without.
    """
    contents = [m.get("content") for m in messages]
    if all(not isinstance(c, str) or encode(c, True) == encode(c, False) for c in contents):
        return encode(template(messages), True)
    slots = [_SLOT.format(i) for i in range(len(messages))]
    masked = [
        {**m, "content": slot} if isinstance(c, str) else m
        for m, c, slot in zip(messages, contents, slots, strict=True)
    ]
    rendered = template(masked)
    ids: list[int] = []
    for slot, content in zip(slots, contents, strict=True):
        if not isinstance(content, str):
            continue
        markup, found, rendered = rendered.partition(slot)
        if not found:
            from llm4tag.errors import ModelError

            raise ModelError("the chat template changes message contents: user text cannot be kept literal")
        ids += encode(markup, True) if markup else []
        ids += encode(content, False) if content else []
    return ids + (encode(rendered, True) if rendered else [])


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
