"""Constrained choice as pure logic: a token automaton for decoding, and text matching for free output.

The automaton accepts exactly the token sequences ``c1 [SEP c2 [SEP c3 ...]] END`` where every ``ci``
is a distinct choice, at most ``max_choices`` of them, each spelled the way the tokenizer spells it in
that position (first answer word vs. after the separator). Engines mask every other token.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from llm4tag.engines.base import CHOICE_SEPARATOR


@dataclass
class _Node:
    children: dict[int, _Node] = field(default_factory=dict)
    below: set[str] = field(default_factory=set)  # choices whose spelling passes through this node
    terminal: str | None = None  # the choice that ends here


def _trie(spellings: dict[str, Sequence[int]]) -> _Node:
    root = _Node()
    for choice, ids in spellings.items():
        if not ids:
            continue
        node = root
        node.below.add(choice)
        for token in ids:
            node = node.children.setdefault(token, _Node())
            node.below.add(choice)
        # Two choices spelled alike keep the first: they are indistinguishable to the model.
        if node.terminal is None:
            node.terminal = choice
    return root


class ChoiceAutomaton:
    def __init__(
        self,
        choices: Sequence[str],
        encode: Callable[[str], list[int]],
        end_ids: Sequence[int],
        max_choices: int = 1,
    ):
        if not choices:
            raise ValueError("a choice request needs at least one choice")
        if max_choices < 1:
            raise ValueError(f"max_choices must be >= 1, got {max_choices}")
        self.choices = tuple(dict.fromkeys(choices))
        self.max_choices = max_choices
        self.end_ids = tuple(end_ids)
        self.first = _trie({c: encode(c) for c in self.choices})
        self.follow = (
            _trie({c: encode(CHOICE_SEPARATOR + c) for c in self.choices}) if max_choices > 1 else None
        )

    def _walk(self, generated: Sequence[int]) -> tuple[list[str], _Node | None, bool]:
        """Replay generated tokens: (completed choices, current trie node or None, ended)."""
        chosen: list[str] = []
        node: _Node | None = self.first
        for token in generated:
            if token in self.end_ids:
                if node is not None and node.terminal is not None:
                    chosen.append(node.terminal)
                return chosen, None, True
            assert node is not None
            nxt = node.children.get(token)
            if nxt is not None:
                node = nxt
                continue
            # Not a continuation of the current choice: it must start the next one.
            if node.terminal is None or self.follow is None:
                raise ValueError(f"token {token} is outside the choice language")
            chosen.append(node.terminal)
            nxt = self.follow.children.get(token)
            if nxt is None:
                raise ValueError(f"token {token} is outside the choice language")
            node = nxt
        return chosen, node, False

    def allowed(self, generated: Sequence[int]) -> list[int]:
        chosen, node, ended = self._walk(generated)
        if ended or node is None:
            return list(self.end_ids[:1])
        taken = set(chosen)
        allowed = [t for t, child in node.children.items() if child.below - taken]
        if node.terminal is not None and node.terminal not in taken:
            allowed.append(self.end_ids[0])
            if self.follow is not None and len(chosen) + 1 < self.max_choices:
                taken_now = taken | {node.terminal}
                allowed += [
                    t
                    for t, child in self.follow.children.items()
                    if child.below - taken_now and t not in node.children
                ]
        return allowed or list(self.end_ids[:1])

    def parse(self, generated: Sequence[int]) -> list[str]:
        chosen, node, ended = self._walk(generated)
        if not ended and node is not None and node.terminal is not None:
            chosen.append(node.terminal)
        return list(dict.fromkeys(chosen))


def _norm(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"[_\s]+", " ", text)
    return text.strip(" \t\n\"'`*.-:;[](){}")


def match_choices(text: str, choices: Sequence[str], max_choices: int = 1) -> list[str]:
    """The choices named in free LLM output, in order of appearance, never anything else.

    Handles what small models write around an answer: quotes, bullets, numbering, "Tags:" prefixes,
    case and underscore/space differences, and explanations after the list. Longer choices win over
    choices that are their substrings ("card payment fee charged" over "card payment").
    """
    by_norm: dict[str, str] = {}
    for choice in choices:
        by_norm.setdefault(_norm(choice), choice)
    haystack = " " + _norm(text.replace("\n", " , ")) + " "
    found: list[tuple[int, str]] = []
    claimed = [False] * len(haystack)
    for key in sorted(by_norm, key=len, reverse=True):
        if not key:
            continue
        pattern = re.compile(r"(?<![\w:+#.-])" + re.escape(key) + r"(?![\w:+#-])")
        for hit in pattern.finditer(haystack):
            span = range(hit.start(), hit.end())
            if any(claimed[i] for i in span):
                continue
            for i in span:
                claimed[i] = True
            found.append((hit.start(), by_norm[key]))
            break
    found.sort()
    return list(dict.fromkeys(choice for _, choice in found))[:max_choices]
