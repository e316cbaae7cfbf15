"""SKOS vocabularies in and out (rdflib): concepts become tags, and their URIs are kept.

A concept (``skos:Concept``, not ``owl:deprecated``) becomes one tag:

* its name is the ``skos:prefLabel`` in the chosen language (a label without a language tag when the
  concept has none in it); two concepts with the same label are told apart by their broader concept's
  label ("Monitoring (Networking)"), else by their notation, else by their URI;
* ``skos:altLabel`` (same language) and ``skos:definition`` / ``skos:scopeNote`` make up its
  description, which is what the encoder and the prompts read after the name (alternative labels first,
  so that they survive the description's cut at ``texts.tag_description_chars``);
* ``skos:broader`` and ``skos:narrower`` (either side may state the link) give the hierarchy as
  (narrower tag, broader tag) pairs, within the vocabulary;
* URI, label, notation, alternative labels, definition and scope note stay in ``Tag.extra``, so that a
  store built from the file answers with the same URIs and can write the vocabulary back
  (:func:`write_skos`).

Items may name their tags by any of a concept's URI, notation or label (:func:`aliases`), as corpora for
subject-indexing tools usually name them by URI.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from llm4tag.errors import DataError
from llm4tag.vocabulary_entry import Tag

SKOS_EXTENSIONS = {
    ".ttl": "turtle",
    ".rdf": "xml",
    ".owl": "xml",
    ".nt": "nt",
    ".jsonld": "json-ld",
    ".n3": "n3",
}
# Stable URIs for tags of a vocabulary that has none (a JSONL vocabulary): the name, percent-encoded.
DERIVED_URI_BASE = "urn:llm4tag:tag:"
# Keys of Tag.extra written by read_skos (and kept in the store's metadata).
FIELDS = ("uri", "label", "notation", "alt_labels", "definition", "scope_note", "broader", "language")


def is_skos_path(path: str | os.PathLike[str]) -> bool:
    return Path(str(path)).suffix.lower() in SKOS_EXTENSIONS


def read_skos(path: str | os.PathLike[str], language: str | None = None) -> list[Tag]:
    """The concepts of a SKOS file as tags (sorted by URI, so the order does not depend on the parser)."""
    import rdflib
    from rdflib.namespace import OWL, RDF, SKOS

    spath = str(path)
    if not Path(spath).is_file():
        raise DataError(spath, "does not exist")
    graph = rdflib.Graph()
    try:
        graph.parse(spath, format=SKOS_EXTENSIONS[Path(spath).suffix.lower()])
    except Exception as exc:  # rdflib raises parser-specific types (BadSyntax, SAXParseException, ...)
        raise DataError(spath, f"is not a readable SKOS file: {exc}") from exc
    concepts = sorted(
        (c for c in set(graph.subjects(RDF.type, SKOS.Concept)) if isinstance(c, rdflib.URIRef)), key=str
    )
    concepts = [c for c in concepts if not any(bool(v.toPython()) for v in graph.objects(c, OWL.deprecated))]
    if not concepts:
        raise DataError(spath, "holds no skos:Concept with a URI")
    language = language or _only_language(graph, concepts, spath)

    def texts(concept, predicate) -> list[str]:
        values = [v for v in graph.objects(concept, predicate) if isinstance(v, rdflib.Literal)]
        chosen = [v for v in values if _matches(v.language, language)] or [
            v for v in values if not v.language
        ]
        return sorted(" ".join(str(v).split()) for v in chosen if str(v).strip())

    labels: dict[Any, str] = {}
    missing = []
    for concept in concepts:
        found = texts(concept, SKOS.prefLabel)
        if found:
            labels[concept] = found[0]
        else:
            missing.append(str(concept))
    if missing:
        raise DataError(
            spath,
            f"{len(missing)} concept(s) have no skos:prefLabel in language {language!r}, e.g. <{missing[0]}>"
            " (choose another --language)",
        )
    known = set(labels)
    broader: dict[Any, set] = defaultdict(set)
    for child, parent in [
        *graph.subject_objects(SKOS.broader),
        *((c, p) for p, c in graph.subject_objects(SKOS.narrower)),
    ]:
        if child in known and parent in known and child != parent:
            broader[child].add(parent)
    notations = {c: sorted(str(v) for v in graph.objects(c, SKOS.notation)) for c in concepts}
    names = _unique_names(concepts, labels, broader, notations)
    tags = []
    for concept in concepts:
        alt = [a for a in texts(concept, SKOS.altLabel) if a != labels[concept]]
        definition = " ".join(texts(concept, SKOS.definition)) or None
        scope = " ".join(texts(concept, SKOS.scopeNote)) or None
        extra = {
            "uri": str(concept),
            "label": labels[concept],
            "notation": notations[concept][0] if notations[concept] else None,
            "alt_labels": alt,
            "definition": definition,
            "scope_note": scope,
            "broader": sorted(names[p] for p in broader[concept]),
            "language": language or None,
        }
        tags.append(Tag(tag=names[concept], description=describe(alt, definition, scope), extra=extra))
    return tags


def describe(alt_labels: Sequence[str], definition: str | None, scope_note: str | None) -> str | None:
    parts = []
    if alt_labels:
        parts.append(f"(also: {'; '.join(alt_labels)})")
    parts.extend(p for p in (definition, scope_note) if p)
    return " ".join(parts) or None


def hierarchy(tags: Iterable[Tag]) -> list[tuple[str, str]]:
    """(narrower, broader) tag pairs of a vocabulary read by :func:`read_skos`."""
    return [(t.tag, parent) for t in tags for parent in t.extra.get("broader") or ()]


def aliases(tags: Iterable[Tag]) -> dict[str, str]:
    """URI, notation and label of each concept -> its tag name (for items that name tags by those)."""
    out: dict[str, str] = {}
    for tag in tags:
        for key in ("label", "notation", "uri"):
            value = tag.extra.get(key)
            if value and value != tag.tag:
                out.setdefault(value, tag.tag)
    return out


def vocabulary_meta(tags: Sequence[Tag]) -> dict | None:
    """What a store keeps of a SKOS vocabulary (manifest "meta"): per tag its URI, label, notation and
    notes, and the labels' language; None for a vocabulary without SKOS fields."""
    kept = {
        t.tag: {k: t.extra[k] for k in FIELDS if k not in ("broader", "language") and t.extra.get(k)}
        for t in tags
        if t.extra.get("uri")
    }
    if not kept:
        return None
    languages = {t.extra.get("language") for t in tags if t.extra.get("uri")}
    return {"language": sorted(languages - {None})[0] if languages - {None} else None, "tags": kept}


