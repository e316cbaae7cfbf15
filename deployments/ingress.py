"""The HTTP ingress: validates requests, runs the stage flow over the stage deployments, answers with
tags + provenance.

POST /v1/tag        one item or {"items": [...]}: tags with confidence and provenance, within the
                    request's deadline (service.deadline_s, or shorter by its X-Deadline-Ms header):
                    refused at once (503 + Retry-After) when it cannot be answered in time
                    (llm4tag/service/admission.py), answered 504 when it still runs past it
POST /v1/feedback   corrected annotations: durable graph edges + retrievable samples
GET  /v1/tags?q=    vocabulary search
GET  /healthz       the ingress answers;   GET /readyz   every stage answers (and what it holds)

Beside them: the review UI and queue (deployments/review_api.py) and Annif's API
(deployments/annif_api.py): their routers are included in this app, and this class inherits the state
and hooks their routes use.

The request shapes are llm4tag/service/http_schema.py's models (they validate and document), the stage order
is llm4tag/flow.py's (the in-process pipeline runs the same flow), and one exception handler
(``answers``) turns every refusal into ``{"error", "field"}`` with its status.

No ``from __future__ import annotations`` here: FastAPI reads the route signatures' annotations
(``request: Request``) in the replica, from a pickled copy of the app, where strings would not resolve.
For the same reason every module-level name the routes use is defined above the class: Serve pickles
the app (and the routes with the globals they see) while this module is still being imported.
"""

import asyncio
import functools
import logging
import time
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from deployments._common import (
    KEYED,
    LIMIT_BOUNDS,
    QUERY_BOUNDS,
    REFUSALS,
    Overloaded,
    Refused,
    invalid_parameter,
    refusals,
)
from deployments.annif_api import AnnifRoutes
from deployments.annif_api import router as annif_router
from deployments.review_api import ReviewRoutes
from deployments.review_api import router as review_router
from deployments.serve_metrics import ServiceMetrics
from graph_store import shard_of
from llm4tag import flow
from llm4tag.calibrator import judges_in_context
from llm4tag.config import Settings
from llm4tag.data import Item
from llm4tag.engines.adapters import OutsideAdaptersRoot, check_adapter, under_adapters_root
from llm4tag.errors import ModelError, PromptTooLong
from llm4tag.finetune.registry import write_active
from llm4tag.ranking.store_routing import FollowedRouting
from llm4tag.service.admission import DEADLINE_HEADER, Admission, request_deadline_s
from llm4tag.service.annif import PROBLEM_MEDIA_TYPE, AnnifSettings, Problem
from llm4tag.service.auth import ApiKeys, AuthError
from llm4tag.service.http_schema import (
    AdapterRequest,
    FeedbackRequest,
    FeedbackResponseOut,
    RequestError,
    RequestSchema,
    TagResponseOut,
    decode_json,
    parse_adapter_request,
    require_json,
    without_paths,
)
from llm4tag.service.review_queue import ReviewError, ReviewSettings
from llm4tag.service.settings import ServiceConfig
from llm4tag.service.tag_search import TagSearch

log = logging.getLogger("ray.serve")
app = FastAPI(
    title="llm4tag",
    description="Automatic tagging after LLM4Tag: graph recall, knowledge-enhanced generation, calibration.",
    version="0.1.0",
)
ERRORS = refusals(400, 401, 403, 409, 413, 415, 422, 503, 504)
RETRYABLE = (ActorDiedError, ActorUnavailableError, RayActorError, DeploymentUnavailableError)
# The request models of the default configuration, for the OpenAPI page; each replica validates with
# the models of its own configuration (texts.item_fields).
DOCUMENTED = RequestSchema()
app.include_router(review_router)
app.include_router(annif_router)
app.add_exception_handler(RequestValidationError, invalid_parameter)

# Calls that write: once started they run to the end, whatever the request's deadline or its client.
WRITES = (flow.Record, flow.RecordSamples, flow.Writes)

# The stage a flow call's time is reported as (timings_ms, the stage_latency_ms metric).
STAGE_OF = {
    flow.Encode: "encode",
    flow.Search: "recall",
    flow.Rank: "rank",
    flow.Generate: "generate",
    flow.Calibrate: "calibrate",
    flow.Record: "write_back",
    flow.Writes: "write",
}


