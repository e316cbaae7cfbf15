"""Annif's REST API on top of llm4tag, as plain Python: request parsing, subjects, answers.

Annif (annif.org; client ``annif-client``) is the subject-indexing tool of many libraries and archives;
systems that speak its REST API (``/v1/projects/{id}/suggest`` and friends, OpenAPI in Annif's
``annif/openapi/annif.yaml``) can use an llm4tag service unchanged. One served store is one Annif
project; its tags are the project's subjects:

* ``uri``: the SKOS concept's URI for a vocabulary built from SKOS, else one derived from the tag name
  (``urn:llm4tag:tag:<percent-encoded name>``, stable across builds);
* ``label``: the prefLabel (SKOS) or the tag name; ``notation``: the SKOS notation or null;
* ``score``: the calibrated confidence of the tag. Without a ``threshold`` a suggestion is the store's
  own output: the tags it keeps (for a multi-tag store, as many as its output rule fitted on held-out
  folds shows, from its fitted cut: ``GET /v1/projects/{id}`` reports the rule under ``output``).
  With one (Annif's clients send 0 to get everything), all judged tags, kept or dropped by the cut, at
  or above it: the caller chooses the cut.

Documents have no id in Annif's ``learn`` and an optional one in ``suggest-batch``, so an item's id is
derived from its text (``annif-<sha256 prefix>``): suggest and learn on one text name the same item.
Errors answer as Annif's do: ``application/problem+json`` with ``status``, ``title``, ``detail``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import parse_qs

from pydantic import BaseModel, ConfigDict, Field, RootModel, StrictStr

from llm4tag.config_section import Section
from llm4tag.skos import DERIVED_URI_BASE, tag_uri

# Annif's limits (annif.yaml): at most 32 documents per suggest-batch; limit >= 0; 0 <= threshold <= 1.
MAX_BATCH_DOCUMENTS = 32
DEFAULT_LIMIT = 10
PROBLEM_MEDIA_TYPE = "application/problem+json"
FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"
TITLES = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    413: "Payload Too Large",
    503: "Service Unavailable",
}


# The request bodies as OpenAPI documents them (Annif's annif.yaml, with the limits we add). The parsers
# below read the bodies themselves, to answer in Annif's problem details and bound sizes first; the fuzz
# test (tests/test_fuzz_api.py) holds them to these models.
def _optional_not_null(schema: dict) -> None:
    # An optional field is absent, not null (as in annif.yaml): its None default stays out of the schema.
    for prop in schema.get("properties", {}).values():
        if "default" in prop and prop["default"] is None:
            del prop["default"]


class _Body(BaseModel):
    model_config = ConfigDict(json_schema_extra=_optional_not_null)


class SuggestForm(_Body):
    """Annif's suggest form (``application/x-www-form-urlencoded``)."""

    text: str = Field(description="input text (an empty or blank text has no suggestions)")
    limit: int = Field(DEFAULT_LIMIT, ge=0, description="maximum number of results to return")
    threshold: float = Field(
        None,
        ge=0.0,
        le=1.0,
        description="minimum score, below which results are not returned; absent: the project's own "
        "output (the tags it keeps: its fitted number and cut, see output in GET /v1/projects/{id})",
    )
    language: StrictStr = Field(
        None, description="language of the subject labels: the vocabulary's; another is refused (400)"
    )


class Document(_Body):
    text: StrictStr
    document_id: StrictStr | None = None
    metadata: dict[str, StrictStr] = Field(None, description="accepted and not used")


class SuggestBatch(_Body):
    """Annif's suggest-batch body (``limit``, ``threshold``, ``language`` are query parameters)."""

    documents: list[Document] = Field(max_length=MAX_BATCH_DOCUMENTS)


class Subject(_Body):
    uri: StrictStr = Field(description="a subject URI; one outside the vocabulary is left out")
    label: StrictStr = Field(None)


