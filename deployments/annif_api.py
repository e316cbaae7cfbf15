"""Annif-compatible REST endpoints, mixed into the ingress beside llm4tag's own (see
llm4tag/service/annif.py for the mapping; Annif's OpenAPI: tests/annif/annif.yaml).

GET  /v1/                                  API information
GET  /v1/vocabs                            the vocabulary
GET  /v1/projects, /v1/projects/{id}       the one project this service is
POST /v1/projects/{id}/suggest             form: text, limit, threshold, language
POST /v1/projects/{id}/suggest-batch       JSON {documents: [{text, document_id?}]} (<= 32), query limit...
POST /v1/projects/{id}/learn               JSON [{text, subjects: [{uri}]}] -> feedback (durable), 204
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from deployments.route_kit import KEYED, Replica, problems
from llm4tag.data import Item
from llm4tag.service.annif import (
    FORM_MEDIA_TYPE,
    AnnifSettings,
    LearnBody,
    Problem,
    Subjects,
    SuggestBatch,
    SuggestForm,
    item_id,
    output_rule,
    parse_batch,
    parse_form,
    parse_learn,
    parse_params,
    parse_suggest,
    project,
    suggestions,
    vocabulary,
)
from llm4tag.service.http_schema import RequestSchema

log = logging.getLogger("ray.serve")
router = APIRouter()
API_VERSION = "0.1.0"


class AnnifProject:
    """The one Annif project this service is: its settings and its tagging through the replica's
    public API (``ingress.tag``); subjects come from the replica's vocabulary view."""

    def __init__(self, ingress, settings: AnnifSettings):
        self.ingress = ingress
        self.settings = settings

    @property
    def subjects(self) -> Subjects:
        return self.ingress.vocabulary.subjects

    def describe(self) -> dict:
        plan = self.ingress.routing.current[1]
        return project(self.settings, self.subjects, self.ingress.vocabulary.modified, output_rule(plan))

    def check(self, project_id: str) -> None:
        if project_id != self.settings.project_id:
            raise Problem(f"Project '{project_id}' not found", status=404, title="Project not found")

    async def suggest(self, documents: list[str], limit: int, threshold: float | None) -> list[list[dict]]:
        """Tag the documents through the service: with ``threshold``, all judged tags (so that it cuts);
        None: the tags the store keeps."""
        texts = [d for d in documents if d.strip()]
        results: dict[str, list[dict]] = {}
        if texts:
            items = [Item(id=item_id(t), text=t) for t in dict.fromkeys(texts)]
            rows = await self.ingress.tag(items, with_candidates=False, with_dropped=True, origin="annif")
            results = {row["id"]: suggestions(row, self.subjects, limit, threshold) for row in rows}
        return [results.get(item_id(d), []) if d.strip() else [] for d in documents]


# -- routes (module functions: the ingress replica comes in as a dependency; the app's one handler
# answers their refusals as Annif's problem details, since they carry the "annif" tag)


@router.get("/v1/", summary="Annif: API information", tags=["annif"])
async def annif_info():
    return {"title": "llm4tag (Annif-compatible REST API)", "version": API_VERSION}


@router.get("/v1/vocabs", summary="Annif: vocabularies", tags=["annif"])
async def annif_vocabs(ingress: Replica):
    await ingress.follow_vocabulary()  # tags added to the store since are subjects too
    return {"vocabs": [vocabulary(ingress.annif.settings, ingress.annif.subjects)]}


@router.get("/v1/projects", summary="Annif: projects", tags=["annif"])
async def annif_projects(ingress: Replica):
    return {"projects": [ingress.annif.describe()]}


@router.get(
    "/v1/projects/{project_id}", summary="Annif: one project", tags=["annif"], responses=problems(404)
)
async def annif_project(ingress: Replica, project_id: str):
    ingress.annif.check(project_id)
    return ingress.annif.describe()


@router.post(
    "/v1/projects/{project_id}/suggest",
    summary="Annif: suggest subjects for a text",
    tags=["annif"],
    responses=problems(400, 404, 413, 503, 504),
    openapi_extra=RequestSchema.body(SuggestForm, FORM_MEDIA_TYPE),
)
async def annif_suggest(ingress: Replica, project_id: str, request: Request):
    await ingress.follow_vocabulary()  # tags added to the store since are subjects too
    ingress.annif.check(project_id)
    text, params = parse_suggest(
        parse_form(await ingress.body(request)), ingress.annif.subjects, ingress.limits.max_text_chars
    )
    (results,) = await ingress.annif.suggest([text], params.limit, params.threshold)
    return {"results": results}


@router.post(
    "/v1/projects/{project_id}/suggest-batch",
    summary="Annif: suggest subjects for up to 32 documents",
    tags=["annif"],
    responses=problems(400, 404, 413, 503, 504),
    openapi_extra={
        **RequestSchema.body(SuggestBatch),
        **RequestSchema.query(SuggestForm, ["limit", "threshold", "language"]),
    },
)
async def annif_suggest_batch(ingress: Replica, project_id: str, request: Request):
    await ingress.follow_vocabulary()  # tags added to the store since are subjects too
    ingress.annif.check(project_id)
    params = parse_params(dict(request.query_params), ingress.annif.subjects)
    documents = parse_batch(_annif_json(await ingress.body(request)), ingress.limits.max_text_chars)
    results = await ingress.annif.suggest([t for t, _ in documents], params.limit, params.threshold)
    return [
        {"results": found, "document_id": document_id}
        for found, (_, document_id) in zip(results, documents, strict=True)
    ]


@router.post(
    "/v1/projects/{project_id}/learn",
    summary="Annif: learn from indexed documents (recorded as feedback)",
    status_code=204,
    tags=["annif"],
    dependencies=[KEYED],
    responses=problems(400, 401, 403, 404, 413, 503),
    openapi_extra=RequestSchema.body(LearnBody),
)
async def annif_learn(ingress: Replica, project_id: str, request: Request):
    await ingress.follow_vocabulary()  # tags added to the store since are subjects too
    sender = ingress.authorize(request, "write")  # learning writes feedback
    ingress.annif.check(project_id)
    if not ingress.annif.settings.learn:
        raise Problem(
            f"Project '{project_id}' is not configured to allow learning via API",
            status=403,
            title="Learning not allowed",
        )
    items, unknown = parse_learn(
        _annif_json(await ingress.body(request)),
        ingress.annif.subjects,
        ingress.limits.max_text_chars,
        ingress.limits.max_items,
    )
    if items:
        await ingress.write_feedback(ingress.parse_feedback({"items": items}), sender=sender)
    # Unknown subject URIs are left out as Annif leaves them out; the header says how many.
    headers = {"X-Unknown-Subjects": str(len(unknown))} if unknown else None
    if unknown:
        log.warning(
            "learn: %d subject URI(s) outside the vocabulary left out, e.g. <%s>", len(unknown), unknown[0]
        )
    return Response(status_code=204, media_type="application/json", headers=headers)


def _annif_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except RecursionError:
        raise Problem("Request body is JSON nested too deeply", status=400) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise Problem(f"Request body is not valid JSON: {exc}", status=400) from exc
