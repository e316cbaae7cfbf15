"""The served vocabulary, built once per ingress replica and read by every route that shows it:
llm4tag's tag search and feedback checks, the review UI's vocabulary page and Annif's subjects."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from graph_store import read_vocabulary
from llm4tag.service.annif import AnnifSettings, Subjects
from llm4tag.service.tag_search import TagSearch


@dataclass(frozen=True)
class VocabularyView:
    tags: list[str]
    descriptions: list[str | None]
    search: TagSearch
    subjects: Subjects  # URIs, labels, notations (SKOS vocabularies keep theirs; others get derived ones)
    broader: dict[str, list[str]] = field(default_factory=dict)
    narrower: dict[str, list[str]] = field(default_factory=dict)
    modified: str | None = None  # when the store's live version was made
    names: frozenset[str] = frozenset()
    position: dict[str, int] = field(default_factory=dict)

    @classmethod
    def read(
        cls,
        store: str | os.PathLike,
        journal: str | os.PathLike | None,
        annif: AnnifSettings,
        max_query_chars: int,
    ) -> VocabularyView:
        """The store's vocabulary as it is now: its live version's tags and those added since."""
        described = read_vocabulary(store, journal)
        vocabulary = {
            "tags": described.tags,
            "descriptions": described.descriptions,
            "meta": described.meta,
            "broader": described.broader,
            "modified": store_modified(store),
        }
        return cls.of(vocabulary, annif, max_query_chars)

    @classmethod
    def of(cls, vocabulary: Mapping[str, Any], annif: AnnifSettings, max_query_chars: int) -> VocabularyView:
        """``vocabulary``: the store's, as the app builder reads it (tags, descriptions, meta, broader,
        modified)."""
        tags, descriptions = list(vocabulary["tags"]), list(vocabulary["descriptions"])
        meta = (vocabulary.get("meta") or {}).get("vocabulary") or {}
        up: dict[str, list[str]] = defaultdict(list)
        down: dict[str, list[str]] = defaultdict(list)
        for narrower, broader in vocabulary.get("broader") or ():
            up[narrower].append(broader)
            down[broader].append(narrower)
        return cls(
            tags=tags,
            descriptions=descriptions,
            search=TagSearch(tags, descriptions, max_query_chars),
            subjects=Subjects.of(
                tags, meta.get("tags"), annif.language or meta.get("language"), annif.uri_base
            ),
            broader=dict(up),
            narrower=dict(down),
            modified=vocabulary.get("modified"),
            names=frozenset(tags),
            position={t: i for i, t in enumerate(tags)},
        )

    def row(self, tag: str, annotations: int, synthetic: Sequence[str] = ()) -> dict:
        """The review UI's vocabulary row of ``tag``: its description, URI, hierarchy and examples.
        ``annotations``: stored items carrying it; a tag with none (added after the build, or never
        annotated) is ``new``: recall offers it from its name and description alone. ``synthetic``:
        the texts of the LLM-written examples stored for it (`llm4tag augment`), which fits use and the
        UI shows marked as synthetic."""
        subject = self.subjects.subject(tag, 0.0)
        return {
            "tag": tag,
            "description": self.descriptions[self.position[tag]],
            "uri": subject["uri"],
            "label": subject["label"],
            "notation": subject["notation"],
            "broader": self.broader.get(tag, []),
            "narrower": self.narrower.get(tag, []),
            "count": annotations,
            "new": annotations == 0,
            "synthetic": list(synthetic),
        }


def store_modified(store: str | os.PathLike) -> str | None:
    """When the store's live version was made (Annif's project modification_time)."""
    for pointer in (Path(store) / "CURRENT", Path(store) / "shards.json"):
        if pointer.exists():
            stamp = datetime.fromtimestamp(pointer.stat().st_mtime, tz=UTC)
            return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
    return None
