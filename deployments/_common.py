"""What the stage deployments share: batch sizes, threads. (Their settings arrive typed: the app
binds llm4tag's Settings and the service's Batching to each deployment.)"""

from __future__ import annotations

import asyncio
import functools
import os

from fastapi import Security
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer

from deployments.stage_calls import Overloaded
from llm4tag import flow
from llm4tag.service.annif import PROBLEM_MEDIA_TYPE, TITLES, Problem
from llm4tag.service.http_schema import ErrorOut, Limits, RequestError
from llm4tag.service.review_queue import ReviewError
from llm4tag.service.settings import Batching


def configure_batching(method, batching: Batching) -> None:
    """Apply the batch size and wait from config to a @serve.batch method (its decorator holds defaults)."""
    method.set_max_batch_size(batching.max_batch_size)
    method.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)


def lower_priority(niceness: int) -> None:
    """Raise this replica process's niceness before it starts its model's threads (they inherit
    it): on a CPU machine the LLM's threads would otherwise take the cores the proxy and the ingress
    need to answer, and to refuse, within milliseconds (service.llm_nice)."""
    if niceness > 0:
        os.nice(niceness)


async def in_thread(function, *args):
    # Model calls run off the replica's event loop, which must stay free for health checks and for
    # queueing the next batch while this one computes.
    return await asyncio.to_thread(function, *args)


class Refused(Exception):
    """An answer other than 200, with the body every refusal has."""

    def __init__(self, status: int, error: str, field: str, headers: dict[str, str] | None = None):
        super().__init__(error)
        self.status, self.body, self.headers = status, {"error": error, "field": field}, headers


# What the ingress's one exception handler (IngressDeployment.refusal) answers.
REFUSALS = (RequestError, Refused, Overloaded, flow.FeedbackIncomplete, ReviewError, Problem)


async def invalid_parameter(request, exc) -> JSONResponse:
    """FastAPI's own refusal of a query or path parameter it cannot convert (``limit=abc``), answered
    with the body every refusal has (its default, ``{"detail": [...]}``, is not the documented one). It
    needs nothing of the replica, so it can be the app's exception handler."""
    first = exc.errors()[0]
    where = [str(part) for part in first.get("loc", ())]
    field = ".".join(where[1:]) or (where[0] if where else "request")
    return JSONResponse({"error": first.get("msg", "is not valid"), "field": field}, status_code=422)


# The key routes take (service.auth), for the OpenAPI page: ``dependencies=[KEYED]`` documents a route as
# needing one. It refuses nothing itself (auto_error off): the replica checks the key and its scope.
KEYED = Security(
    HTTPBearer(
        scheme_name="apiKey",
        description="An API key (service.auth): scope write for feedback and learn, admin for /v1/admin/*.",
        auto_error=False,
    )
)


def refusals(*statuses: int) -> dict:
    """The OpenAPI ``responses`` of a route's refusals: each has the body every refusal has."""
    return {status: {"model": ErrorOut} for status in statuses}


# The documented bounds of the vocabulary searches' parameters (GET /v1/tags, /v1/vocabulary): the default
# limits'; each replica checks those of its own configuration.
QUERY_BOUNDS = {"maxLength": Limits().max_query_chars}
LIMIT_BOUNDS = {"minimum": 1, "maximum": Limits().max_search_results}


# Annif's problem details (RFC 7807), as Annif's own OpenAPI describes them (tests/annif/annif.yaml).
PROBLEM_SCHEMA = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
    },
}


def problems(*statuses: int) -> dict:
    """The OpenAPI ``responses`` of an Annif route's refusals (problem details)."""
    return {
        status: {
            "description": TITLES.get(status, "Error"),
            "content": {PROBLEM_MEDIA_TYPE: {"schema": PROBLEM_SCHEMA}},
        }
        for status in statuses
    }


def answered(route: str, annif: bool = False):
    """The exception handler of the routes kept outside the ingress class (module functions that take
    the replica as their ``ingress`` argument): every refusal goes to the replica's one mapping
    (``refusal``). ``annif``: the route answers in Annif's problem details, so a refusal of ours becomes
    one first."""

    def wrap(function):
        @functools.wraps(function)
        async def answer(*args, **kwargs):
            try:
                try:
                    return await function(*args, **kwargs)
                except (RequestError, Overloaded, Refused) as exc:
                    if not annif:
                        raise
                    raise as_problem(exc) from exc
            except REFUSALS as exc:
                return kwargs["ingress"].refusal(route, exc)

        return answer

    return wrap


def as_problem(exc: RequestError | Overloaded | Refused) -> Problem:
    if isinstance(exc, Overloaded):
        return Problem(503, f"the service is overloaded (stage {exc}); retry later")
    if isinstance(exc, Refused):
        return Problem(exc.status, exc.body["error"])
    status = exc.status if exc.status in (400, 413) else 400
    return Problem(status, exc.message if exc.field == "body" else f"{exc.field}: {exc.message}")


def current_replica():
    """The deployment object of this replica, for routes kept outside the ingress class (a FastAPI
    dependency): functions of a module are shipped to the replica by reference, where Serve's
    class-based-view conversion of mixin methods does not happen."""
    from ray import serve

    return serve.get_replica_context().servable_object