class IndexedDocument(_Body):
    """A document with known good subjects; one without text or a known subject is skipped."""

    text: StrictStr = Field(None)
    metadata: dict[str, StrictStr] = Field(None, description="accepted and not used")
    subjects: list[Subject] = Field(None)


class LearnBody(RootModel[list[IndexedDocument]]):
    """Annif's learn body: documents with their subjects, recorded as feedback."""


class AnnifSettings(Section):
    """The Annif-compatible API (the `annif:` argument of the Serve application)."""

    section: ClassVar[str] = "annif"

    project_id: str = Field("llm4tag", pattern=r"^[A-Za-z0-9_-]+$", description="the Annif project id")
    name: str = Field("llm4tag", description="the project's name")
    language: str | None = Field(
        None, description="language of the labels; default: the SKOS vocabulary's (--language), else 'en'"
    )
    vocab_id: str = Field("llm4tag", description="the vocabulary's id in GET /v1/vocabs")
    uri_base: str = Field(DERIVED_URI_BASE, description="prefix of the URIs derived for tags without one")
    learn: bool = Field(True, description="accept POST .../learn (it becomes feedback)")


class Problem(Exception):
    """An Annif error answer (RFC 7807 problem details, as Connexion writes them for Annif)."""

    def __init__(self, status: int, detail: str, title: str | None = None):
        super().__init__(detail)
        self.status, self.detail, self.title = status, detail, title or TITLES.get(status, "Error")

    def body(self) -> dict:
        return {"type": "about:blank", "title": self.title, "status": self.status, "detail": self.detail}


@dataclass(frozen=True)
class Subjects:
    """The project's subjects: tag <-> URI, label, notation."""

    tags: tuple[str, ...]
    uris: tuple[str, ...]
    labels: tuple[str, ...]
    notations: tuple[str | None, ...]
    language: str

    @classmethod
    def of(
        cls,
        tags: Sequence[str],
        metadata: Mapping[str, Mapping[str, Any]] | None,
        language: str | None,
        uri_base: str = DERIVED_URI_BASE,
    ) -> Subjects:
        """``metadata``: per tag, the SKOS fields a store keeps (``uri``, ``label``, ``notation``)."""
        metadata = metadata or {}
        uris = tuple(tag_uri(t, metadata.get(t), uri_base) for t in tags)
        if len(set(uris)) != len(uris):
            raise ValueError("two tags of the vocabulary have the same URI")
        return cls(
            tags=tuple(tags),
            uris=uris,
            labels=tuple((metadata.get(t) or {}).get("label") or t for t in tags),
            notations=tuple((metadata.get(t) or {}).get("notation") for t in tags),
            language=language or "en",
        )

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_tag", {t: i for i, t in enumerate(self.tags)})
        object.__setattr__(self, "_by_uri", {u: i for i, u in enumerate(self.uris)})

    def subject(self, tag: str, score: float) -> dict:
        i = self._by_tag[tag]  # type: ignore[attr-defined]
        return {"uri": self.uris[i], "label": self.labels[i], "notation": self.notations[i], "score": score}

    def tag_of(self, uri: str) -> str | None:
        i = self._by_uri.get(uri)  # type: ignore[attr-defined]
        return None if i is None else self.tags[i]


def project(
    settings: AnnifSettings, subjects: Subjects, modified: str | None, output: dict | None = None
) -> dict:
    """Annif's project description; ``output``: what a suggest without ``threshold`` returns (see
    :func:`output_rule`), an llm4tag field Annif's clients ignore."""
    return {
        "project_id": settings.project_id,
        "name": settings.name,
        "language": subjects.language,
        "backend": {"backend_id": "llm4tag"},
        "vocab": vocabulary(settings, subjects),
        "vocab_language": subjects.language,
        "is_trained": True,
        "modification_time": modified,
        **({"output": output} if output is not None else {}),
    }


