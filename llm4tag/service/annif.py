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

The bodies (and suggest-batch's query parameters) are validated by the pydantic models below, which
OpenAPI also documents; errors answer as Annif's do, ``application/problem+json`` with ``status``,
``title`` and ``detail``: "<what is wrong> - '<where>'", worded as llm4tag/item_rules.py words every
problem with an item, except where Annif's own tests pin Annif's words (more than 32 documents).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import parse_qs

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from llm4tag.config_section import Section
from llm4tag.item_rules import TOO_LARGE, problem_message
from llm4tag.service.refusal import Refusal
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


# The request bodies as Annif's annif.yaml has them, with the limits we add (the text's characters and
# learn's documents, from service.limits, come in as validation context: 413).
def _optional_not_null(schema: dict) -> None:
    # An optional field is absent, not null (as in annif.yaml): its None default stays out of the schema.
    for prop in schema.get("properties", {}).values():
        if "default" in prop and prop["default"] is None:
            del prop["default"]


class _Body(BaseModel):
    model_config = ConfigDict(json_schema_extra=_optional_not_null)


def _within_limit(text: str | None, info: ValidationInfo) -> str | None:
    limit = (info.context or {}).get("max_chars")
    if text is not None and limit is not None and len(text) > limit:
        raise PydanticCustomError(
            TOO_LARGE,
            "has {count} characters, more than the limit of {limit}",
            {"count": len(text), "limit": limit},
        )
    return text


class SuggestParameters(_Body):
    """``limit``, ``threshold`` and ``language``: suggest's form fields, suggest-batch's query."""

    limit: int = Field(DEFAULT_LIMIT, ge=0, description="maximum number of results to return")
    threshold: float = Field(
        None,
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="minimum score, below which results are not returned; absent: the project's own "
        "output (the tags it keeps: its fitted number and cut, see output in GET /v1/projects/{id})",
    )
    language: StrictStr = Field(
        None, description="language of the subject labels: the vocabulary's; another is refused (400)"
    )

    @model_validator(mode="before")
    @classmethod
    def _blank_is_absent(cls, data: Any) -> Any:
        # A form or query string sends "limit=" for a parameter left empty: its default, as in Annif.
        # (Only the parameters: an empty text is a text, which has no suggestions.)
        if isinstance(data, Mapping):
            return {k: v for k, v in data.items() if not (k in PARAMETERS and v == "")}
        return data


PARAMETERS = frozenset(SuggestParameters.model_fields)


class SuggestForm(SuggestParameters):
    """Annif's suggest form (``application/x-www-form-urlencoded``)."""

    text: str = Field(description="input text (an empty or blank text has no suggestions)")

    _text_within_limit = field_validator("text")(_within_limit)


class Document(_Body):
    text: StrictStr
    document_id: StrictStr | None = None
    metadata: dict[str, StrictStr] = Field(None, description="accepted and not used")

    _text_within_limit = field_validator("text")(_within_limit)


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

    _text_within_limit = field_validator("text")(_within_limit)


class LearnBody(RootModel[list[IndexedDocument]]):
    """Annif's learn body: documents with their subjects, recorded as feedback."""

    @model_validator(mode="before")
    @classmethod
    def _documents_within_limit(cls, data: Any, info: ValidationInfo) -> Any:
        limit = (info.context or {}).get("max_documents")
        if isinstance(data, list) and limit is not None and len(data) > limit:
            raise PydanticCustomError(
                TOO_LARGE,
                "{count} documents, more than the limit of {limit}",
                {"count": len(data), "limit": limit},
            )
        return data


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


class Problem(Refusal):
    """An Annif error answer (RFC 7807 problem details, as Connexion writes them for Annif): the
    message is its detail, ``title`` its title (by default the status's)."""

    def __init__(
        self,
        message: str,
        field: str = "",
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        title: str | None = None,
    ):
        super().__init__(message, field, status, headers)
        self.title = title or TITLES.get(self.status, "Error")

    @property
    def detail(self) -> str:
        return self.message

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
    ``limit``, those at or above ``threshold``, at least ``min_tags`` (None: the store has no ranker;
    the LLM keeps what its judgment reaches the threshold with)."""
    if not plan.ranked:
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


def parse_params(values: Mapping[str, str], subjects: Subjects) -> SuggestParameters:
    """``limit``, ``threshold`` and ``language`` from a form or a query string."""
    return _language(_validated(SuggestParameters, values, {}), subjects)


def parse_form(raw: bytes) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (the last value of a repeated field wins)."""
    try:
        fields = parse_qs(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError as exc:
        raise Problem(f"the form is not UTF-8: {exc}", status=400) from exc
    return {name: values[-1] for name, values in fields.items()}


def parse_suggest(
    form: Mapping[str, str], subjects: Subjects, max_chars: int
) -> tuple[str, SuggestParameters]:
    parsed = _language(_validated(SuggestForm, form, {"max_chars": max_chars}), subjects)
    return parsed.text, parsed


def parse_batch(body: Any, max_chars: int) -> list[tuple[str, str | None]]:
    """(text, document_id) of each document of a suggest-batch body."""
    batch = _validated(SuggestBatch, body, {"max_chars": max_chars})
    return [(document.text, document.document_id) for document in batch.documents]


def parse_learn(
    body: Any, subjects: Subjects, max_chars: int, max_documents: int
) -> tuple[list[dict], list[str]]:
    """Feedback items (``id``, ``text``, ``tags``) of a learn body, and the subject URIs outside the
    vocabulary. As Annif does, those URIs are left out (its learn has no 400 answer), and documents
    without text or without a known subject are skipped (after the whole body is validated: a skipped
    document is still a valid one)."""
    documents = _validated(LearnBody, body, {"max_chars": max_chars, "max_documents": max_documents}).root
    items: dict[str, dict] = {}
    unknown: list[str] = []
    for document in documents:
        text = document.text or ""
        if not text.strip():
            continue
        tags = []
        for subject in document.subjects or ():
            tag = subjects.tag_of(subject.uri)
            if tag is None:
                unknown.append(subject.uri)
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


def _validated(model: type[BaseModel], data: Any, context: dict) -> Any:
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise annif_problem(exc) from None


def annif_problem(exc: ValidationError) -> Problem:
    """The first problem of a validation error as Annif's problem details: 413 for a size limit, else
    400, the detail "<what is wrong> - '<where>'" (the path dotted, as Connexion writes it)."""
    error = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in error["loc"])
    if error["type"] == "too_long" and where == "documents":
        message = "too many items"  # Annif's words, which its own tests pin
    else:
        message = problem_message(error)
    return Problem(
        f"{message} - '{where}'" if where else message, status=413 if error["type"] == TOO_LARGE else 400
    )


def _language(parsed: Any, subjects: Subjects) -> Any:
    if parsed.language is not None and parsed.language != subjects.language:
        raise Problem(f'language "{parsed.language}" not supported by vocabulary', status=400)
    return parsed