def tags_from_meta(
    names: Sequence[str],
    descriptions: Sequence[str | None],
    meta: Mapping[str, Any] | None,
    broader: Iterable[tuple[str, str]] = (),
) -> list[Tag]:
    """A store's vocabulary as tags again (the inverse of :func:`vocabulary_meta` + the hierarchy)."""
    per_tag = (meta or {}).get("tags") or {}
    parents: dict[str, list[str]] = defaultdict(list)
    for child, parent in broader:
        parents[child].append(parent)
    return [
        Tag(
            tag=name,
            description=description,
            extra={
                **per_tag.get(name, {}),
                "broader": sorted(parents[name]),
                "language": (meta or {}).get("language"),
            },
        )
        for name, description in zip(names, descriptions, strict=True)
    ]


def tag_uri(name: str, metadata: Mapping[str, Any] | None, base: str = DERIVED_URI_BASE) -> str:
    """The vocabulary's URI for a tag, or one derived from its name (stable across builds)."""
    if metadata and metadata.get("uri"):
        return str(metadata["uri"])
    return base + quote(name, safe="")


def write_skos(
    tags: Sequence[Tag],
    *,
    language: str = "en",
    scheme: str | None = None,
    uri_base: str = DERIVED_URI_BASE,
) -> str:
    """The vocabulary as SKOS Turtle.

    Tags read from SKOS keep their URIs, labels, notations, notes and hierarchy; other tags get derived
    URIs, their name as label and their description as definition.
    """
    import rdflib
    from rdflib.namespace import RDF, SKOS

    graph = rdflib.Graph()
    graph.bind("skos", SKOS)
    uris = {t.tag: rdflib.URIRef(tag_uri(t.tag, t.extra, uri_base)) for t in tags}
    scheme_ref = rdflib.URIRef(scheme) if scheme else None
    if scheme_ref is not None:
        graph.add((scheme_ref, RDF.type, SKOS.ConceptScheme))

    def literal(value: str) -> rdflib.Literal:
        return rdflib.Literal(value, lang=language or None)

    for tag in tags:
        node, extra = uris[tag.tag], tag.extra
        graph.add((node, RDF.type, SKOS.Concept))
        graph.add((node, SKOS.prefLabel, literal(extra.get("label") or tag.tag)))
        for alt in extra.get("alt_labels") or ():
            graph.add((node, SKOS.altLabel, literal(alt)))
        if extra.get("notation"):
            graph.add((node, SKOS.notation, rdflib.Literal(extra["notation"])))
        definition = extra.get("definition") if "uri" in extra else tag.description
        if definition:
            graph.add((node, SKOS.definition, literal(definition)))
        if extra.get("scope_note"):
            graph.add((node, SKOS.scopeNote, literal(extra["scope_note"])))
        for parent in extra.get("broader") or ():
            if parent in uris:
                graph.add((node, SKOS.broader, uris[parent]))
                graph.add((uris[parent], SKOS.narrower, node))
        if scheme_ref is not None:
            graph.add((node, SKOS.inScheme, scheme_ref))
            if not extra.get("broader"):
                graph.add((scheme_ref, SKOS.hasTopConcept, node))
    return graph.serialize(format="turtle")


def _matches(tag: str | None, language: str) -> bool:
    # "en" matches "en" and "en-GB"; a literal without a language tag matches only as a fallback.
    return bool(tag) and (tag.lower() == language.lower() or tag.lower().startswith(language.lower() + "-"))


def _only_language(graph, concepts, path: str) -> str:
    from rdflib.namespace import SKOS

    languages = sorted({v.language for c in concepts for v in graph.objects(c, SKOS.prefLabel)} - {None})
    if len(languages) > 1:
        raise DataError(
            path,
            f"has labels in {len(languages)} languages ({', '.join(languages)}): choose one with --language",
        )
    return languages[0] if languages else ""


def _unique_names(concepts, labels, broader, notations) -> dict[Any, str]:
    by_label: dict[str, list] = defaultdict(list)
    for concept in concepts:
        by_label[labels[concept]].append(concept)
    names = {}
    for label, group in by_label.items():
        if len(group) == 1:
            names[group[0]] = label
            continue
        candidates = {}
        for concept in group:
            parents = sorted(labels[p] for p in broader[concept])
            candidates[concept] = [
                f"{label} ({parents[0]})" if parents else None,
                f"{label} ({notations[concept][0]})" if notations[concept] else None,
                f"{label} <{concept}>",
            ]
        # The first way of telling them apart that gives every concept of the group its own name.
        for rank in range(3):
            chosen = [candidates[c][rank] for c in group]
            if None not in chosen and len(set(chosen)) == len(chosen) and not set(chosen) & set(by_label):
                names.update(zip(group, chosen, strict=True))
                break
    return names
