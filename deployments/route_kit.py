"""What every HTTP route shares: the ingress replica as a dependency, the API-key scheme, the documented
refusals, and the one handler that answers every refusal.

Routes are module functions on APIRouters (deployments/tag_api.py, review_api.py, annif_api.py) that
take the ingress replica (``ingress: Replica``) and use its public API (``tag``, ``write_feedback``,
``json_body``, ``body``, ``authorize``). A refusal is raised, never returned: :func:`answer_refusal` is
the app's exception handler for all of them, so its mapping exists once. It answers
``{"error", "field"}`` with the status, or Annif's problem details on Annif's routes (their clients
read those), and counts the answer.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer

from deployments.stage_calls import Overloaded
from llm4tag.flow import FeedbackIncomplete
from llm4tag.service.annif import PROBLEM_MEDIA_TYPE, TITLES, Problem
from llm4tag.service.http_schema import ErrorOut, Limits, RequestError
from llm4tag.service.review_queue import ReviewError


class Refused(Exception):
    """An answer other than 200, with the body every refusal has."""

    def __init__(self, status: int, error: str, field: str, headers: dict[str, str] | None = None):
        super().__init__(error)
        self.status, self.body, self.headers = status, {"error": error, "field": field}, headers


# Everything the one handler answers.
REFUSALS = (RequestError, Refused, Overloaded, FeedbackIncomplete, ReviewError, Problem)


def current_replica():
    """The ingress replica serving the request (a FastAPI dependency): routes are module functions,
    shipped to the replica by reference, and reach its state through it."""
    from ray import serve

    return serve.get_replica_context().servable_object


Replica = Annotated[Any, Depends(current_replica)]

# The key routes take (service.auth), for the OpenAPI page: ``dependencies=[KEYED]`` documents a route as
# needing one. It refuses nothing itself (auto_error off): the replica checks the key and its scope.
KEYED = Security(
    HTTPBearer(
        scheme_name="apiKey",
        description="An API key (service.auth): scope write for feedback and learn, admin for /v1/admin/*.",
        auto_error=False,
    )
)

# The documented bounds of the vocabulary searches' parameters (GET /v1/tags, /v1/vocabulary): the default
# limits'; each replica checks those of its own configuration.
QUERY_BOUNDS = {"maxLength": Limits().max_query_chars}
LIMIT_BOUNDS = {"minimum": 1, "maximum": Limits().max_search_results}


def refusals(*statuses: int) -> dict:
    """The OpenAPI ``responses`` of a route's refusals: each has the body every refusal has."""
    return {status: {"model": ErrorOut} for status in statuses}


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


def refusal_of(exc: Exception, retry_after_s: int) -> tuple[int, str, str, dict[str, str] | None]:
    """(status, message, field, headers) of a refusal."""
    retry = {"Retry-After": str(retry_after_s)}
    if isinstance(exc, Problem):
        return exc.status, exc.detail, "", retry if exc.status == 503 else None
    if isinstance(exc, RequestError):
        return exc.status, exc.message, exc.field, None
    if isinstance(exc, Refused):
        return exc.status, exc.body["error"], exc.body["field"], exc.headers
    if isinstance(exc, ReviewError):
        return exc.status, str(exc), exc.field, None
    if isinstance(exc, Overloaded):
        return 503, f"the service is overloaded (stage {exc}); retry later", "service", retry
    if isinstance(exc, FeedbackIncomplete):
        return 503, str(exc), "service", retry
    raise TypeError(f"not a refusal: {type(exc).__name__}")


async def answer_refusal(request: Request, exc: Exception) -> JSONResponse:
    """The app's one exception handler for :data:`REFUSALS`."""
    ingress = current_replica()
    route = request.scope.get("route")
    status, message, field, headers = refusal_of(exc, ingress.service.retry_after_s)
    if "annif" in (getattr(route, "tags", None) or ()):
        if isinstance(exc, Problem):
            title, detail = exc.title, exc.detail
        elif isinstance(exc, RequestError):
            # Annif (Connexion) answers a malformed request 400, a too large one 413, naming the part.
            status = status if status in (400, 413) else 400
            title = TITLES.get(status, "Error")
            detail = message if field == "body" else f"{field}: {message}"
        else:
            title, detail = TITLES.get(status, "Error"), message
        body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
        media_type = PROBLEM_MEDIA_TYPE
    else:
        body, media_type = {"error": message, "field": field}, None
    path = getattr(route, "path", request.url.path)
    ingress.metrics.requests.inc(tags={"route": path, "status": str(status)})
    return JSONResponse(body, status_code=status, headers=headers, media_type=media_type)


async def invalid_parameter(request, exc) -> JSONResponse:
    """FastAPI's own refusal of a query or path parameter it cannot convert (``limit=abc``), answered
    with the body every refusal has (its default, ``{"detail": [...]}``, is not the documented one)."""
    first = exc.errors()[0]
    where = [str(part) for part in first.get("loc", ())]
    field = ".".join(where[1:]) or (where[0] if where else "request")
    return JSONResponse({"error": first.get("msg", "is not valid"), "field": field}, status_code=422)
