"""What every HTTP route shares: the ingress replica as a dependency, the API-key scheme, the documented
refusals, and the one handler that answers every refusal.

Routes are module functions on APIRouters (deployments/tag_api.py, review_api.py, annif_api.py) that
take the ingress replica (``ingress: Replica``) and use its public API (``tag``, ``write_feedback``,
``json_body``, ``body``, ``authorize``). A refusal (llm4tag/service/refusal.py: ``Refusal`` and its
subclasses) is raised, never returned: :func:`answer_refusal` is the app's exception handler for all of
them, so its mapping exists once. It answers ``{"error", "field"}`` with the status and headers, or
Annif's problem details on Annif's routes (their clients read those), and counts the answer.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer

from llm4tag.service.annif import PROBLEM_MEDIA_TYPE, TITLES, Problem
from llm4tag.service.http_schema import ErrorOut, Limits, RequestError
from llm4tag.service.refusal import Refusal


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


async def answer_refusal(request: Request, exc: Refusal) -> JSONResponse:
    """The app's one exception handler: every :class:`Refusal` is answered here."""
    route = request.scope.get("route")
    status, body, media_type = exc.status, exc.body(), None
    if "annif" in (getattr(route, "tags", None) or ()):
        if isinstance(exc, RequestError):
            # Annif (Connexion) answers a malformed request 400, a too large one 413, naming the part.
            status = status if status in (400, 413) else 400
            detail = exc.message if exc.field == "body" else f"{exc.field}: {exc.message}"
            exc = Problem(detail, status=status)
        elif not isinstance(exc, Problem):
            exc = Problem(exc.message, status=status)
        body, media_type = exc.body(), PROBLEM_MEDIA_TYPE
    path = getattr(route, "path", request.url.path)
    current_replica().metrics.requests.inc(tags={"route": path, "status": str(status)})
    return JSONResponse(body, status_code=status, headers=exc.headers or None, media_type=media_type)


async def invalid_parameter(request, exc) -> JSONResponse:
    """FastAPI's own refusal of a query or path parameter it cannot convert (``limit=abc``), answered
    with the body every refusal has (its default, ``{"detail": [...]}``, is not the documented one)."""
    first = exc.errors()[0]
    where = [str(part) for part in first.get("loc", ())]
    field = ".".join(where[1:]) or (where[0] if where else "request")
    return JSONResponse({"error": first.get("msg", "is not valid"), "field": field}, status_code=422)