def output_rule(plan: Any) -> dict | None:
    """The tags a store keeps per item, from its route plan (llm4tag.ranking.cascade.RoutePlan): at most
    ``limit``, those at or above ``threshold``, at least ``min_tags`` (None: the store has no ranker)."""
    if plan is None:
        return None
    reachable = math.isfinite(plan.ranker_cut)  # an unreachable target precision keeps nothing
    return {
        "limit": (plan.emit if plan.multi else 1) if reachable else 0,
        "threshold": plan.ranker_cut if reachable else None,
        "min_tags": plan.min_tags,
        "rule": plan.reason,
    }


def vocabulary(settings: AnnifSettings, subjects: Subjects) -> dict:
    return {
        "vocab_id": settings.vocab_id,
        "languages": [subjects.language],
        "size": len(subjects.tags),
        "loaded": True,
    }


def item_id(text: str) -> str:
    return "annif-" + hashlib.sha256(text.encode()).hexdigest()[:20]


def suggestions(
    row: Mapping[str, Any], subjects: Subjects, limit: int, threshold: float | None
) -> list[dict]:
    """A tag row as Annif results, best ``limit`` first, zero scores left out (Annif's results are
    sparse): its kept tags (``threshold`` None: the store's own output), or all its judged tags, kept
    or dropped, with score >= threshold (as Annif's filter_suggestion)."""
    judged = (
        [*(row.get("tags") or ()), *(row.get("dropped") or ())]
        if threshold is not None
        else row.get("tags") or ()
    )
    threshold = threshold or 0.0
    scored = {}
    for tag in judged:
        score = tag.get("confidence")
        if score is None or score != score:  # calibration off: the recall score stands in
            score = min(1.0, max(0.0, float(tag.get("recall_score") or 0.0)))
        scored[tag["tag"]] = max(float(score), scored.get(tag["tag"], 0.0))
    ranked = sorted(scored.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    return [subjects.subject(tag, score) for tag, score in ranked if score > 0 and score >= threshold]


# --- requests


@dataclass(frozen=True)
class SuggestParams:
    limit: int = DEFAULT_LIMIT
    threshold: float | None = None  # None: the store's own output (the tags it keeps)
    language: str | None = None


def parse_params(values: Mapping[str, str], subjects: Subjects) -> SuggestParams:
    """``limit``, ``threshold`` and ``language`` from a form or a query string."""
    limit, threshold = DEFAULT_LIMIT, None
    if values.get("limit") not in (None, ""):
        try:
            limit = int(values["limit"])
        except ValueError:
            raise Problem(400, f"'{values['limit']}' is not of type 'integer' - 'limit'") from None
        if limit < 0:
            raise Problem(400, f"{limit} is less than the minimum of 0 - 'limit'")
    if values.get("threshold") not in (None, ""):
        try:
            threshold = float(values["threshold"])
        except ValueError:
            raise Problem(400, f"'{values['threshold']}' is not of type 'number' - 'threshold'") from None
        if not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
            raise Problem(400, f"{threshold} is not within [0, 1] - 'threshold'")
    language = values.get("language") or None
    if language is not None and language != subjects.language:
        raise Problem(400, f'language "{language}" not supported by vocabulary')
    return SuggestParams(limit, threshold, language)


def parse_form(raw: bytes) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (the last value of a repeated field wins)."""
    try:
        fields = parse_qs(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError as exc:
        raise Problem(400, f"the form is not UTF-8: {exc}") from exc
    return {name: values[-1] for name, values in fields.items()}


def parse_suggest(form: Mapping[str, str], subjects: Subjects, max_chars: int) -> tuple[str, SuggestParams]:
    text = form.get("text")
    if text is None:
        raise Problem(400, "'text' is a required property")
    return _text(text, "text", max_chars), parse_params(form, subjects)


def parse_batch(body: Any, max_chars: int) -> list[tuple[str, str | None]]:
    """(text, document_id) of each document of a suggest-batch body."""
    if not isinstance(body, dict) or "documents" not in body:
        raise Problem(400, "'documents' is a required property")
    documents = body["documents"]
    if not isinstance(documents, list):
        raise Problem(400, f"{_json_type(documents)} is not of type 'array' - 'documents'")
    if len(documents) > MAX_BATCH_DOCUMENTS:
        raise Problem(400, "too many items - 'documents'")
    out = []
    for index, document in enumerate(documents):
        where = f"documents.{index}"
        if not isinstance(document, dict):
            raise Problem(400, f"{_json_type(document)} is not of type 'object' - '{where}'")
        if "text" not in document:
            raise Problem(400, f"'text' is a required property - '{where}'")
        document_id = document.get("document_id")
        if document_id is not None and not isinstance(document_id, str):
            raise Problem(400, f"{_json_type(document_id)} is not of type 'string' - '{where}.document_id'")
        _check_metadata(document, where)
        out.append((_text(document["text"], f"{where}.text", max_chars), document_id))
    return out


def parse_learn(
    body: Any, subjects: Subjects, max_chars: int, max_documents: int
) -> tuple[list[dict], list[str]]:
    """Feedback items (``id``, ``text``, ``tags``) of a learn body, and the subject URIs outside the
    vocabulary. As Annif does, those URIs are left out (its learn has no 400 answer), and documents
    without text or without a known subject are skipped."""
    if not isinstance(body, list):
        raise Problem(400, f"{_json_type(body)} is not of type 'array'")
    if len(body) > max_documents:
        raise Problem(413, f"{len(body)} documents, more than the limit of {max_documents}")
    items: dict[str, dict] = {}
    unknown: list[str] = []
    for index, document in enumerate(body):
        if not isinstance(document, dict):
            raise Problem(400, f"{_json_type(document)} is not of type 'object' - '{index}'")
        _check_metadata(document, str(index))
        # Checked whole before anything is skipped: a skipped document is still a valid one.
        text = _text(document["text"], f"{index}.text", max_chars) if "text" in document else ""
        subject_list = document.get("subjects", [])
        if not isinstance(subject_list, list):
            raise Problem(400, f"{_json_type(subject_list)} is not of type 'array' - '{index}.subjects'")
        uris = []
        for position, subject in enumerate(subject_list):
            uri = subject.get("uri") if isinstance(subject, dict) else None
            if not isinstance(uri, str):
                raise Problem(400, f"'uri' is a required property - '{index}.subjects.{position}'")
            if "label" in subject and not isinstance(subject["label"], str):
                label = _json_type(subject["label"])
                raise Problem(400, f"{label} is not of type 'string' - '{index}.subjects.{position}.label'")
            uris.append(uri)
        if not text.strip():
            continue
        tags = []
        for uri in uris:
            tag = subjects.tag_of(uri)
            if tag is None:
                unknown.append(uri)
            else:
                tags.append(tag)
        if not tags:
            continue
        key = item_id(text)
        if key in items:  # the same text twice: one item with both documents' subjects
            items[key]["tags"] = list(dict.fromkeys([*items[key]["tags"], *tags]))
        else:
            items[key] = {"id": key, "text": text, "tags": list(dict.fromkeys(tags))}
    return list(items.values()), unknown


def _check_metadata(document: dict, where: str) -> None:
    """Metadata is not used, but as in Annif it must be an object of strings."""
    if "metadata" not in document:
        return
    metadata = document["metadata"]
    if not isinstance(metadata, dict):
        raise Problem(400, f"{_json_type(metadata)} is not of type 'object' - '{where}.metadata'")
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise Problem(400, f"{_json_type(value)} is not of type 'string' - '{where}.metadata.{key}'")


def _text(value: Any, where: str, max_chars: int) -> str:
    if not isinstance(value, str):
        raise Problem(400, f"{_json_type(value)} is not of type 'string' - '{where}'")
    if len(value) > max_chars:
        raise Problem(413, f"'{where}' has {len(value)} characters, more than the limit of {max_chars}")
    return value


def _json_type(value: Any) -> str:
    return (
        repr(value) if isinstance(value, str | int | float | bool) or value is None else type(value).__name__
    )
