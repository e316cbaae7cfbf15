"""Calibrator deployment: Yes/No confidence per (item, generated tag); tags under the threshold drop."""

from __future__ import annotations

from ray import serve

from deployments._adapters import AdapterFollower
from deployments._batching import QueueBatcher
from deployments._common import in_thread, settings_of
from deployments.serve_metrics import batch_size_histogram
from llm4tag.calibrator import Judged
from llm4tag.pipeline import TaggingPipeline


@serve.deployment(name="Calibrator", ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64)
class CalibratorDeployment:
    def __init__(self, store: str, settings: dict, batching: dict):
        config = settings_of(settings)
        config.pipeline.calibrate = True
        # Retrieval is the generator's; the calibrator needs only the vocabulary and the LLM.
        config.pipeline.num_samples = config.pipeline.num_snippets = 0
        self.pipeline = TaggingPipeline.open(store, config, load_graph=False)
        self.adapter = AdapterFollower(self.pipeline.engine, "calibrator", config.llm.adapters_file)
        sizes = batch_size_histogram()
        self.batcher = QueueBatcher(
            self._judge, batching["max_batch_size"], batching["batch_wait_timeout_s"], sizes.observe
        )

    async def judge(self, request: tuple[str, list[str]]) -> list[Judged]:
        return await self.batcher.submit(request)

    def _judge(self, requests: list[tuple[str, list[str]]]) -> list[list[Judged]]:
        self.adapter.sync()  # between batches: this batch runs wholly on one adapter
        return self.pipeline.calibrate([content for content, _ in requests], [tags for _, tags in requests])

    def describe(self) -> dict:
        return {
            "model": getattr(self.pipeline.engine, "name", None),
            "threshold": self.pipeline.config.threshold,
            "recent_batch_sizes": self.batcher.batch_sizes[-20:],
            **self.adapter.describe(),
        }

    async def sync_adapters(self) -> dict:
        await in_thread(self.adapter.sync)
        return self.adapter.describe()
