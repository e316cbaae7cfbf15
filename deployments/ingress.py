"""The HTTP ingress: the app (its routes are deployments/tag_api.py, review_api.py and annif_api.py)
and the replica whose public API they use: ``tag`` runs the tag flow (llm4tag/flow.py) over the stage
deployments (deployments/stage_calls.py) under deadline-aware admission, ``write_feedback`` runs the
feedback flow, ``json_body``/``body`` read a request within its limits, ``authorize`` checks its key.
Every refusal is raised and answered by the app's one handler (deployments/route_kit.py).

The ingress ranks and routes (it follows the store's ranking), so items the ranker settles never
reach the Generator deployment; it also holds the store's knowledge bases (feedback's samples, the
review UI's retrieved entries), so that nothing but routed items needs an LLM replica: where the
route plan sends nothing to the LLM the LLM stages hold none (deployments/app.py: on_demand).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve

from deployments.annif_api import AnnifProject
from deployments.annif_api import router as annif_router
from deployments.review_api import ReviewDesk
from deployments.review_api import router as review_router
from deployments.route_kit import answer_refusal, invalid_parameter
from deployments.serve_metrics import ServiceMetrics
from deployments.stage_calls import StageCalls
from deployments.tag_api import router as tag_router
from graph_store import StoreError, TagWatch
from llm4tag import flow
from llm4tag.config import Settings
from llm4tag.data import Item, Tag
from llm4tag.errors import LLM4TagError
from llm4tag.knowledge.store_knowledge import StoreKnowledge
from llm4tag.ranking.store_routing import FollowedRouting
from llm4tag.service.admission import DEADLINE_HEADER, Admission
from llm4tag.service.annif import AnnifSettings
from llm4tag.service.auth import ApiKeys
from llm4tag.service.http_schema import (
    FeedbackRequest,
    RequestError,
    RequestSchema,
    decode_json,
    require_json,
    without_paths,
)
from llm4tag.service.refusal import Refusal
from llm4tag.service.review_queue import ReviewSettings
from llm4tag.service.settings import ServiceConfig
from llm4tag.service.vocabulary_view import VocabularyView
from llm4tag.store_tags import add_tags

log = logging.getLogger("ray.serve")
app = FastAPI(
    title="llm4tag",
    description="Automatic tagging after LLM4Tag: graph recall, knowledge-enhanced generation, calibration.",
    version="0.1.0",
)
for _router in (tag_router, review_router, annif_router):
    app.include_router(_router)
app.add_exception_handler(RequestValidationError, invalid_parameter)
app.add_exception_handler(Refusal, answer_refusal)


def counted(method):
    """An ingress method whose calls are requests in flight (IngressDeployment.in_flight)."""

    @functools.wraps(method)
    async def run(self, *args, **kwargs):
        with self.in_flight():
            return await method(self, *args, **kwargs)

    return run


@serve.deployment(
    name="Ingress",
    ray_actor_options={"num_cpus": 0.25},
    max_ongoing_requests=128,
    max_queued_requests=256,
)
@serve.ingress(app)
class IngressDeployment:
    def __init__(
        self,
        encoder,
        shards: list,
        generator,
        calibrator,
        journal: str | None,
        settings: Settings,
        service: ServiceConfig,
        store: str,
        review: ReviewSettings,
        annif: AnnifSettings,
        encoder_id: str,
        llm_on_demand: bool = False,
        llm_replicas: int = 1,
    ):
        """``llm_on_demand``: the LLM stages start with no replica and scale to zero when idle;
        ``llm_replicas``: the Generator replicas the app starts with (admission before any measure)."""
        self.settings, self.service, self.limits = settings, service, service.limits
        self.llm_on_demand = llm_on_demand
        self.working, self.draining = 0, False  # requests in flight; whether new ones are refused
        # The served vocabulary, followed: a tag added to the store (POST /v1/admin/tags, `llm4tag vocab
        # add`) is in it from the next request on (follow_vocabulary). The watch opens first: a tag
        # added while the vocabulary is read shows as a change, never as one missed.
        self.store, self.journal, self.annif_settings = store, journal, annif
        self.tag_watch = TagWatch(store, journal)
        self.vocabulary = VocabularyView.read(store, journal, annif, self.limits.max_query_chars)
        self.following = asyncio.Lock()  # one re-read of the vocabulary or ranking at a time
        self.vocabulary_stale = False  # a change was seen, and the vocabulary not yet read again
        self.tag_writer = asyncio.Lock()  # one tag add at a time from this replica
        self.schema = RequestSchema([f for f in settings.texts.item_fields if f != "text"])
        self.metrics = ServiceMetrics()
        self.admission = Admission(llm_replicas=llm_replicas)
        # Feedback's samples are recorded here, durable before the answer; the LLM replicas follow them.
        knowledge = StoreKnowledge.open(store, encoder_id, writable=True)
        self.calls = StageCalls(
            encoder,
            shards,
            generator,
            calibrator,
            knowledge,
            settings.graph.recall,
            service.retries,
            service.retry_after_s,
            self.metrics,
            lambda load: self.admission.observe_replica(load["replica"], load["item_s"], load["queued"]),
        )
        # Read here, in the replica, from its node's environment or secret file: never an argument of
        # the application (Serve keeps those in its config, which its dashboard shows).
        self.keys = ApiKeys.load(service.auth) if service.auth.enabled else None
        # The store's ranking and routing plan, as the in-process pipeline opens them, followed: a refit
        # or cascade fit of the served store is picked up without a redeploy.
        self.routing = FollowedRouting(store, encoder_id, **settings.plan_args)
        self.options = flow.FlowOptions.of(settings, self.vocabulary.tags, self.routing.current[1])
        self.admission.plan_changed(not self.routing.current[1].sends_nothing)
        self.review = ReviewDesk(self, store, review, settings.pipeline.threshold)
        self.annif = AnnifProject(self, annif)

    # -- reading and checking a request

    def authorize(self, request: Request, scope: str | None) -> str | None:
        """Refuse (401/403) unless the request carries a key with ``scope`` (None: any key); the key's
        name (None when no keys are checked)."""
        if self.keys is None:
            return None
        return self.keys.check(request.headers.get("authorization"), scope)

    async def json_body(self, request: Request) -> Any:
        require_json(request.headers.get("content-type"))
        return decode_json(await self.body(request))

    async def body(self, request: Request) -> bytes:
        """The request's body, refused (413) past ``limits.max_body_bytes``."""
        limit = self.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestError(f"is {declared} bytes, more than the limit of {limit}", "body", 413)
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limit:
                raise RequestError(f"is more than the limit of {limit} bytes", "body", 413)
        return bytes(raw)

    def parse_feedback(self, body: Any) -> FeedbackRequest:
        return self.schema.parse_feedback(body, self.vocabulary.names, self.limits)

    # -- tagging and feedback

    def retry_later(self, message: str, field: str = "service", status: int = 503) -> Refusal:
        """A refusal the client retries after the service's ``retry_after_s`` (Retry-After)."""
        return Refusal(message, field, status, {"Retry-After": str(self.service.retry_after_s)})

    @contextlib.contextmanager
    def in_flight(self):
        """A tag or feedback request, counted while it runs; refused (503) once the service drains."""
        if self.draining:
            raise self.retry_later("the service is shutting down; retry elsewhere or later")
        self.working += 1
        try:
            yield
        finally:
            self.working -= 1

    async def drain(self) -> int:
        """Take no new tag or feedback request (503), and say how many are still in flight: `llm4tag
        serve` stops once every ingress replica says 0 (deployments/cli.py)."""
        self.draining = True
        return self.working

    @counted
    async def tag(
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
        held = self._admit(len(items), budget_s)
        timings = {} if timings is None else timings
        try:
            if self.routing.due() and await asyncio.to_thread(self.routing.refresh):
                self.admission.plan_changed(not self.routing.current[1].sends_nothing)
            await self.follow_vocabulary()
            ranking, plan = self.routing.current  # one consistent pair for the whole request
            await self.follow_ranking(ranking)
            steps = flow.tag_flow(
                items,
                dataclasses.replace(self.options, plan=plan),
                with_candidates=with_candidates,
                with_dropped=True,
                unnamed=unnamed,
            )
            started = time.perf_counter()
            tagged = await flow.run_async(
                steps,
                functools.partial(self.calls.answer, ranking=ranking),
                deadline=asyncio.get_running_loop().time() + budget_s,
                timings=timings,
            )
        except flow.DeadlinePassed as passed:
            if passed.stage in LLM_STAGES and self.llm_on_demand and not self.admission.live():
                # The items waited for an LLM replica to start (the stage held none): a retry finds it up.
                raise self.retry_later(
                    "the LLM stage is starting (it held no replica while nothing was routed to it) and "
                    "did not answer within the deadline; retry shortly"
                ) from None
            raise self.retry_later(
                "the request ran past its deadline; its remaining work was dropped (retry "
                f"later, or with a longer {DEADLINE_HEADER} up to {self.service.deadline_s:g} s)",
                DEADLINE_HEADER,
                504,
            ) from None
        finally:
            self.admission.release(held)
        llm_ms = timings.get("generate", 0.0) + (
            timings.get("calibrate", 0.0) if self.options.judges_with_generation else 0.0
        )
        other_s = max(0.0, time.perf_counter() - started - llm_ms / 1000)
        self.admission.observe_request(len(items), tagged.sent_to_llm, other_s)
        self.metrics.observe_tagged(tagged)
        await self.review.enqueue(items, tagged.rows, origin)
        if not with_dropped:
            for row in tagged.rows:
                row.pop("dropped", None)
        return tagged.rows

    def _admit(self, items: int, budget_s: float) -> float:
        """Refuse at once what cannot be answered within its deadline (llm4tag/service/admission.py);
        an admitted request counts as ahead of later ones at once, before any await, so that a burst
        is not admitted on one estimate. What to release when its items are through the LLM."""
        verdict = self.admission.decide(items, budget_s)
        if verdict.too_large:
            raise Refusal(
                f"{items} item(s) take about {verdict.alone_s:.1f} s here even with nothing ahead, "
                f"more than the deadline ({budget_s:.1f} s left): send fewer items per request",
                "items",
                413,
            )
        if not verdict.admitted:
            raise Refusal(
                f"the service cannot tag {items} item(s) within the deadline ({budget_s:.1f} s "
                f"left; about {verdict.wait_s:.1f} s of work is ahead): retry later or elsewhere",
                DEADLINE_HEADER,
                503,
                {"Retry-After": str(verdict.retry_after_s)},
            )
        return self.admission.admit(items)

    @counted
    async def write_feedback(
        self, parsed: FeedbackRequest, sender: str | None = None, reviewer: str | None = None
    ) -> dict:
        """Both writes are fsynced before this returns: the sample log and the owning shard's journal.
        They run concurrently; if one fails the answer is a 503 naming it, and the same request sent
        again converges (both are upserts). The samples record who sent and who reviewed them."""
        try:
            recorded = await flow.run_async(
                flow.feedback_flow(
                    parsed.items,
                    parsed.incorrect,
                    item_fields=self.settings.texts.item_fields,
                    sender=sender,
                    reviewer=reviewer,
                ),
                self.calls.answer,
            )
        except flow.FeedbackIncomplete as exc:
            raise self.retry_later(str(exc)) from exc
        self.metrics.feedback.inc(recorded.items)
        return {"recorded": recorded.items, "ids": [i.id for i in parsed.items], "samples": recorded.samples}

    # -- the vocabulary, followed

    async def follow_vocabulary(self) -> VocabularyView:
        """The served vocabulary, read again first if tags were added to the store since (a tail read
        of its journal per call: microseconds when nothing changed)."""
        async with self.following:
            try:
                self.vocabulary_stale = self.vocabulary_stale or self.tag_watch.moved()
                if self.vocabulary_stale:
                    view = await asyncio.to_thread(
                        VocabularyView.read,
                        self.store,
                        self.journal,
                        self.annif_settings,
                        self.limits.max_query_chars,
                    )
                    self.vocabulary, self.vocabulary_stale = view, False
                    self.options = dataclasses.replace(self.options, tag_names=tuple(view.tags))
                    log.info("the store's vocabulary changed: %s tags", len(view.tags))
            # Keep answering with the vocabulary in memory; the next call reads it again.
            except Exception as exc:
                log.error("the store's vocabulary could not be read again, the previous one stays: %s", exc)
        return self.vocabulary

    async def follow_ranking(self, ranking) -> None:
        """Let ``ranking`` rank the tags added to the store after its fit (with 0 annotations:
        RankingModels.follow), from their vectors as the recall shards hold them."""
        if ranking is None or len(ranking.models.stats.tag_names) >= len(self.vocabulary.tags):
            return
        async with self.following:
            models = ranking.models
            fitted = len(models.stats.tag_names)
            if fitted >= len(self.vocabulary.tags):
                return  # another request followed it meanwhile
            answers = await asyncio.gather(
                *(self.calls.call("recall", shard.tags_from, fitted) for shard in self.calls.shards)
            )
            # A sharded add reaches the shards one after the other: the fullest shard has them all.
            names, vectors = max(answers, key=lambda answer: len(answer[0]))
            if names:
                await asyncio.to_thread(
                    models.follow,
                    [*models.stats.tag_names, *names],
                    np.concatenate([models.stats.tag_vectors, vectors]),
                )

    async def add_tags(self, tags: list[Tag]) -> dict:
        """Add ``tags`` to the store through the core (llm4tag/store_tags.py, as `llm4tag vocab add`):
        durable before this returns, and in this replica's vocabulary at once; every other replica
        and recall shard reads it from the store's journal before its next answer. A tag already in
        the vocabulary is refused (409) naming it."""
        async with self.tag_writer:
            view = await self.follow_vocabulary()
            for index, tag in enumerate(tags):
                if tag.tag in view.names:
                    raise Refusal(
                        f"tag '{tag.tag}' is already in the store's vocabulary", f"[{index}].tag", 409
                    )
            try:
                summary = await asyncio.to_thread(add_tags, self.store, tags)
            except StoreError as exc:  # added by another writer meanwhile
                raise Refusal(str(exc), "body", 409) from exc
            except LLM4TagError as exc:
                raise Refusal(str(exc), "body", 422) from exc
        await self.follow_vocabulary()
        return without_paths(summary)

    # -- readiness

    async def readiness(self) -> dict | JSONResponse:
        """Every stage describes itself within 10 s (what it holds), or 503 with the error. An LLM stage
        scaled to zero is ready without a replica: it says so and why (asking it would start one)."""
        calls = self.calls
        stages: dict[str, Any] = {"encoder": (calls.encoder, ())}
        stages.update({f"recall[{i}]": (shard, ()) for i, shard in enumerate(calls.shards)})
        stages["generator"] = (calls.generator, ())
        if calls.calibrator is not None:
            stages["calibrator"] = (calls.calibrator, ())
        elif self.options.judges_with_generation:
            # Judged on the Generator replicas: one of them describes the role.
            stages["calibrator"] = (calls.generator, ("calibrator",))
        try:
            idle = await asyncio.wait_for(self._scaled_to_zero(stages), timeout=10)
            asked = {name: stage for name, stage in stages.items() if name not in idle}
            answers = await asyncio.wait_for(
                asyncio.gather(*(handle.describe.remote(*args) for handle, args in asked.values())),
                timeout=10,
            )
        except Exception as exc:
            return JSONResponse(
                {"ready": False, "error": without_paths(f"{type(exc).__name__}: {exc}")}, status_code=503
            )
        described = dict(zip(asked, answers, strict=True)) | idle
        return {
            "ready": True,
            "stages": without_paths({name: described[name] for name in stages}),
            "routing": self.routing.current[1].describe(),
            "admission": self.admission.describe(),
        }

    async def idle_llm_stages(self) -> set[str]:
        """The LLM deployments that hold no replica now (none unless ``llm_on_demand``): asking one
        anything would start a replica."""
        if not self.llm_on_demand:
            return set()
        running = await asyncio.to_thread(running_replicas)
        return {name for name in ("Generator", "Calibrator") if running.get(name, 0) == 0}

    async def _scaled_to_zero(self, stages: dict[str, Any]) -> dict[str, dict]:
        """What the LLM stages that hold no replica say of themselves."""
        idle = await self.idle_llm_stages()
        why = (
            "route sends nothing to the LLM"
            if self.routing.current[1].sends_nothing
            else "no item was routed to the LLM lately"
        )
        said = {}
        for name, (handle, args) in stages.items():
            deployment = {id(self.calls.generator): "Generator", id(self.calls.calibrator): "Calibrator"}.get(
                id(handle)
            )
            if deployment in idle:
                state = {"llm": f"scaled to zero: {why} (a replica starts when an item is routed to it)"}
                if args == ("calibrator",):
                    state = {"colocated_with": "Generator", **state}
                said[name] = {"replicas": 0, **state}
        return said


LLM_STAGES = ("generate", "calibrate")


def running_replicas() -> dict[str, int]:
    """Running replicas per deployment of this replica's application (Serve's controller; blocking)."""
    application = serve.status().applications[serve.get_replica_context().app_name]
    return {name: int(d.replica_states.get("RUNNING", 0)) for name, d in application.deployments.items()}