def answers(route: str):
    """The one exception handler: a route wrapped in it answers every refusal with
    ``{"error", "field"}`` and its status (:meth:`IngressDeployment.refusal`). A decorator rather than
    ``app.exception_handler``, because Serve runs a pickled copy of the app, where a handler would not
    reach the replica's settings and metrics."""

    def wrap(method):
        @functools.wraps(method)
        async def answer(self, *args, **kwargs):
            try:
                return await method(self, *args, **kwargs)
            except REFUSALS as exc:
                return self.refusal(route, exc)

        return answer

    return wrap


@serve.deployment(
    name="Ingress",
    ray_actor_options={"num_cpus": 0.25},
    max_ongoing_requests=128,
    max_queued_requests=256,
)
@serve.ingress(app)
class IngressDeployment(ReviewRoutes, AnnifRoutes):
    def __init__(
        self,
        encoder,
        shards: list,
        generator,
        calibrator,
        vocabulary: dict,
        settings: Settings,
        service: ServiceConfig,
        store: str | None = None,
        review: ReviewSettings | None = None,
        annif: AnnifSettings | None = None,
        encoder_id: str | None = None,
    ):
        self.encoder, self.shards, self.generator, self.calibrator = encoder, shards, generator, calibrator
        self.settings = settings
        self.service = service
        self.limits = self.service.limits
        self.tags: list[str] = vocabulary["tags"]
        self.descriptions: list[str | None] = vocabulary["descriptions"]
        self.vocabulary = frozenset(self.tags)
        self.tag_search = TagSearch(self.tags, self.descriptions, self.limits.max_query_chars)
        self.schema = RequestSchema([f for f in self.settings.texts.item_fields if f != "text"])
        # Judgments that continue the generation conversations are made by the Generator replica that
        # computed them, in the same call (deployments/app.py binds no Calibrator then).
        self.judges_with_generation = self.settings.pipeline.calibrate and judges_in_context(
            self.settings.llm, self.settings.prompts
        )
        self.metrics = ServiceMetrics()
        self.admission = Admission(batch_size=self.service.generator.max_batch_size)
        # Read here, in the replica, from its node's environment or secret file: never an argument of
        # the application (Serve keeps those in its config, which its dashboard shows).
        self.keys = ApiKeys.load(self.service.auth) if self.service.auth.enabled else None
        # The store's ranking and routing plan, as the in-process pipeline opens them: ranked and
        # routed here, so items the ranker settles never reach the Generator deployment.
        # Followed: a refit or cascade fit of the served store is picked up without a redeploy.
        self.routing = None
        if store is not None:
            pipeline = self.settings.pipeline
            self.routing = FollowedRouting(
                store,
                encoder_id,
                route=pipeline.route,
                threshold=pipeline.threshold,
                threshold_set="threshold" in pipeline.model_fields_set,
                target_precision=pipeline.target_precision,
                num_candidates=self.settings.graph.recall.num_candidates,
            )
        self._init_review(store, review or ReviewSettings(), self.settings.pipeline.threshold)
        self._init_annif(annif or AnnifSettings(), vocabulary, vocabulary.get("modified"))

    # -- plumbing

    def refusal(self, route: str, exc: Exception) -> JSONResponse:
        """The one mapping of errors to answers: ``{"error", "field"}`` and the status (Annif's routes:
        Annif's problem details, which its clients read)."""
        headers = None
        media_type = None
        if isinstance(exc, Problem):
            status, body, media_type = exc.status, exc.body(), PROBLEM_MEDIA_TYPE
            if exc.status == 503:
                headers = {"Retry-After": str(self.service.retry_after_s)}
        elif isinstance(exc, RequestError):
            status, body = exc.status, exc.body()
        elif isinstance(exc, Refused):
            status, body, headers = exc.status, exc.body, exc.headers
        elif isinstance(exc, ReviewError):
            status, body = exc.status, {"error": str(exc), "field": exc.field}
        elif isinstance(exc, Overloaded):
            status, body = (
                503,
                {"error": f"the service is overloaded (stage {exc}); retry later", "field": "service"},
            )
            headers = {"Retry-After": str(self.service.retry_after_s)}
        elif isinstance(exc, flow.FeedbackIncomplete):
            status, body = 503, {"error": str(exc), "field": "service"}
            headers = {"Retry-After": str(self.service.retry_after_s)}
        else:
            raise exc
        self.metrics.requests.inc(tags={"route": route, "status": str(status)})
        return JSONResponse(body, status_code=status, headers=headers, media_type=media_type)

    def _authorize(self, request: Request, scope: str | None) -> str | None:
        """Refuse (401/403) unless the request carries a key with ``scope`` (None: any key); the key's
        name (None when no keys are checked)."""
        if self.keys is None:
            return None
        try:
            return self.keys.check(request.headers.get("authorization"), scope)
        except AuthError as exc:
            headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
            raise Refused(exc.status, exc.message, "authorization", headers) from None

    async def _json(self, request: Request) -> Any:
        require_json(request.headers.get("content-type"))
        return decode_json(await self._body(request))

    async def _body(self, request: Request) -> bytes:
        """The request's body, refused (413) past ``limits.max_body_bytes``."""
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limits.max_body_bytes:
            raise RequestError(
                "body", f"is {declared} bytes, more than the limit of {self.limits.max_body_bytes}", 413
            )
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > self.limits.max_body_bytes:
                raise RequestError(
                    "body", f"is more than the limit of {self.limits.max_body_bytes} bytes", 413
                )
        return bytes(raw)

    async def _call(self, stage: str, method, *args):
        """One downstream call; a replica that died mid-call is retried on another (Serve replaces it).
        A caller that gives up (deadline, client gone) cancels the call in the stage too."""
        for attempt in range(self.service.retries + 1):
            response = method.remote(*args)
            try:
                return await response
            except asyncio.CancelledError:
                response.cancel()
                raise
            except BackPressureError as exc:
                raise Overloaded(stage) from exc
            except RETRYABLE:
                if attempt == self.service.retries:
                    raise
                self.metrics.retries.inc(tags={"stage": stage})
                await asyncio.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")

    async def _item_call(self, stage: str, index: int, method, *args):
        """A call for one item of the request: a prompt that does not fit the model is that item's
        413 (the other requests of the stage's batch are answered; deployments/_batching.py)."""
        try:
            return await self._call(stage, method, *args)
        except PromptTooLong as exc:
            raise RequestError(
                f"items[{index}].text",
                "makes a prompt longer than the model's context (llm.max_model_len): shorten it",
                413,
            ) from exc

    # -- the flow's calls, answered by the stage deployments

    async def answer(self, call: flow.Call):
        if isinstance(call, flow.Encode):
            vectors = await asyncio.gather(
                *(self._call("encode", self.encoder.encode, c) for c in call.contents)
            )
            return np.stack(vectors)
        if isinstance(call, flow.Search):
            return await asyncio.gather(*(self._call("recall", s.search, call.vectors) for s in self.shards))
        if isinstance(call, flow.Rank):
            recall = self.settings.graph.recall
            rank = self.routing.current[0].models.rank
            return await asyncio.to_thread(rank, call.contents, call.vectors, call.hits, recall)
        if isinstance(call, flow.Generate):
            answered, _ = await self._generate(call)
            return answered
        if isinstance(call, flow.Calibrate):
            # A Calibrator deployment judges the item alone (figure 5): it holds no conversation.
            return await asyncio.gather(
                *(
                    self._item_call("calibrate", index, self.calibrator.judge, (content, list(tags), None))
                    for index, (content, tags) in enumerate(zip(call.contents, call.tags, strict=True))
                )
            )
        if isinstance(call, flow.Record):
            return await self._record(call)
        if isinstance(call, flow.RecordSamples):
            return await self._call("feedback", self.generator.record_samples, call.samples, call.vectors)
        if isinstance(call, flow.Writes):
            return await asyncio.gather(*(self.answer(w) for w in call.writes), return_exceptions=True)
        raise TypeError(f"no answer to {type(call).__name__}")

    async def _generate(self, call: flow.Generate) -> tuple[list, float]:
        """The Generate call's answer, and the milliseconds of it that judging took (the longest
        batch's: the items were judged in parallel batches)."""
        results = await asyncio.gather(
            *(
                self._item_call(
                    "generate",
                    index,
                    self.generator.generate,
                    {"id": i, "content": c, "vector": v, "candidates": cands},
                )
                for index, (i, c, v, cands) in enumerate(
                    zip(call.ids, call.contents, call.vectors, call.candidates, strict=True)
                )
            )
        )
        for *_, load in results:
            self.admission.observe_replica(load["replica"], load["item_s"], load["queued"])
        if not call.judge:
            return [generation for generation, *_ in results], 0.0
        if any(verdicts is None for _, verdicts, _, _ in results):
            raise AssertionError("the Generator replicas do not judge: their settings differ")
        judge_ms = 1000 * max(seconds for _, _, seconds, _ in results)
        return [(generation, verdicts) for generation, verdicts, _, _ in results], judge_ms

    async def _record(self, call: flow.Record) -> None:
        """Durable upserts in each item's owning shard (its journal is followed by every replica)."""
        groups: dict[int, list[int]] = {}
        for row, item_id in enumerate(call.ids):
            groups.setdefault(shard_of(item_id, len(self.shards)), []).append(row)
        await asyncio.gather(
            *(
                self._call(
                    "record",
                    self.shards[shard].record,
                    [call.ids[r] for r in rows],
                    call.vectors[rows],
                    [call.tags[r] for r in rows],
                    [call.texts[r] for r in rows],
                )
                for shard, rows in groups.items()
            )
        )

    async def run(self, steps, timings: dict[str, float] | None = None, deadline: float | None = None):
        """Drive a flow over the deployments, timing each stage (ms). ``deadline`` (the event loop's
        clock): a stage still running then is cancelled, with the work it queued downstream, and the
        request answered 504; writes are not cut short."""
        result = None
        loop = asyncio.get_running_loop()
        while True:
            try:
                call = steps.send(result)
            except StopIteration as stop:
                return stop.value
            started = time.perf_counter()
            judge_ms = 0.0
            if isinstance(call, WRITES):
                # Shielded: a client that goes away does not leave a write half-done.
                result = await asyncio.shield(asyncio.ensure_future(self.answer(call)))
            else:
                work = self._generate(call) if isinstance(call, flow.Generate) else self.answer(call)
                try:
                    result = await asyncio.wait_for(
                        work, None if deadline is None else max(0.0, deadline - loop.time())
                    )
                except TimeoutError:
                    raise Refused(
                        504,
                        "the request ran past its deadline; its remaining work was dropped (retry "
                        f"later, or with a longer {DEADLINE_HEADER} up to {self.service.deadline_s:g} s)",
                        DEADLINE_HEADER,
                        {"Retry-After": str(self.service.retry_after_s)},
                    ) from None
                if isinstance(call, flow.Generate):
                    result, judge_ms = result
            if timings is not None:
                stage = STAGE_OF.get(type(call), type(call).__name__.lower())
                ms = (time.perf_counter() - started) * 1000
                timings[stage] = timings.get(stage, 0.0) + ms - judge_ms
                if judge_ms:  # judged within the Generate call: the Generator's own measure splits it
                    timings["calibrate"] = timings.get("calibrate", 0.0) + judge_ms

    # -- routes

    @app.post(
        "/v1/tag",
        response_model=TagResponseOut,
        response_model_exclude_unset=True,
        responses=ERRORS,
        openapi_extra=RequestSchema.body(DOCUMENTED.tag_request),
        summary="Tag one item or a batch",
    )
    @answers("/v1/tag")
    async def tag(self, request: Request):
        started = time.perf_counter()
        if self.service.auth.reads:
            self._authorize(request, None)
        budget_s = request_deadline_s(request.headers.get(DEADLINE_HEADER), self.service.deadline_s)
        parsed = self.schema.parse_tag(await self._json(request), self.limits)
        timings: dict[str, float] = {}
        rows = await self._tag(
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
            self.metrics.stage_latency.observe(ms, tags={"stage": stage})
        self.metrics.requests.inc(tags={"route": "/v1/tag", "status": "200"})
        return {"items": rows, "timings_ms": {k: round(v, 2) for k, v in timings.items()}}

    async def _tag(
        self,
        items: list[Item],
        with_candidates: bool,
        with_dropped: bool,
        origin: str,
        timings: dict[str, float] | None = None,
        unnamed: frozenset[str] = frozenset(),
        budget_s: float | None = None,
    ) -> list[dict]:
        """The tag flow over the deployments (/v1/tag, Annif's suggest); the uncertain tags enter the
        review queue, so rows carry the dropped tags until it has seen them. ``unnamed``: ids the
        service gave (never written back). ``budget_s``: the seconds left of the request's deadline
        (None: service.deadline_s)."""
        budget_s = self.service.deadline_s if budget_s is None else budget_s
        verdict = self.admission.decide(len(items), budget_s)
        if verdict.too_large:
            raise Refused(
                413,
                f"{len(items)} item(s) take about {verdict.alone_s:.1f} s here even with nothing ahead, "
                f"more than the deadline ({budget_s:.1f} s left): send fewer items per request",
                "items",
            )
        if not verdict.admitted:
            raise Refused(
                503,
                f"the service cannot tag {len(items)} item(s) within the deadline ({budget_s:.1f} s "
                f"left; about {verdict.wait_s:.1f} s of work is ahead): retry later or elsewhere",
                DEADLINE_HEADER,
                {"Retry-After": str(verdict.retry_after_s)},
            )
        timings = {} if timings is None else timings
        if self.routing is not None and self.routing.due():
            await asyncio.to_thread(self.routing.refresh)
        started = time.perf_counter()
        held = self.admission.admit(len(items))
        try:
            tagged = await self._run_tag(items, with_candidates, timings, unnamed, budget_s)
        finally:
            self.admission.release(held)
        llm_ms = timings.get("generate", 0.0) + (
            timings.get("calibrate", 0.0) if self.judges_with_generation else 0.0
        )
        other_s = max(0.0, time.perf_counter() - started - llm_ms / 1000)
        self.admission.observe_request(len(items), tagged.sent_to_llm, other_s)
        self._observe(tagged)
        await self._review_enqueue(items, tagged.rows, origin)
        if not with_dropped:
            for row in tagged.rows:
                row.pop("dropped", None)
        return tagged.rows

    async def _run_tag(
        self,
        items: list[Item],
        with_candidates: bool,
        timings: dict[str, float],
        unnamed: frozenset[str],
        budget_s: float,
    ) -> flow.Tagged:
        return await self.run(
            flow.tag_flow(
                items,
                item_fields=self.settings.texts.item_fields,
                tag_names=self.tags,
                recall=self.settings.graph.recall,
                calibrate=self.calibrator is not None or self.judges_with_generation,
                write_back=self.settings.pipeline.write_back,
                judge_with_generation=self.judges_with_generation,
                with_candidates=with_candidates,
                with_dropped=True,
                unnamed=unnamed,
                plan=self.routing.current[1] if self.routing is not None else None,
            ),
            timings,
            asyncio.get_running_loop().time() + budget_s,
        )

    def _observe(self, tagged: flow.Tagged) -> None:
        for cands in tagged.candidates:
            self.metrics.candidates.observe(len(cands))
        for verdicts in tagged.verdicts:
            for verdict in verdicts:
                if verdict.confidence == verdict.confidence:
                    self.metrics.confidence.observe(verdict.confidence)
                (self.metrics.tags_kept if verdict.kept else self.metrics.tags_dropped).inc()
        self.metrics.items_tagged.inc(len(tagged.rows))
        if tagged.sent_to_llm is not None:
            if tagged.sent_to_llm:
                self.metrics.items_routed.inc(tagged.sent_to_llm, tags={"to": "llm"})
            if len(tagged.rows) - tagged.sent_to_llm:
                self.metrics.items_routed.inc(len(tagged.rows) - tagged.sent_to_llm, tags={"to": "ranker"})

    @app.post(
        "/v1/feedback",
        response_model=FeedbackResponseOut,
        responses=ERRORS,
        dependencies=[KEYED],
        openapi_extra=RequestSchema.body(DOCUMENTED.feedback_request),
        summary="Record corrected annotations (durable before the answer)",
    )
    @answers("/v1/feedback")
    async def feedback(self, request: Request):
        sender = self._authorize(request, "write")
        parsed = self._parse_feedback(await self._json(request))
        # With an X-Review-Entry header the feedback also decides that review queue entry.
        answer = await self._review_decided(request, parsed, sender)
        self.metrics.requests.inc(tags={"route": "/v1/feedback", "status": "200"})
        return answer

    def _parse_feedback(self, body: Any) -> FeedbackRequest:
        return self.schema.parse_feedback(body, self.vocabulary, self.limits)

    async def _write_feedback(
        self, parsed: FeedbackRequest, sender: str | None = None, reviewer: str | None = None
    ) -> dict:
        """Both writes are fsynced before this returns: the sample log and the owning shard's journal.
        They run concurrently; if one fails the answer is a 503 naming it, and the same request sent
        again converges (both are upserts). The samples record who sent and who reviewed them."""
        recorded = await self.run(
            flow.feedback_flow(
                parsed.items,
                parsed.incorrect,
                item_fields=self.settings.texts.item_fields,
                sender=sender,
                reviewer=reviewer,
            )
        )
        self.metrics.feedback.inc(recorded.items)
        return {"recorded": recorded.items, "ids": [i.id for i in parsed.items], "samples": recorded.samples}

    @app.post(
        "/v1/admin/adapter",
        responses=ERRORS,
        dependencies=[KEYED],
        openapi_extra=RequestSchema.body(AdapterRequest),
        summary="Swap a LoRA adapter in without a restart",
    )
    @answers("/v1/admin/adapter")
    async def set_adapter(self, request: Request):
        """Body {"role": "generator"|"calibrator", "path": adapter folder or null (base model)}: the
        adapters file (llm.adapters_file) is rewritten, and every replica of the stage loads it between
        batches; requests in flight are answered by the old adapter or the new one, none fails.
        Only folders under service.adapters_root are accepted."""
        self._authorize(request, "admin")
        parsed = parse_adapter_request(await self._json(request))
        role, path = parsed.role, parsed.path
        stage = self.generator if role == "generator" else self.calibrator
        if stage is None and self.judges_with_generation:
            stage = self.generator  # the Generator replicas judge (and follow the calibrator adapter)
        if stage is None:
            raise Refused(422, "this app runs no calibrator", "role")
        if not self.settings.llm.adapters_file:
            raise Refused(409, "set llm.adapters_file to swap adapters over HTTP", "role")
        if path is not None:
            if self.service.adapters_root is None:
                raise Refused(409, "set service.adapters_root to swap adapters over HTTP", "path")
            try:
                path = str(under_adapters_root(self.service.adapters_root, path))
            except OutsideAdaptersRoot as exc:
                raise Refused(403, str(exc), "path") from None
            try:
                await asyncio.to_thread(check_adapter, role, path)
            except ModelError as exc:
                raise Refused(422, str(exc), "path") from exc
        await asyncio.to_thread(write_active, self.settings.llm.adapters_file, {role: path}, "admin")
        # One replica loads it now (and confirms); the others load it before their next batch.
        state = await self._call(f"adapter-{role}", stage.sync_adapters, role)
        self.metrics.requests.inc(tags={"route": "/v1/admin/adapter", "status": "200"})
        return {"role": role, "path": path, "replica": state}

    @app.get("/v1/tags", summary="Search the tag vocabulary", responses=refusals(401, 403, 422))
    @answers("/v1/tags")
    async def search(
        self,
        request: Request,
        q: Annotated[str, Query(json_schema_extra=QUERY_BOUNDS)] = "",
        limit: Annotated[int, Query(json_schema_extra=LIMIT_BOUNDS)] = 20,
    ):
        if self.service.auth.reads:
            self._authorize(request, None)
        if not 1 <= limit <= self.limits.max_search_results:
            raise Refused(422, f"must be within 1..{self.limits.max_search_results}", "limit")
        # In a thread: a long vocabulary scan must not hold up the event loop every request shares.
        found = await asyncio.to_thread(self.tag_search.search, q, limit)
        return {"query": q, "tags": found, "vocabulary_size": len(self.tags)}

    @app.get("/healthz", summary="The ingress is up")
    async def healthz(self):
        return {"status": "ok"}

    @app.get(
        "/readyz",
        summary="Every stage answers; what each holds",
        responses={503: {"description": "A stage does not answer: ready false, and the error"}},
    )
    async def readyz(self):
        stages: dict[str, Any] = {"encoder": (self.encoder, ())}
        stages.update({f"recall[{i}]": (shard, ()) for i, shard in enumerate(self.shards)})
        stages["generator"] = (self.generator, ())
        if self.calibrator is not None:
            stages["calibrator"] = (self.calibrator, ())
        elif self.judges_with_generation:
            # Judged on the Generator replicas: one of them describes the role.
            stages["calibrator"] = (self.generator, ("calibrator",))
        try:
            answers = await asyncio.wait_for(
                asyncio.gather(*(handle.describe.remote(*args) for handle, args in stages.values())),
                timeout=10,
            )
        except Exception as exc:
            return JSONResponse(
                {"ready": False, "error": without_paths(f"{type(exc).__name__}: {exc}")}, status_code=503
            )
        plan = self.routing.current[1] if self.routing is not None else None
        return {
            "ready": True,
            "stages": without_paths(dict(zip(stages, answers, strict=True))),
            "routing": plan.describe() if plan is not None else None,
            "admission": self.admission.describe(),
        }
