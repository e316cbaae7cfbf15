"""One entry of a tag vocabulary, apart from the readers (llm4tag/data.py reads tabular vocabularies,
llm4tag/skos.py SKOS ones; data.read_tags hands SKOS files to skos, which therefore cannot import data)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Tag:
    """One entry of the tag vocabulary."""

    tag: str
    description: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)
