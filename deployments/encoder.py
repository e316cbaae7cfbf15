"""Encoder deployment: item texts -> unit vectors, batched across concurrent requests."""

from __future__ import annotations

import numpy as np
from ray import serve

from deployments.stage_kit import configure_batching, in_thread
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
        configure_batching(self.encode, batching)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def encode(self, texts: list[str]) -> list[np.ndarray]:
        return list(await in_thread(self.encoder.encode, texts))

    async def check_health(self) -> None:
        # Serve calls this every health_check_period_s: a model that can no longer encode (memory,
        # a broken thread pool) marks the replica unhealthy, and Serve replaces it.
        await in_thread(self.encoder.encode, ["health check"])

    def describe(self) -> dict:
        return {"encoder": self.encoder.id}
