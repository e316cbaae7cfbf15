"""Tags added to a built store (`llm4tag vocab add`): each tag's text encoded with the store's encoder as
`build` encodes the vocabulary's, its description written into the domain knowledge base as `build`
writes it, and the tag written durably through the store's journal, so that every process following
the store recalls it from its next sync (graph_store: ``GraphStore.add_tags``).

The ranking fitted before the tag is added ranks it with 0 annotations (``RankingModels.follow``); a
refit learns it from the annotations it has by then.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from llm4tag.data import Tag
from llm4tag.encoded_text import tag_text
from llm4tag.errors import LLM4TagError
from llm4tag.item_rules import ItemProblem, check_string
from llm4tag.knowledge.sources import vocabulary_snippets
from llm4tag.knowledge.store_knowledge import StoreKnowledge
from llm4tag.progress import step
from llm4tag.recaller import Recaller


def checked_tags(tags: Sequence[Tag]) -> list[Tag]:
    """The tags, each name checked as a vocabulary file's (a string with a non-space character)."""
    for position, tag in enumerate(tags, 1):
        try:
            check_string("tag", tag.tag)
        except ItemProblem as problem:
            raise LLM4TagError(f"tag {position}: {problem.message}") from None
    return list(tags)


def add_tags(store_dir: str | os.PathLike, tags: Sequence[Tag], recaller: Recaller | None = None) -> dict:
    """Add ``tags`` to the store at ``store_dir`` (``recaller``: the store already open); a summary.

    Nothing is written when a tag is refused (already in the vocabulary, given twice, a blank name).
    The description snippets go first: they are upserts, so an add cut short after them converges when
    run again.
    """
    tags = checked_tags(tags)
    recaller = recaller or Recaller.open(store_dir)
    store, encoder = recaller.store, recaller.encoder
    names, descriptions = [t.tag for t in tags], [t.description for t in tags]
    with step("encode the tags", total=len(tags), unit="tag") as bar:
        vectors = encoder.encode([tag_text(t, recaller.texts.tag_description_chars) for t in tags])
        bar.update(len(tags))
    store.sync()
    store.check_new_tags(names, vectors, descriptions, encoder.id)
    snippets = vocabulary_snippets(tags)
    domain = StoreKnowledge.open(store_dir, encoder.id, writable=True).domain
    if domain is not None and snippets:
        domain.add_encoded(snippets, encoder)
    store.add_tags(names, vectors, descriptions, encoder_id=encoder.id)
    return {
        "store": str(Path(store_dir)),
        "added": names,
        "tags": store.stats()["tags"],
        "snippets": len(snippets) if domain is not None else 0,
        "encoder": encoder.id,
    }
