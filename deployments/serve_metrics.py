"""The service's own metrics (ray.serve.metrics): exported by Ray's metrics agent as ray_llm4tag_*
series on the Prometheus endpoint and shown on the Ray dashboard's Metrics page."""

from __future__ import annotations

from ray.serve.metrics import Counter, Gauge, Histogram

from llm4tag.flow import Tagged

LATENCY_MS = [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000]


class ServiceMetrics:
    def __init__(self):
        self.items_tagged = Counter("llm4tag_items_tagged", description="Items tagged over HTTP.")
        self.requests = Counter(
            "llm4tag_requests",
            description="Requests by endpoint and status code.",
            tag_keys=("route", "status"),
        )
        self.stage_latency = Histogram(
            "llm4tag_stage_latency_ms",
            description="Per-request latency of each pipeline stage and end to end (stage=total).",
            boundaries=LATENCY_MS,
            tag_keys=("stage",),
        )
        self.candidates = Histogram(
            "llm4tag_candidates_per_item",
            description="Candidate tags recalled per item.",
            boundaries=[1, 5, 10, 15, 20, 25, 30, 40, 60],
        )
        self.confidence = Histogram(
            "llm4tag_tag_confidence",
            description="Final confidence of every tag shown or judged (kept and dropped).",
            boundaries=[round(0.1 * i, 1) for i in range(1, 11)],
        )
        self.tags_kept = Counter("llm4tag_tags_kept", description="Tags kept (over the cut).")
        self.tags_dropped = Counter("llm4tag_tags_dropped", description="Tags dropped (under the cut).")
        # The share the ranker settles: to=ranker / (to=ranker + to=llm) (pipeline.route).
        self.items_routed = Counter(
            "llm4tag_items_routed",
            description="Items tagged by the ranker alone (to=ranker) or sent to the LLM (to=llm).",
            tag_keys=("to",),
        )
        self.feedback = Counter("llm4tag_feedback_items", description="Corrected annotations recorded.")
        self.retries = Counter(
            "llm4tag_stage_retries", description="Calls retried after a replica died.", tag_keys=("stage",)
        )

    def observe_tagged(self, tagged: Tagged) -> None:
        """A tagged request: its candidates, its tags' confidences and cuts, and where routing sent it."""
        for route in tagged.routes:
            self.candidates.observe(len(route.scored))
        for final in tagged.final:
            for tag in final:
                if tag.confidence == tag.confidence:
                    self.confidence.observe(tag.confidence)
                (self.tags_kept if tag.kept else self.tags_dropped).inc()
        self.items_tagged.inc(len(tagged.rows))
        if tagged.sent_to_llm:
            self.items_routed.inc(tagged.sent_to_llm, tags={"to": "llm"})
        if len(tagged.rows) - tagged.sent_to_llm:
            self.items_routed.inc(len(tagged.rows) - tagged.sent_to_llm, tags={"to": "ranker"})


def adapter_metrics() -> tuple[Gauge, Counter]:
    """The adapter each LLM replica serves per role (1 = in use, 0 = swapped out; adapter=base: none),
    and the number of swaps."""
    gauge = Gauge(
        "llm4tag_adapter_in_use",
        description="LoRA adapter in use per role (1), or swapped out (0); adapter=base means none.",
        tag_keys=("role", "adapter"),
    )
    swaps = Counter("llm4tag_adapter_swaps", description="Adapters swapped in.", tag_keys=("role",))
    return gauge, swaps


def batch_size_histogram() -> Histogram:
    """Requests per model batch in the model stages (each replica records its own)."""
    return Histogram(
        "llm4tag_batch_size",
        description="Requests per model batch (Encoder, Generator, Calibrator).",
        boundaries=[1, 2, 4, 8, 16, 32, 64],
    )
