"""The LLM stages' request batcher (pure asyncio logic)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from deployments._batching import QueueBatcher
from llm4tag.errors import PromptTooLong


def test_requests_arriving_during_a_batch_form_the_next_batch_together():
    batches: list[list[int]] = []
    first_started = threading.Event()

    def slow_double(requests):
        batches.append(list(requests))
        first_started.set()
        time.sleep(0.3)
        return [2 * r for r in requests]

    async def scenario():
        batcher = QueueBatcher(slow_double, max_batch_size=4, wait_s=0.0)
        first = asyncio.create_task(batcher.submit(0))
        await asyncio.to_thread(first_started.wait, 5)
        rest = [asyncio.create_task(batcher.submit(n)) for n in range(1, 7)]
        return await asyncio.gather(first, *rest)

    assert asyncio.run(scenario()) == [0, 2, 4, 6, 8, 10, 12]
    # While the first (size-1) batch ran, six arrived: they go as the maximum (4), then the rest (2).
    assert batches == [[0], [1, 2, 3, 4], [5, 6]]


def test_the_wait_gathers_requests_that_arrive_close_together():
    batches: list[list[int]] = []

    def record(requests):
        batches.append(list(requests))
        return requests

    async def scenario():
        batcher = QueueBatcher(record, max_batch_size=8, wait_s=0.2)
        tasks = []
        for n in range(3):
            tasks.append(asyncio.create_task(batcher.submit(n)))
            await asyncio.sleep(0.02)
        return await asyncio.gather(*tasks)

    assert asyncio.run(scenario()) == [0, 1, 2] and batches == [[0, 1, 2]]


def test_an_error_reaches_every_caller_of_its_batch_and_the_batcher_goes_on():
    calls = []

    def flaky(requests):
        calls.append(list(requests))
        if len(calls) == 1:
            raise ValueError("model failed")
        return requests

    async def scenario():
        batcher = QueueBatcher(flaky, max_batch_size=8, wait_s=0.05)
        failed = await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
        later = await batcher.submit(3)
        return failed, later

    failed, later = asyncio.run(scenario())
    assert all(isinstance(e, ValueError) for e in failed) and later == 3


def test_a_wrong_number_of_results_is_an_error():
    async def scenario():
        return await QueueBatcher(lambda requests: [], 4, 0.0).submit(1)

    with pytest.raises(RuntimeError, match="0 results for 1"):
        asyncio.run(scenario())


def test_a_prompt_too_long_fails_only_its_own_request():
    calls = []

    def render(requests):
        calls.append(list(requests))
        for request in requests:
            if len(request) > 5:
                raise PromptTooLong(f"prompt of {len(request)} tokens exceeds llm.max_model_len=5")
        return [request.upper() for request in requests]

    async def scenario():
        batcher = QueueBatcher(render, max_batch_size=8, wait_s=0.05)
        return await asyncio.gather(
            *(batcher.submit(r) for r in ("ab", "much too long", "cd")), return_exceptions=True
        )

    first, failed, last = asyncio.run(scenario())
    assert (first, last) == ("AB", "CD")
    assert isinstance(failed, PromptTooLong) and "exceeds" in str(failed)
    assert calls[0] == ["ab", "much too long", "cd"]  # one batch, then each alone


def test_a_cancelled_request_is_dropped_from_the_queue_and_never_computed():
    batches: list[list[int]] = []
    first_started = threading.Event()

    def slow(requests):
        batches.append(list(requests))
        first_started.set()
        time.sleep(0.3)
        return list(requests)

    async def scenario():
        batcher = QueueBatcher(slow, max_batch_size=8, wait_s=0.0)
        first = asyncio.create_task(batcher.submit(0))
        await asyncio.to_thread(first_started.wait, 5)
        waiting = [asyncio.create_task(batcher.submit(n)) for n in range(1, 5)]
        await asyncio.sleep(0.05)
        assert batcher.queued() == 4
        # The caller gave up (the ingress cancels a request past its deadline): its request waits in
        # the queue, and the next batch leaves it out.
        waiting[1].cancel()
        waiting[2].cancel()
        answers = await asyncio.gather(first, waiting[0], waiting[3])
        assert waiting[1].cancelled() and waiting[2].cancelled()
        return answers, batcher

    answers, batcher = asyncio.run(scenario())
    assert answers == [0, 1, 4]
    assert batches == [[0], [1, 4]]
    # The last batch's compute time per request: what the ingress's admission control reads.
    assert 0.1 < batcher.item_seconds < 1.0
    batcher.check()  # the worker is alive: a health check passes


def test_a_coroutine_function_batches_on_the_loop_and_slots_run_batches_side_by_side():
    """The ingress batches recall (awaited Ray calls) with two batches in flight: the requests that
    arrive while both slots are busy go together as the next batch."""
    batches: list[list[int]] = []
    running, most = 0, 0

    async def search(requests):
        nonlocal running, most
        batches.append(list(requests))
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.2)
        running -= 1
        return [10 * r for r in requests]

    async def scenario():
        batcher = QueueBatcher(search, max_batch_size=8, wait_s=0.0, concurrency=2)
        first = [asyncio.create_task(batcher.submit(n)) for n in (0, 1)]
        await asyncio.sleep(0.05)  # the first batch runs; the second slot is free
        second = asyncio.create_task(batcher.submit(2))
        await asyncio.sleep(0.05)  # both slots are busy now
        rest = [asyncio.create_task(batcher.submit(n)) for n in (3, 4, 5)]
        return await asyncio.gather(*first, second, *rest)

    assert asyncio.run(scenario()) == [0, 10, 20, 30, 40, 50]
    assert batches == [[0, 1], [2], [3, 4, 5]] and most == 2
