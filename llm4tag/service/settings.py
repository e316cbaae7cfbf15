"""The HTTP service's settings (request limits, batching, retries) and its vocabulary search; the
request and answer shapes are llm4tag/service/http_schema.py's."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field, field_validator

from llm4tag.config_section import Section
from llm4tag.service.auth import Auth
from llm4tag.service.http_schema import Limits


class Batching(Section):
    """How a stage batches concurrent requests."""

    section: ClassVar[str] = "service.batching"

    max_batch_size: int = Field(8, ge=1, description="requests per model call at most")
    batch_wait_timeout_s: float = Field(0.02, ge=0, description="how long a batch waits to fill up")


class ServiceConfig(Section):
    """The HTTP service (the `service:` argument of the Serve application)."""

    section: ClassVar[str] = "service"

    limits: Limits = Field(default_factory=Limits, description="bounds on one request")
    encoder: Batching = Field(
        # No wait: the texts that arrive while a batch encodes form the next one (deployments/_batching.py).
        default_factory=lambda: Batching(max_batch_size=64, batch_wait_timeout_s=0.0),
        description="the Encoder deployment's batches",
    )
    generator: Batching = Field(default_factory=Batching, description="the Generator deployment's batches")
    calibrator: Batching = Field(
        default_factory=lambda: Batching(max_batch_size=16, batch_wait_timeout_s=0.02),
        description="the Calibrator's batches (on the Generator when judgments continue its conversation)",
    )
    auth: Auth = Field(
        default_factory=Auth,
        description="API keys for the write and admin routes (`auth: off` turns the check off)",
    )
    adapters_root: str | None = Field(
        None,
        description="POST /v1/admin/adapter accepts only adapter folders under this folder (none: refused)",
    )
    retry_after_s: int = Field(2, ge=0, description="Retry-After of a 503 when the service sheds load")
    llm_nice: int = Field(
        0,
        ge=0,
        le=19,
        description=(
            "niceness of the LLM replicas' processes (Generator, Calibrator): where they share CPU cores "
            "with the HTTP path (serve_config.cpu.yaml), a higher value lets the proxy and the ingress "
            "answer (and refuse) at once while the LLM computes; 0 on GPU machines"
        ),
    )
    deadline_s: float = Field(
        60.0,
        gt=0,
        le=3600,
        description=(
            "a tag request's time budget (a request's X-Deadline-Ms header may only shorten it): one "
            "that cannot be answered in time is refused at once (503 with Retry-After), one that runs "
            "past it is answered 504 and its queued work dropped"
        ),
    )
    # E.g. its node went away.
    retries: int = Field(
        2, ge=0, description="a downstream replica that died mid-request is retried this often"
    )

    @field_validator("auth", mode="before")
    @classmethod
    def _auth_off(cls, value: Any) -> Any:
        # YAML reads `auth: off` as false; both spellings turn the check off, and only they do.
        if value is False or (isinstance(value, str) and value.strip().lower() == "off"):
            return {"enabled": False}
        return value
