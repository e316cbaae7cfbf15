"""The text that stands for an item or a tag when it is encoded."""

from __future__ import annotations

import re
from collections.abc import Sequence

from llm4tag.data import Item, Tag

_SEPARATORS = re.compile(r"[_]+")


def readable_tag(name: str) -> str:
    # Vocabularies use identifiers ("card_arrival", "devel::lang:perl"); the encoder reads words.
    return _SEPARATORS.sub(" ", name).strip()


def tag_text(tag: Tag, description_chars: int = 300) -> str:
    text = readable_tag(tag.tag)
    if tag.description:
        text += ": " + " ".join(tag.description.split())[:description_chars]
    return text


def item_text(item: Item, fields: Sequence[str] = ("text",)) -> str:
    parts = []
    for name in fields:
        value = item.text if name == "text" else item.extra.get(name)
        if isinstance(value, list | tuple):
            value = " / ".join(str(v) for v in value)
        if value:
            parts.append(str(value))
    return " | ".join(parts) if parts else item.text
