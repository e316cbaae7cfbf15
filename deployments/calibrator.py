"""Calibrator deployment: Yes/No confidence per (item, generated tag); tags under the threshold drop.

``Judging`` is the calibration stage itself, so that the Generator deployment can run it too: when the
judgments continue the generation conversations (``prompts.layout``), each batch is judged right after
it is generated, in the same call on the same replica, which holds those conversations
(deployments/app.py then binds no Calibrator deployment).
"""

from __future__ import annotations

from ray import serve

from deployments._adapters import AdapterFollower
from deployments._batching import QueueBatcher
from deployments.serve_metrics import batch_size_histogram
from deployments.stage_kit import in_thread, lower_priority
from graph_store import TagWatch
from llm4tag.calibrator import Judged
from llm4tag.config import Settings
from llm4tag.engines.base import Messages
from llm4tag.pipeline import TaggingPipeline
from llm4tag.service.settings import Batching

JudgeRequest = tuple[str, list[str], tuple[Messages, str] | None]


class Judging:
    def _start_judging(self, pipeline: TaggingPipeline, adapters_file: str | None) -> None:
        self.judging = pipeline
        self.judge_adapter = AdapterFollower(lambda: pipeline.engine, "calibrator", adapters_file)

    def _judge(self, requests: list[JudgeRequest]) -> list[list[Judged]]:
        # The LLM is loaded by the first batch routed to it (a store whose plan sent nothing starts
        # without it), before the adapter file is read.
        self.judging.load_engine()
        self.judge_adapter.sync()  # between batches: this batch runs wholly on one adapter
        return self.judging.calibrate(
            [content for content, _, _ in requests],
            [tags for _, tags, _ in requests],
            contexts=[context for _, _, context in requests],
        )

    def describe_judging(self) -> dict:
        return {
            "llm": self.judging.llm_status,
            "model": getattr(self.judging.engine, "name", None),
            "threshold": self.judging.config.threshold,
            "in_context": self.judging.settings.judgments_in_context,
            **self.judge_adapter.describe(),
        }


@serve.deployment(
    name="Calibrator", ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64, max_queued_requests=128
)
class CalibratorDeployment(Judging):
    def __init__(
        self, store: str, settings: Settings, batching: Batching, journal: str | None = None, nice: int = 0
    ):
        lower_priority(nice)  # before the engine starts its threads
        # Retrieval is the generator's; the calibrator needs only the vocabulary and the LLM.
        config = settings.with_overrides(
            {"pipeline": {"calibrate": True, "num_samples": 0, "num_snippets": 0}}
        )
        # Opened before the vocabulary is read (as the Generator's): tags added later are followed.
        self.vocabulary = (TagWatch(store, journal), store, journal)
        pipeline = TaggingPipeline.open(store, config, load_graph=False)
        self._start_judging(pipeline, config.llm.adapters_file)
        sizes = batch_size_histogram()
        self.batcher = QueueBatcher(
            self._judge_batch, batching.max_batch_size, batching.batch_wait_timeout_s, sizes.observe
        )

    async def judge(self, request: JudgeRequest) -> list[Judged]:
        return await self.batcher.submit(request)

    def _judge_batch(self, requests: list[JudgeRequest]) -> list[list[Judged]]:
        self.judging.follow_vocabulary(*self.vocabulary)  # tags added since: their descriptions
        return self._judge(requests)

    def check_health(self) -> None:
        self.batcher.check()  # as the Generator's (deployments/generator.py)

    def describe(self) -> dict:
        return {**self.describe_judging(), "recent_batch_sizes": self.batcher.batch_sizes[-20:]}

    async def sync_adapters(self, role: str = "calibrator") -> dict:
        await in_thread(self.judge_adapter.sync)
        return {"llm": self.judging.llm_status, **self.judge_adapter.describe()}
