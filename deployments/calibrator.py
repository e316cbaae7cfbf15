"""Calibrator deployment: Yes/No confidence per (item, generated tag); tags under the threshold drop."""

from __future__ import annotations

from ray import serve

from deployments._common import configure_batching, in_thread, settings_of
from llm4tag.calibrator import Judged
from llm4tag.pipeline import TaggingPipeline


@serve.deployment(name="Calibrator", ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64)
class Calibrator:
    def __init__(self, store: str, settings: dict, batching: dict):
        config = settings_of(settings)
        config.pipeline.calibrate = True
        # Retrieval is the generator's; the calibrator needs only the vocabulary and the LLM.
        config.pipeline.num_samples = config.pipeline.num_snippets = 0
        self.pipeline = TaggingPipeline.open(store, config, load_graph=False)
        configure_batching(self.judge, batching)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.02)
    async def judge(self, requests: list[tuple[str, list[str]]]) -> list[list[Judged]]:
        contents = [content for content, _ in requests]
        tags = [item_tags for _, item_tags in requests]
        return await in_thread(self.pipeline.calibrate, contents, tags)

    def describe(self) -> dict:
        return {
            "model": getattr(self.pipeline.engine, "name", None),
            "threshold": self.pipeline.config.threshold,
        }
