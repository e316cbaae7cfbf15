"""The HTTP ingress: validates requests, chains the stage deployments, answers with tags + provenance.

POST /v1/tag        one item or {"items": [...]}: tags with confidence and provenance
POST /v1/feedback   corrected annotations: durable graph edges + retrievable samples
GET  /v1/tags?q=    vocabulary search
GET  /healthz       the ingress answers;   GET /readyz   every stage answers (and what it holds)
"""

import asyncio
import json
import logging
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from deployments._common import settings_of
from deployments.metrics import ServiceMetrics
from deployments.schema import (
    ErrorOut,
    FeedbackRequestIn,
    TagRequestIn,
    TagResponseOut,
    body_schema,
)
from graph_store import shard_of
from graph_store.recall import merge_hits, select
from llm4tag.calibrator import Judged, judges_in_context
from llm4tag.knowledge import Sample
from llm4tag.pipeline import judgment_context, result_row
from llm4tag.service import (
    RequestError,
    ServiceConfig,
    parse_feedback_request,
    parse_tag_request,
    search_tags,
)
from llm4tag.texts import item_text

log = logging.getLogger("ray.serve")
app = FastAPI(
    title="llm4tag",
    description="Automatic tagging after LLM4Tag: graph recall, knowledge-enhanced generation, calibration.",
    version="0.1.0",
)
ERRORS = {
    400: {"model": ErrorOut},
    413: {"model": ErrorOut},
    422: {"model": ErrorOut},
    503: {"model": ErrorOut},
}
RETRYABLE = (ActorDiedError, ActorUnavailableError, RayActorError, DeploymentUnavailableError)


class Overloaded(Exception):
    pass


