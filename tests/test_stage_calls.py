"""The ingress's batching of recall and ranking across concurrent requests (deployments/stage_calls.py):
pure logic over stand-ins for the shard deployments and the ranking models, which record the calls
they get. Each request must get exactly its own items' answers, whatever batch it went in."""

from __future__ import annotations

import asyncio

import numpy as np

from deployments.stage_calls import StageCalls
from graph_store import RecallConfig
from llm4tag import flow


class Response:
    """What a DeploymentHandle call returns: awaitable, and cancellable."""

    def __init__(self, value, delay: float):
        self.value, self.delay = value, delay

    def __await__(self):
        return self._answer().__await__()

    async def _answer(self):
        await asyncio.sleep(self.delay)
        return self.value

    def cancel(self) -> None:
        pass


class Method:
    def __init__(self, answer, calls: list):
        self.answer, self.calls = answer, calls

    def remote(self, *args):
        self.calls.append(args)
        return Response(self.answer(*args), 0.05)


class Shard:
    """A shard whose hits for a vector are (shard name, the vector's first component)."""

    def __init__(self, name: str):
        self.calls: list = []
        self.search = Method(lambda vectors: [(name, float(v[0])) for v in vectors], self.calls)


class Models:
    """Ranking models whose scored candidates of an item are its text, tagged with the models' name."""

    def __init__(self, name: str):
        self.name, self.calls = name, []

    def rank(self, contents, vectors, hits, recall):
        self.calls.append(list(contents))
        return [[(self.name, c, h)] for c, h in zip(contents, hits, strict=True)]


def calls(shards) -> StageCalls:
    return StageCalls(None, shards, None, None, None, RecallConfig(), 0, 1, None, lambda load: None)


def test_concurrent_searches_share_one_call_per_shard_and_each_gets_its_own_hits():
    shards = [Shard("s0"), Shard("s1")]
    stage = calls(shards)
    requests = [np.array([[float(10 * r + i)] for i in range(r + 1)], np.float32) for r in range(5)]

    async def scenario():
        return await asyncio.gather(*(stage.answer(flow.Search(v)) for v in requests))

    answers = asyncio.run(scenario())
    for r, answer in enumerate(answers):
        assert answer == [[(s, float(10 * r + i)) for i in range(r + 1)] for s in ("s0", "s1")]
    # Queued together, they went as one search call per shard.
    assert len(shards[0].calls) == len(shards[1].calls) == 1


def test_concurrent_rankings_go_as_one_call_per_ranking_and_keep_their_own_ranking():
    stage = calls([Shard("s0")])
    old, new = Models("old"), Models("new")
    # A refit read between requests: the ones routed by the old ranking are ranked by it.
    requests = [(old if r % 2 else new, [f"text {r}.{i}" for i in range(2)]) for r in range(6)]

    async def scenario():
        return await asyncio.gather(
            *(
                stage.answer(
                    flow.Rank(texts, np.zeros((len(texts), 1), np.float32), [f"hits of {t}" for t in texts]),
                    ranking=type("Ranking", (), {"models": models})(),
                )
                for models, texts in requests
            )
        )

    answers = asyncio.run(scenario())
    for (models, texts), answer in zip(requests, answers, strict=True):
        assert answer == [[(models.name, t, f"hits of {t}")] for t in texts]
    assert sum(len(c) for c in old.calls + new.calls) == 12
    assert len(old.calls) + len(new.calls) < len(requests)  # batched: fewer calls than requests
