"""The Serve twin of ``TaggingPipeline.answer``: each call of a flow (llm4tag/flow.py) answered by the
stage deployments, one call per item (the encoder and the LLM stages batch them) or per shard
(recall); ranking runs in the ingress itself, which holds the store's ranking, and so do the sample
writes of feedback (the ingress holds the store's knowledge bases: they are always up, even while the
LLM stages hold no replica).

The recall and the ranking of concurrent requests are batched here (deployments/_batching.py, no
wait): the requests that arrive while a batch runs go together as the next one, one search call per
shard and one ranking call for all of them. Their fixed costs (a Ray round trip, the ranker's model
calls) are then paid once per batch instead of once per request; a lone request waits for nothing.
Both are row-wise, so a request's rows do not depend on its batch.

A replica that died mid-call is retried on another (Serve replaces it); a caller that gives up (its
deadline passed, its client went away) cancels the call in the stage too; a stage that refuses more
work (Serve's back pressure) is a 503.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from deployments._batching import QueueBatcher
from graph_store import RecallConfig, shard_of
from llm4tag import flow
from llm4tag.errors import PromptTooLong
from llm4tag.knowledge.store_knowledge import StoreKnowledge
from llm4tag.ranking.store_routing import StoredRanking
from llm4tag.service.http_schema import RequestError
from llm4tag.service.refusal import Refusal

RETRYABLE = (ActorDiedError, ActorUnavailableError, RayActorError, DeploymentUnavailableError)
# Requests per recall or ranking batch at most (each of up to service.limits.max_items items).
BATCH_REQUESTS = 64


class Overloaded(Refusal):
    """A stage refused more work (Serve's back pressure): 503 with Retry-After."""

    status = 503

    def __init__(self, stage: str, retry_after_s: int):
        super().__init__(
            f"the service is overloaded (stage {stage}); retry later",
            "service",
            headers={"Retry-After": str(retry_after_s)},
        )


class StageCalls:
    """The stage deployments' handles, and the answers to a flow's calls over them."""

    def __init__(
        self,
        encoder,
        shards: list,
        generator,
        calibrator,
        knowledge: StoreKnowledge,
        recall: RecallConfig,
        retries: int,
        retry_after_s: int,
        metrics,
        observe_load: Callable[[dict], None],
    ):
        """``observe_load``: told each Generator replica's load (its answers carry it; admission)."""
        self.encoder, self.shards, self.generator, self.calibrator = encoder, shards, generator, calibrator
        self.knowledge = knowledge
        self.searches = QueueBatcher(self._search_batch, BATCH_REQUESTS, 0.0, concurrency=2)
        self.ranks = QueueBatcher(self._rank_batch, BATCH_REQUESTS, 0.0)
        self.recall, self.retries, self.retry_after_s = recall, retries, retry_after_s
        self.metrics, self.observe_load = metrics, observe_load

    async def call(self, stage: str, method, *args):
        """One downstream call, retried on another replica if its replica died."""
        for attempt in range(self.retries + 1):
            response = method.remote(*args)
            try:
                return await response
            except asyncio.CancelledError:
                response.cancel()
                raise
            except BackPressureError as exc:
                raise Overloaded(stage, self.retry_after_s) from exc
            except RETRYABLE:
                if attempt == self.retries:
                    raise
                self.metrics.retries.inc(tags={"stage": stage})
                await asyncio.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")

    async def item_call(self, stage: str, index: int, method, *args):
        """A call for one item of the request: a prompt that does not fit the model is that item's
        413 (the other requests of the stage's batch are answered; deployments/_batching.py)."""
        try:
            return await self.call(stage, method, *args)
        except PromptTooLong as exc:
            raise RequestError(
                "makes a prompt longer than the model's context (llm.max_model_len): shorten it",
                f"items[{index}].text",
                413,
            ) from exc

    async def answer(self, call: flow.Call, ranking: StoredRanking | None = None) -> Any:
        """``ranking``: the store's ranking the request was routed by (answers Rank)."""
        if isinstance(call, flow.Encode):
            encode = self.encoder.encode
            vectors = await asyncio.gather(*(self.call("encode", encode, c) for c in call.contents))
            return np.stack(vectors)
        if isinstance(call, flow.Search):
            return await self.searches.submit(call.vectors)
        if isinstance(call, flow.Rank):
            return await self.ranks.submit((ranking.models, call.contents, call.vectors, call.hits))
        if isinstance(call, flow.Generate):
            return await self._generate(call)
        if isinstance(call, flow.Calibrate):
            # A Calibrator deployment judges the item alone (figure 5): it holds no conversation.
            return await asyncio.gather(
                *(
                    self.item_call("calibrate", index, self.calibrator.judge, (content, list(tags), None))
                    for index, (content, tags) in enumerate(zip(call.contents, call.tags, strict=True))
                )
            )
        if isinstance(call, flow.WriteEdges):
            return await self._write_edges(call)
        if isinstance(call, flow.WriteSamples):
            return await asyncio.to_thread(self.knowledge.record_samples, call.samples, call.vectors)
        if isinstance(call, flow.Writes):
            return await asyncio.gather(*(self.answer(w) for w in call.writes), return_exceptions=True)
        raise TypeError(f"no answer to {type(call).__name__}")

    async def _search_batch(self, requests: list[np.ndarray]) -> list[list]:
        """Each request's hits per shard, from one search call per shard for the whole batch."""
        joined = requests[0] if len(requests) == 1 else np.concatenate(requests)
        per_shard = await asyncio.gather(*(self.call("recall", s.search, joined) for s in self.shards))
        answers, start = [], 0
        for vectors in requests:
            answers.append([hits[start : start + len(vectors)] for hits in per_shard])
            start += len(vectors)
        return answers

    def _rank_batch(self, requests: list[tuple]) -> list[list]:
        """Each request's scored candidates, from one ranking call per ranking in the batch (a refit
        read meanwhile: requests keep the ranking they were routed by)."""
        answers: list = [None] * len(requests)
        groups: dict[int, list[int]] = {}
        for position, (models, *_) in enumerate(requests):
            groups.setdefault(id(models), []).append(position)
        for positions in groups.values():
            models = requests[positions[0]][0]
            contents = [c for p in positions for c in requests[p][1]]
            vectors = np.concatenate([requests[p][2] for p in positions])
            hits = [h for p in positions for h in requests[p][3]]
            scored, start = models.rank(contents, vectors, hits, self.recall), 0
            for p in positions:
                answers[p] = scored[start : start + len(requests[p][1])]
                start += len(requests[p][1])
        return answers

    async def _generate(self, call: flow.Generate) -> flow.Timed:
        """The generations (with their verdicts when judged in the call), and the milliseconds of the
        call that judging took (the longest batch's: the items were judged in parallel batches), so
        that timings report it as calibrate. Each answer carries its replica's load."""
        results = await asyncio.gather(
            *(
                self.item_call(
                    "generate",
                    index,
                    self.generator.generate,
                    {"id": i, "content": c, "vector": v, "candidates": cands},
                )
                for index, (i, c, v, cands) in enumerate(
                    zip(call.ids, call.contents, call.vectors, call.candidates, strict=True)
                )
            )
        )
        for *_, load in results:
            self.observe_load(load)
        if not call.judge:
            return flow.Timed([generation for generation, *_ in results], {})
        if any(verdicts is None for _, verdicts, _, _ in results):
            raise AssertionError("the Generator replicas do not judge: their settings differ")
        judge_ms = 1000 * max(seconds for _, _, seconds, _ in results)
        return flow.Timed([(g, verdicts) for g, verdicts, _, _ in results], {"calibrate": judge_ms})

    async def _write_edges(self, call: flow.WriteEdges) -> None:
        """Durable upserts in each item's owning shard (its journal is followed by every replica)."""
        groups: dict[int, list[int]] = {}
        for row, item_id in enumerate(call.ids):
            groups.setdefault(shard_of(item_id, len(self.shards)), []).append(row)
        await asyncio.gather(
            *(
                self.call(
                    "record",
                    self.shards[shard].record,
                    [call.ids[r] for r in rows],
                    call.vectors[rows],
                    [call.tags[r] for r in rows],
                    [call.texts[r] for r in rows],
                )
                for shard, rows in groups.items()
            )
        )
