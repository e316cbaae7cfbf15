"""llm4tag's own routes, on the ingress replica's public API (deployments/ingress.py).

POST /v1/tag           one item or {"items": [...]}: tags with confidence and provenance, within the
                       request's deadline (service.deadline_s, or shorter by its X-Deadline-Ms header):
                       refused at once (503 + Retry-After) when it cannot be answered in time
                       (llm4tag/service/admission.py), answered 504 when it still runs past it
POST /v1/feedback      corrected annotations: durable graph edges + retrievable samples
POST /v1/admin/adapter swap a LoRA adapter in without a restart
POST /v1/admin/tags    add tags to the vocabulary: durable, and recalled by every replica from its
                       next answer on (as `llm4tag vocab add`)
GET  /v1/tags?q=       vocabulary search
GET  /healthz          the ingress answers;   GET /readyz   every stage answers (and what it holds)
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

from fastapi import APIRouter, Query, Request

from deployments.route_kit import KEYED, LIMIT_BOUNDS, QUERY_BOUNDS, Replica, refusals
from llm4tag.engines.adapters import OutsideAdaptersRoot, check_adapter, under_adapters_root
from llm4tag.errors import ModelError
from llm4tag.finetune.registry import write_active
from llm4tag.service.admission import DEADLINE_HEADER, request_deadline_s
from llm4tag.service.http_schema import (
    AdapterRequest,
    FeedbackResponseOut,
    NewTags,
    RequestSchema,
    TagResponseOut,
    parse_adapter_request,
    parse_new_tags,
)
from llm4tag.service.refusal import Refusal

router = APIRouter()
ERRORS = refusals(400, 401, 403, 409, 413, 415, 422, 503, 504)
# The request models of the default configuration, for the OpenAPI page; each replica validates with
# the models of its own configuration (texts.item_fields).
DOCUMENTED = RequestSchema()


@router.post(
    "/v1/tag",
    response_model=TagResponseOut,
    response_model_exclude_unset=True,
    responses=ERRORS,
    openapi_extra=RequestSchema.body(DOCUMENTED.tag_request),
    summary="Tag one item or a batch",
)
async def tag(ingress: Replica, request: Request):
    started = time.perf_counter()
    if ingress.service.auth.reads:
        ingress.authorize(request, None)
    budget_s = request_deadline_s(request.headers.get(DEADLINE_HEADER), ingress.service.deadline_s)
    parsed = ingress.schema.parse_tag(await ingress.json_body(request), ingress.limits)
    timings: dict[str, float] = {}
    rows = await ingress.tag(
        parsed.items,
        parsed.candidates,
        parsed.dropped,
        "online",
        timings,
        parsed.unnamed,
        budget_s - (time.perf_counter() - started),
    )
    timings["total"] = (time.perf_counter() - started) * 1000
    for stage, ms in timings.items():
        ingress.metrics.stage_latency.observe(ms, tags={"stage": stage})
    ingress.metrics.requests.inc(tags={"route": "/v1/tag", "status": "200"})
    return {"items": rows, "timings_ms": {k: round(v, 2) for k, v in timings.items()}}


@router.post(
    "/v1/feedback",
    response_model=FeedbackResponseOut,
    responses=ERRORS,
    dependencies=[KEYED],
    openapi_extra=RequestSchema.body(DOCUMENTED.feedback_request),
    summary="Record corrected annotations (durable before the answer)",
)
async def feedback(ingress: Replica, request: Request):
    sender = ingress.authorize(request, "write")
    await ingress.follow_vocabulary()  # feedback may use a tag added to the store since
    parsed = ingress.parse_feedback(await ingress.json_body(request))
    # With an X-Review-Entry header the feedback also decides that review queue entry.
    answer = await ingress.review.decided(request, parsed, sender)
    ingress.metrics.requests.inc(tags={"route": "/v1/feedback", "status": "200"})
    return answer


@router.post(
    "/v1/admin/adapter",
    responses=ERRORS,
    dependencies=[KEYED],
    openapi_extra=RequestSchema.body(AdapterRequest),
    summary="Swap a LoRA adapter in without a restart",
)
async def set_adapter(ingress: Replica, request: Request):
    """Body {"role": "generator"|"calibrator", "path": adapter folder or null (base model)}: the
    adapters file (llm.adapters_file) is rewritten, and every replica of the stage loads it between
    batches; requests in flight are answered by the old adapter or the new one, none fails.
    Only folders under service.adapters_root are accepted."""
    ingress.authorize(request, "admin")
    parsed = parse_adapter_request(await ingress.json_body(request))
    role, path = parsed.role, parsed.path
    calls, settings, service = ingress.calls, ingress.settings, ingress.service
    stage = calls.generator if role == "generator" else calls.calibrator
    if stage is None and settings.judges_with_generation:
        stage = calls.generator  # the Generator replicas judge (and follow the calibrator adapter)
    if stage is None:
        raise Refusal("this app runs no calibrator", "role", 422)
    if not settings.llm.adapters_file:
        raise Refusal("set llm.adapters_file to swap adapters over HTTP", "role", 409)
    if path is not None:
        if service.adapters_root is None:
            raise Refusal("set service.adapters_root to swap adapters over HTTP", "path", 409)
        try:
            path = str(under_adapters_root(service.adapters_root, path))
        except OutsideAdaptersRoot as exc:
            raise Refusal(str(exc), "path", 403) from None
        try:
            await asyncio.to_thread(check_adapter, role, path)
        except ModelError as exc:
            raise Refusal(str(exc), "path", 422) from exc
    await asyncio.to_thread(write_active, settings.llm.adapters_file, {role: path}, "admin")
    # One replica loads it now (and confirms); the others load it before their next batch. A stage
    # scaled to zero is not woken for it: its replicas read the file when they start.
    deployment = "Generator" if stage is calls.generator else "Calibrator"
    if deployment in await ingress.idle_llm_stages():
        state = {"replicas": 0, "llm": "scaled to zero: a replica reads the adapter file when it starts"}
    else:
        state = await calls.call(f"adapter-{role}", stage.sync_adapters, role)
    ingress.metrics.requests.inc(tags={"route": "/v1/admin/adapter", "status": "200"})
    return {"role": role, "path": path, "replica": state}


@router.post(
    "/v1/admin/tags",
    responses=ERRORS,
    dependencies=[KEYED],
    openapi_extra=RequestSchema.body(NewTags),
    summary="Add tags to the vocabulary of the running service",
)
async def add_tags(ingress: Replica, request: Request):
    """Body [{"tag": name, "description": text or null}, ...]: the tags are encoded and written to the
    store's journal (durable before the answer), their descriptions to its knowledge base; the answer
    is `llm4tag vocab add`'s summary. The next tagging on any replica can recall them. A tag already in
    the vocabulary is refused (409) naming it, and then none is added."""
    ingress.authorize(request, "admin")
    tags = parse_new_tags(await ingress.json_body(request), ingress.limits)
    summary = await ingress.add_tags(tags)
    ingress.metrics.requests.inc(tags={"route": "/v1/admin/tags", "status": "200"})
    return summary


@router.get("/v1/tags", summary="Search the tag vocabulary", responses=refusals(401, 403, 422))
async def search(
    ingress: Replica,
    request: Request,
    q: Annotated[str, Query(json_schema_extra=QUERY_BOUNDS)] = "",
    limit: Annotated[int, Query(json_schema_extra=LIMIT_BOUNDS)] = 20,
):
    if ingress.service.auth.reads:
        ingress.authorize(request, None)
    if not 1 <= limit <= ingress.limits.max_search_results:
        raise Refusal(f"must be within 1..{ingress.limits.max_search_results}", "limit", 422)
    vocabulary = await ingress.follow_vocabulary()
    # In a thread: a long vocabulary scan must not hold up the event loop every request shares.
    found = await asyncio.to_thread(vocabulary.search.search, q, limit)
    return {"query": q, "tags": found, "vocabulary_size": len(vocabulary.tags)}


@router.get("/healthz", summary="The ingress is up")
async def healthz():
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Every stage answers; what each holds",
    responses={503: {"description": "A stage does not answer: ready false, and the error"}},
)
async def readyz(ingress: Replica):
    return await ingress.readiness()
