"""Generator deployment: the LLM picks tags among the candidates, with retrieved samples and knowledge.

Replicas share the store's knowledge folder: the samples feedback appends (the ingress records them,
llm4tag/knowledge/store_knowledge.py) are followed by every replica, each refreshing before a batch.
When the store's route plan sends nothing to the LLM the deployment holds no replica until an item is
routed to it (deployments/app.py: on_demand). When the judgments
continue the generation conversations it also runs the calibration stage (``Judging``), on the engine
that holds them.
"""

from __future__ import annotations

import time

import numpy as np
import ray
from ray import serve

from deployments._adapters import AdapterFollower
from deployments._batching import QueueBatcher
from deployments.calibrator import Judging
from deployments.serve_metrics import batch_size_histogram
from deployments.stage_kit import in_thread, lower_priority
from graph_store import TagWatch
from llm4tag.calibrator import Judged
from llm4tag.config import Settings
from llm4tag.flow import judgment_context
from llm4tag.generator import Generation
from llm4tag.pipeline import TaggingPipeline
from llm4tag.service.settings import Batching

# The generation, its verdicts when this replica judges (None otherwise), the seconds its batch spent
# judging, and this replica's load (llm4tag/service/admission.py: the ingress's admission control reads it).
GenerateResult = tuple[Generation, list[Judged] | None, float, dict]


# A queue limit on every stage, not only the ingress: past it a stage call fails fast
# (BackPressureError), which the ingress answers 503 with Retry-After.
@serve.deployment(
    name="Generator", ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64, max_queued_requests=128
)
class GeneratorDeployment(Judging):
    def __init__(
        self, store: str, settings: Settings, batching: Batching, journal: str | None = None, nice: int = 0
    ):
        lower_priority(nice)  # before the engine starts its threads
        # Judging here only when the judgments continue this stage's conversations (app.py).
        judges = settings.judges_with_generation
        config = settings.with_overrides({"pipeline": {"calibrate": judges}})
        # Opened before the vocabulary is read, so that a tag added meanwhile shows as a change.
        self.vocabulary = (TagWatch(store, journal), store, journal)
        self.pipeline = TaggingPipeline.open(store, config, load_graph=False)
        self.adapter = AdapterFollower(lambda: self.pipeline.engine, "generator", config.llm.adapters_file)
        sizes = batch_size_histogram()
        self.batcher = QueueBatcher(
            self._generate, batching.max_batch_size, batching.batch_wait_timeout_s, sizes.observe
        )
        self.judges = judges
        self.name = ray.get_runtime_context().get_actor_name() or "generator"
        if judges:
            self._start_judging(self.pipeline, config.llm.adapters_file)

    async def generate(self, request: dict) -> GenerateResult:
        # A caller that gives up (its deadline passed, its client went away) cancels this call: its
        # request leaves the batcher's queue without being computed (deployments/_batching.py).
        generation, verdicts, seconds = await self.batcher.submit(request)
        load = {"replica": self.name, "item_s": self.batcher.item_seconds, "queued": self.batcher.queued()}
        return generation, verdicts, seconds, load

    def check_health(self) -> None:
        # Serve calls this every health_check_period_s: a batcher whose worker died would take requests
        # and never answer them, so the replica is reported unhealthy and replaced.
        self.batcher.check()

    def _generate(self, requests: list[dict]) -> list[tuple[Generation, list[Judged] | None, float]]:
        # The LLM is loaded by the first batch routed to it (a store whose plan sent nothing starts
        # without it), before the adapter file is read.
        self.pipeline.load_engine()
        self.adapter.sync()  # between batches: this batch runs wholly on one adapter
        # Tags added since the last batch (POST /v1/admin/tags, `llm4tag vocab add`): their labels and
        # descriptions, in this replica's generations and judgments.
        self.pipeline.follow_vocabulary(*self.vocabulary)
        for base in (self.pipeline.samples, self.pipeline.knowledge):
            if base is not None:
                base.refresh()
        contents = [r["content"] for r in requests]
        generations = self.pipeline.generate(
            [r["id"] for r in requests],
            contents,
            np.stack([r["vector"] for r in requests]),
            [r["candidates"] for r in requests],
        )
        if not self.judges:
            return [(g, None, 0.0) for g in generations]
        # Judged now, while this replica holds the conversations the judgments continue.
        started = time.perf_counter()
        verdicts = self._judge(
            [(c, list(g.tags), judgment_context(g)) for c, g in zip(contents, generations, strict=True)]
        )
        seconds = time.perf_counter() - started
        return [(g, v, seconds) for g, v in zip(generations, verdicts, strict=True)]

    def describe(self, role: str = "generator") -> dict:
        if role == "calibrator" and self.judges:
            return {"colocated_with": "Generator", **self.describe_judging()}
        for base in (self.pipeline.samples, self.pipeline.knowledge):
            if base is not None:
                base.refresh()
        return {
            "replica": ray.get_runtime_context().get_actor_name(),
            "llm": self.pipeline.llm_status,
            "model": getattr(self.pipeline.engine, "name", None),
            "mode": self.pipeline.mode,
            "samples": len(self.pipeline.samples) if self.pipeline.samples is not None else 0,
            "snippets": len(self.pipeline.knowledge) if self.pipeline.knowledge is not None else 0,
            "recent_batch_sizes": self.batcher.batch_sizes[-20:],
            **self.adapter.describe(),
        }

    async def sync_adapters(self, role: str = "generator") -> dict:
        follower = self.judge_adapter if role == "calibrator" and self.judges else self.adapter
        await in_thread(follower.sync)
        # Without its LLM loaded the replica reads the file when it loads it (the first routed batch).
        return {"llm": self.pipeline.llm_status, **follower.describe()}
