"""Retrievable knowledge for tag generation (paper §3.3.2, short-term retrieved knowledge injection).

    entries.py      Sample, Snippet and their search hits
    index.py        the shared base: entries by id, an exact vector index, the folder it follows
    bases.py        SampleKnowledgeBase, DomainKnowledgeBase, build_knowledge
    sources.py      snippets from the tag vocabulary and from knowledge files (JSONL, Markdown)
    persistence.py  snapshots and the append log on disk (graph_store.durable)

Callers encode; vectors cross the API as numpy arrays.
"""

from graph_store.errors import EncoderMismatchError
from llm4tag.knowledge.bases import (
    DomainKnowledgeBase,
    SampleKnowledgeBase,
    build_knowledge,
    domain_knowledge,
)
from llm4tag.knowledge.entries import (
    SAMPLE_SOURCES,
    KnowledgeError,
    Sample,
    SampleHit,
    Snippet,
    SnippetHit,
)
from llm4tag.knowledge.sources import DEFAULT_MAX_CHARS, load_knowledge_file, vocabulary_snippets

__all__ = [
    "DEFAULT_MAX_CHARS",
    "SAMPLE_SOURCES",
    "DomainKnowledgeBase",
    "EncoderMismatchError",
    "KnowledgeError",
    "Sample",
    "SampleHit",
    "SampleKnowledgeBase",
    "Snippet",
    "SnippetHit",
    "build_knowledge",
    "domain_knowledge",
    "load_knowledge_file",
    "vocabulary_snippets",
]
