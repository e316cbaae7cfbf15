"""A request batcher: the next batch is gathered only when the model (or a slot) is free. The LLM
stages batch their requests with it, and the ingress batches the recall and ranking of concurrent
requests (deployments/stage_calls.py), so that a batch grows with the load and an idle service adds no
wait to a lone request (``wait_s`` 0).

Ray Serve 2.60's `@serve.batch` forms batches in a loop that does not wait for the running batch
(ray/serve/batching.py `_process_batches`: `wait_for_batch`, then a task that queues on the
`max_concurrent_batches` semaphore). While a multi-second LLM batch runs, the requests arriving behind
it are cut into a line of size-1 batches, one per wait window: measured on the tiny model with 4
clients, most generator batches had size 1 and requests mostly waited for each other. Here the worker
takes everything queued (up to the maximum) once the previous batch is done, so batches grow with load.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from llm4tag.errors import PromptTooLong

# Errors that belong to one request of a batch, not to the batch.
REQUEST_FAULTS = (PromptTooLong,)


class QueueBatcher:
    def __init__(
        self,
        function: Callable[[list[Any]], Sequence[Any]],
        max_batch_size: int,
        wait_s: float,
        on_batch: Callable[[int], None] | None = None,
        concurrency: int = 1,
    ):
        """``function``: blocking (it runs in a worker thread) or a coroutine function (awaited on the
        loop); ``concurrency``: batches in flight at once (each waits for a free slot before it is
        gathered)."""
        self.function = function
        self.slots = max(1, int(concurrency))
        self.on_batch = on_batch  # told each batch's size (the deployments feed a metric)
        self.max_batch_size = max(1, int(max_batch_size))
        self.wait_s = max(0.0, float(wait_s))
        self.queue: asyncio.Queue | None = None
        self.worker: asyncio.Task | None = None
        self.batch_sizes: list[int] = []  # recent batch sizes, for describe()
        # Compute seconds per request of the last batch (its time over its size): what admission
        # control needs of this stage, without the time requests waited in the queue.
        self.item_seconds = 0.0
        self.running: set[asyncio.Task] = set()  # batches in flight beside the worker (concurrency > 1)

    async def submit(self, request: Any) -> Any:
        if self.queue is None:
            self.queue = asyncio.Queue()
        if self.worker is None or self.worker.done():
            self.worker = asyncio.create_task(self._run())
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((request, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        free = asyncio.Semaphore(self.slots)
        while True:
            await free.acquire()
            batch = [await self.queue.get()]
            deadline = loop.time() + self.wait_s
            while len(batch) < self.max_batch_size:
                if not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), remaining))
                except TimeoutError:
                    break
            live = [(request, future) for request, future in batch if not future.done()]  # cancelled callers
            if not live:
                free.release()
                continue
            self.batch_sizes = [*self.batch_sizes[-99:], len(live)]
            if self.on_batch is not None:
                self.on_batch(len(live))
            if self.slots == 1:
                await self._answer(live, loop, free)
            else:
                self.running.add(asyncio.create_task(self._answer(live, loop, free)))
                self.running = {task for task in self.running if not task.done()}

    async def _answer(self, live: list, loop, free: asyncio.Semaphore) -> None:
        try:
            started = loop.time()
            outcomes = await self._outcomes([request for request, _ in live])
            self.item_seconds = (loop.time() - started) / len(live)
            for (_, future), outcome in zip(live, outcomes, strict=True):
                if future.done():
                    continue
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
        finally:
            free.release()

    def check(self) -> None:
        """Raise if the worker stopped on an error (it never should: every batch's error is its
        callers'); a health check calls this."""
        if self.worker is not None and self.worker.done() and not self.worker.cancelled():
            error = self.worker.exception()
            if error is not None:
                raise RuntimeError(f"the batch worker stopped: {error!r}") from error

    def queued(self) -> int:
        """Requests waiting for a batch (not those of the batch running now)."""
        return self.queue.qsize() if self.queue is not None else 0

    async def _outcomes(self, requests: list[Any]) -> list[Any]:
        """Each request's result, or the exception that is its answer. A request's own fault (a prompt
        too long for the model) fails that request alone: the batch runs again one request at a time,
        so the others are answered. Any other error is every caller's."""
        try:
            if inspect.iscoroutinefunction(self.function):
                results = await self.function(requests)
            else:
                results = await asyncio.to_thread(self.function, requests)
        except REQUEST_FAULTS as exc:
            if len(requests) == 1:
                return [exc]
            return [(await self._outcomes([request]))[0] for request in requests]
        except Exception as exc:
            return [exc] * len(requests)
        if len(results) != len(requests):
            error = RuntimeError(
                f"batch function returned {len(results)} results for {len(requests)} requests"
            )
            return [error] * len(requests)
        return list(results)
