"""What the stage deployments share: batch sizes, threads. (Their settings arrive typed: the app
binds llm4tag's Settings and the service's Batching to each deployment.)"""

from __future__ import annotations

import asyncio

from llm4tag.service import Batching


def configure_batching(method, batching: Batching) -> None:
    """Apply the batch size and wait from config to a @serve.batch method (its decorator holds defaults)."""
    method.set_max_batch_size(batching.max_batch_size)
    method.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)


async def in_thread(function, *args):
    # Model calls run off the replica's event loop, which must stay free for health checks and for
    # queueing the next batch while this one computes.
    return await asyncio.to_thread(function, *args)