@serve.deployment(
    name="Ingress",
    ray_actor_options={"num_cpus": 0.25},
    max_ongoing_requests=128,
    max_queued_requests=256,
)
@serve.ingress(app)
class Ingress:
    def __init__(
        self,
        encoder,
        shards: list,
        generator,
        calibrator,
        vocabulary: dict,
        settings: dict,
        service: dict,
    ):
        self.encoder, self.shards, self.generator, self.calibrator = encoder, shards, generator, calibrator
        self.settings = settings_of(settings)
        self.service = ServiceConfig.from_dict(service)
        self.limits = self.service.limits
        self.tags: list[str] = vocabulary["tags"]
        self.descriptions: list[str | None] = vocabulary["descriptions"]
        self.vocabulary = frozenset(self.tags)
        self.text_fields = [f for f in self.settings.texts.item_fields if f != "text"]
        self.recall_config = self.settings.graph.recall
        # Judgments continue the generation conversations: they carry them to the stage that judges.
        self.in_context = judges_in_context(self.settings.llm, self.settings.prompts)
        self.metrics = ServiceMetrics()

    # -- plumbing

    def _error(self, route: str, status: int, body: dict, headers: dict | None = None) -> JSONResponse:
        self.metrics.requests.inc(tags={"route": route, "status": str(status)})
        return JSONResponse(body, status_code=status, headers=headers)

    def _overloaded(self, route: str, what: str) -> JSONResponse:
        return self._error(
            route,
            503,
            {"error": f"the service is overloaded ({what}); retry later", "field": "service"},
            {"Retry-After": str(self.service.retry_after_s)},
        )

    async def _json(self, request: Request) -> Any:
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
        if not raw.strip():
            raise RequestError("body", "is empty: send a JSON object", 400)
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RequestError("body", f"malformed JSON: {exc}", 400) from exc

    async def _call(self, stage: str, method, *args):
        """One downstream call; a replica that died mid-call is retried on another (Serve replaces it)."""
        for attempt in range(self.service.retries + 1):
            try:
                return await method.remote(*args)
            except BackPressureError as exc:
                raise Overloaded(stage) from exc
            except RETRYABLE:
                if attempt == self.service.retries:
                    raise
                self.metrics.retries.inc(tags={"stage": stage})
                await asyncio.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")

    # -- routes

    @app.post(
        "/v1/tag",
        response_model=TagResponseOut,
        response_model_exclude_unset=True,
        responses=ERRORS,
        openapi_extra=body_schema(TagRequestIn),
        summary="Tag one item or a batch",
    )
    async def tag(self, request: Request):
        route = "/v1/tag"
        started = time.perf_counter()
        try:
            parsed = parse_tag_request(await self._json(request), self.text_fields, self.limits)
            rows, timings = await self._tag(parsed)
        except RequestError as exc:
            return self._error(route, exc.status, exc.body())
        except Overloaded as exc:
            return self._overloaded(route, f"stage {exc}")
        timings["total"] = (time.perf_counter() - started) * 1000
        for stage, ms in timings.items():
            self.metrics.stage_latency.observe(ms, tags={"stage": stage})
        self.metrics.items_tagged.inc(len(rows))
        self.metrics.requests.inc(tags={"route": route, "status": "200"})
        return {"items": rows, "timings_ms": {k: round(v, 2) for k, v in timings.items()}}

    async def _tag(self, parsed) -> tuple[list[dict], dict[str, float]]:
        items = parsed.items
        timings: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[stage] = (now - clock) * 1000
            clock = now

        contents = [item_text(i, self.settings.texts.item_fields) for i in items]
        vectors = await asyncio.gather(*(self._call("encode", self.encoder.encode, c) for c in contents))
        lap("encode")
        import numpy as np

        matrix = np.stack(vectors)
        per_shard = await asyncio.gather(*(self._call("recall", s.search, matrix) for s in self.shards))
        rc = self.recall_config
        candidates = [
            select(merge_hits(list(parts), rc.c2c_search_k) if len(parts) > 1 else parts[0], self.tags, rc)
            for parts in zip(*per_shard, strict=True)
        ]
        lap("recall")
        for cands in candidates:
            self.metrics.candidates.observe(len(cands))
        generations = await asyncio.gather(
            *(
                self._call(
                    "generate",
                    self.generator.generate,
                    {
                        "id": item.id,
                        "content": content,
                        "vector": vector,
                        "candidates": [c.tag for c in cands],
                    },
                )
                for item, content, vector, cands in zip(items, contents, vectors, candidates, strict=True)
            )
        )
        lap("generate")
        if self.calibrator is not None:
            judged = await asyncio.gather(
                *(
                    self._call(
                        "calibrate",
                        self.calibrator.judge,
                        (content, list(g.tags), judgment_context(g) if self.in_context else None),
                    )
                    for content, g in zip(contents, generations, strict=True)
                )
            )
            lap("calibrate")
        else:
            judged = [[Judged(t, float("nan"), True) for t in g.tags] for g in generations]
        rows = []
        for item, cands, generation, verdicts in zip(items, candidates, generations, judged, strict=True):
            for verdict in verdicts:
                if verdict.confidence == verdict.confidence:
                    self.metrics.confidence.observe(verdict.confidence)
                (self.metrics.tags_kept if verdict.kept else self.metrics.tags_dropped).inc()
            rows.append(result_row(item.id, cands, generation, verdicts, parsed.candidates, parsed.dropped))
        if self.settings.pipeline.write_back:
            await self._record(items, vectors, [[t["tag"] for t in row["tags"]] for row in rows])
            lap("write_back")
        return rows, timings

    async def _record(self, items, vectors, tags: list[list[str]]) -> None:
        """Durable upserts in each item's owning shard (its journal is followed by every replica)."""
        import numpy as np

        groups: dict[int, list[int]] = {}
        for row, item in enumerate(items):
            groups.setdefault(shard_of(item.id, len(self.shards)), []).append(row)
        await asyncio.gather(
            *(
                self._call(
                    "record",
                    self.shards[shard].record,
                    [items[r].id for r in rows],
                    np.stack([vectors[r] for r in rows]),
                    [tags[r] for r in rows],
                    [items[r].text for r in rows],
                )
                for shard, rows in groups.items()
            )
        )

    @app.post(
        "/v1/feedback",
        responses=ERRORS,
        openapi_extra=body_schema(FeedbackRequestIn),
        summary="Record corrected annotations (durable before the answer)",
    )
    async def feedback(self, request: Request):
        route = "/v1/feedback"
        try:
            parsed = parse_feedback_request(
                await self._json(request), self.text_fields, self.vocabulary, self.limits
            )
            items = parsed.items
            contents = [item_text(i, self.settings.texts.item_fields) for i in items]
            vectors = await asyncio.gather(*(self._call("encode", self.encoder.encode, c) for c in contents))
            samples = [
                Sample(id=i.id, text=c, correct=tuple(i.tags or ()), incorrect=tuple(w), source="feedback")
                for i, c, w in zip(items, contents, parsed.incorrect, strict=True)
            ]
            import numpy as np

            # Both writes are fsynced before the 200: the sample log and the owning shard's journal.
            recorded, _ = await asyncio.gather(
                self._call("feedback", self.generator.record_samples, samples, np.stack(vectors)),
                self._record(items, vectors, [list(i.tags or ()) for i in items]),
            )
        except RequestError as exc:
            return self._error(route, exc.status, exc.body())
        except Overloaded as exc:
            return self._overloaded(route, f"stage {exc}")
        self.metrics.feedback.inc(len(items))
        self.metrics.requests.inc(tags={"route": route, "status": "200"})
        return {"recorded": len(items), "ids": [i.id for i in items], "samples": recorded}

    @app.post("/v1/admin/adapter", responses=ERRORS, summary="Swap a LoRA adapter in without a restart")
    async def set_adapter(self, request: Request):
        """Body {"role": "generator"|"calibrator", "path": adapter folder or null (base model)}: the
        adapters file (llm.adapters_file) is rewritten, and every replica of the stage loads it between
        batches; requests in flight are answered by the old adapter or the new one, none fails."""
        from llm4tag.engines.adapters import check_adapter
        from llm4tag.errors import ModelError
        from llm4tag.finetune.registry import write_active

        route = "/v1/admin/adapter"
        try:
            body = await self._json(request)
        except RequestError as exc:
            return self._error(route, exc.status, exc.body())
        if not isinstance(body, dict) or body.get("role") not in ("generator", "calibrator"):
            return self._error(route, 422, {"error": "must be generator or calibrator", "field": "role"})
        role, path = body["role"], body.get("path")
        stage = self.generator if role == "generator" else self.calibrator
        if stage is None:
            return self._error(route, 422, {"error": "this app runs no calibrator", "field": "role"})
        if not self.settings.llm.adapters_file:
            return self._error(
                route, 409, {"error": "set llm.adapters_file to swap adapters over HTTP", "field": "role"}
            )
        if path is not None:
            if not isinstance(path, str) or not path:
                return self._error(route, 422, {"error": "must be a folder path or null", "field": "path"})
            try:
                await asyncio.to_thread(check_adapter, role, path)
            except ModelError as exc:
                return self._error(route, 422, {"error": str(exc), "field": "path"})
        await asyncio.to_thread(write_active, self.settings.llm.adapters_file, {role: path}, "admin")
        # One replica loads it now (and confirms); the others load it before their next batch.
        state = await self._call(f"adapter-{role}", stage.sync_adapters, role)
        self.metrics.requests.inc(tags={"route": route, "status": "200"})
        return {"role": role, "path": path, "replica": state}

    @app.get("/v1/tags", summary="Search the tag vocabulary")
    async def search(self, q: str = "", limit: int = 20):
        if not 1 <= limit <= self.limits.max_search_results:
            return self._error(
                "/v1/tags",
                422,
                {"error": f"must be within 1..{self.limits.max_search_results}", "field": "limit"},
            )
        found = search_tags(q, self.tags, self.descriptions, limit)
        return {"query": q, "tags": found, "vocabulary_size": len(self.tags)}

    @app.get("/healthz", summary="The ingress is up")
    async def healthz(self):
        return {"status": "ok"}

    @app.get("/readyz", summary="Every stage answers; what each holds")
    async def readyz(self):
        stages: dict[str, Any] = {"encoder": (self.encoder, ())}
        stages.update({f"recall[{i}]": (shard, ()) for i, shard in enumerate(self.shards)})
        stages["generator"] = (self.generator, ())
        if self.calibrator is not None:
            # Colocated with the generator when it judges in context: that replica describes the role.
            stages["calibrator"] = (self.calibrator, ("calibrator",) if self.in_context else ())
        try:
            answers = await asyncio.wait_for(
                asyncio.gather(*(handle.describe.remote(*args) for handle, args in stages.values())),
                timeout=10,
            )
        except Exception as exc:
            return JSONResponse({"ready": False, "error": f"{type(exc).__name__}: {exc}"}, status_code=503)
        return {"ready": True, "stages": dict(zip(stages, answers, strict=True))}
