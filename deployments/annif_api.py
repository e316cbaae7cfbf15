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
from collections import defaultdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from deployments._common import KEYED, answered, current_replica, problems
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
Replica = Annotated[Any, Depends(current_replica)]
API_VERSION = "0.1.0"


class AnnifRoutes:
    """The Annif project's state and its tagging; the ingress class inherits them, the routes below reach
    them through the replica."""

    annif: AnnifSettings
    subjects: Subjects

    def _init_annif(self, settings: AnnifSettings, vocabulary: dict, modified: str | None) -> None:
        self.annif = settings
        meta = (vocabulary.get("meta") or {}).get("vocabulary") or {}
        self.subjects = Subjects.of(
            vocabulary["tags"],
            meta.get("tags"),
            self.annif.language or meta.get("language"),
            self.annif.uri_base,
        )
        self.annif_modified = modified
        up: dict[str, list[str]] = defaultdict(list)
        down: dict[str, list[str]] = defaultdict(list)
        for narrower, broader in vocabulary.get("broader") or ():
            up[narrower].append(broader)
            down[broader].append(narrower)
        self.hierarchy_up, self.hierarchy_down = dict(up), dict(down)

    def _project_or_404(self, project_id: str) -> None:
        if project_id != self.annif.project_id:
            raise Problem(404, f"Project '{project_id}' not found", "Project not found")

    async def _suggest(self, documents: list[str], limit: int, threshold: float | None) -> list[list[dict]]:
        """Tag the documents through the service (all judged tags, so that ``threshold`` cuts; None:
        the tags the store keeps)."""
        texts = [d for d in documents if d.strip()]
        results: dict[str, list[dict]] = {}
        if texts:
            items = [Item(id=item_id(t), text=t) for t in dict.fromkeys(texts)]
            rows = await self._tag(items, with_candidates=False, with_dropped=True, origin="annif")
            results = {row["id"]: suggestions(row, self.subjects, limit, threshold) for row in rows}
        return [results.get(item_id(d), []) if d.strip() else [] for d in documents]


# -- routes (module functions: the ingress replica comes in as a dependency; refusals go to the
# ingress's one handler as Annif's problem details)


@router.get("/v1/", summary="Annif: API information", tags=["annif"])
async def annif_info():
    return {"title": "llm4tag (Annif-compatible REST API)", "version": API_VERSION}


@router.get("/v1/vocabs", summary="Annif: vocabularies", tags=["annif"])
async def annif_vocabs(ingress: Replica):
    return {"vocabs": [vocabulary(ingress.annif, ingress.subjects)]}


@router.get("/v1/projects", summary="Annif: projects", tags=["annif"])
async def annif_projects(ingress: Replica):
    return {"projects": [project(ingress.annif, ingress.subjects, ingress.annif_modified)]}


@router.get(
    "/v1/projects/{project_id}", summary="Annif: one project", tags=["annif"], responses=problems(404)
)
@answered("/v1/projects/{id}", annif=True)
async def annif_project(ingress: Replica, project_id: str):
    ingress._project_or_404(project_id)
    plan = ingress.routing.current[1] if ingress.routing is not None else None
    return project(ingress.annif, ingress.subjects, ingress.annif_modified, output_rule(plan))


@router.post(
    "/v1/projects/{project_id}/suggest",
    summary="Annif: suggest subjects for a text",
    tags=["annif"],
    responses=problems(400, 404, 413, 503, 504),
    openapi_extra=RequestSchema.body(SuggestForm, FORM_MEDIA_TYPE),
)
@answered("/v1/projects/{id}/suggest", annif=True)
async def annif_suggest(ingress: Replica, project_id: str, request: Request):
    ingress._project_or_404(project_id)
    text, params = parse_suggest(
        parse_form(await ingress._body(request)), ingress.subjects, ingress.limits.max_text_chars
    )
    (results,) = await ingress._suggest([text], params.limit, params.threshold)
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
@answered("/v1/projects/{id}/suggest-batch", annif=True)
async def annif_suggest_batch(ingress: Replica, project_id: str, request: Request):
    ingress._project_or_404(project_id)
    params = parse_params(dict(request.query_params), ingress.subjects)
    documents = parse_batch(_annif_json(await ingress._body(request)), ingress.limits.max_text_chars)
    results = await ingress._suggest([t for t, _ in documents], params.limit, params.threshold)
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
@answered("/v1/projects/{id}/learn", annif=True)
async def annif_learn(ingress: Replica, project_id: str, request: Request):
    sender = ingress._authorize(request, "write")  # learning writes feedback
    ingress._project_or_404(project_id)
    if not ingress.annif.learn:
        raise Problem(
            403,
            f"Project '{project_id}' is not configured to allow learning via API",
            "Learning not allowed",
        )
    items, unknown = parse_learn(
        _annif_json(await ingress._body(request)),
        ingress.subjects,
        ingress.limits.max_text_chars,
        ingress.limits.max_items,
    )
    if items:
        await ingress._write_feedback(ingress._parse_feedback({"items": items}), sender=sender)
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
        raise Problem(400, "Request body is JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise Problem(400, f"Request body is not valid JSON: {exc}") from exc
