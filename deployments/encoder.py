"""Encoder deployment: item texts -> unit vectors, batched across concurrent requests: the texts that
arrive while a batch encodes go together as the next one (deployments/_batching.py), so a lone text
waits for nothing and batches grow with the load."""

from __future__ import annotations

import numpy as np
from ray import serve

from deployments._batching import QueueBatcher
from deployments.serve_metrics import batch_size_histogram
from deployments.stage_kit import in_thread
from graph_store import EncoderMismatchError
from llm4tag.config import Settings
from llm4tag.encoder import Encoder
from llm4tag.service.settings import Batching


@serve.deployment(
    name="Encoder", ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=256, max_queued_requests=1024
)
class EncoderDeployment:
    def __init__(self, settings: Settings, batching: Batching, expected_encoder_id: str):
        self.encoder = Encoder(settings.encoder)
        if self.encoder.id != expected_encoder_id:
            raise EncoderMismatchError(
                f"the configured encoder is '{self.encoder.id}' but the store was built with "
                f"'{expected_encoder_id}'; configure the encoder the store was built with"
            )
        sizes = batch_size_histogram()
        self.batcher = QueueBatcher(
            self.encoder.encode, batching.max_batch_size, batching.batch_wait_timeout_s, sizes.observe
        )

    async def encode(self, text: str) -> np.ndarray:
        return await self.batcher.submit(text)

    async def check_health(self) -> None:
        # Serve calls this every health_check_period_s: a model that can no longer encode (memory,
        # a broken thread pool) or a batcher whose worker died marks the replica unhealthy, and Serve
        # replaces it.
        self.batcher.check()
        await in_thread(self.encoder.encode, ["health check"])

    def describe(self) -> dict:
        return {"encoder": self.encoder.id, "recent_batch_sizes": self.batcher.batch_sizes[-20:]}
