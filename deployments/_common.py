"""What the stage deployments share: settings from the app's arguments, batch sizes, threads."""

from __future__ import annotations

import asyncio
from typing import Any

from llm4tag.config import Settings, settings_from_dict


def settings_of(data: dict[str, Any] | None) -> Settings:
    return settings_from_dict(data or {})


def configure_batching(method, batching: dict[str, Any]) -> None:
    """Apply the batch size and wait from config to a @serve.batch method (its decorator holds defaults)."""
    method.set_max_batch_size(int(batching["max_batch_size"]))
    method.set_batch_wait_timeout_s(float(batching["batch_wait_timeout_s"]))


async def in_thread(function, *args):
    # Model calls run off the replica's event loop, which must stay free for health checks and for
    # queueing the next batch while this one computes.
    return await asyncio.to_thread(function, *args)


class Overloaded(Exception):
    """A stage refused more work (Serve's back pressure): the ingress answers 503 with Retry-After."""


def current_replica():
    """The deployment object of this replica, for routes kept outside the ingress class (a FastAPI
    dependency): functions of a module are shipped to the replica by reference, where Serve's
    class-based-view conversion of mixin methods does not happen."""
    from ray import serve

    return serve.get_replica_context().servable_object
