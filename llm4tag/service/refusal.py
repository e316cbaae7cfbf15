"""The one refusal type of the HTTP service: every answer other than 200 is a :class:`Refusal` (or a
subclass), raised where the problem is found and answered by the app's one handler
(deployments/route_kit.py), so the mapping to statuses, bodies and headers exists once."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from llm4tag.errors import LLM4TagError


class Refusal(LLM4TagError):
    """A request the service refuses: a message, the part of the request at fault (``field``, a
    JSON-path-like name; "" for the request as a whole), the HTTP status (each subclass has its
    default) and extra headers (``Retry-After``, ``WWW-Authenticate``)."""

    status: ClassVar[int] = 400

    def __init__(
        self,
        message: str,
        field: str = "",
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(f"{field}: {message}" if field else message)
        self.message, self.field = message, field
        self.status = type(self).status if status is None else status  # type: ignore[misc]
        self.headers = dict(headers or {})

    def body(self) -> dict:
        """The body every refusal has (Annif's routes answer problem details instead)."""
        return {"error": self.message, "field": self.field}
