"""What the stage deployments share: niceness, threads off the event loop. (Their settings arrive
typed: the app binds llm4tag's Settings and the service's Batching to each one; deployments/_batching.py
batches their requests.)"""

from __future__ import annotations

import asyncio
import os


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
