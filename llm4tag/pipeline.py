"""The tagging pipeline: recall -> knowledge-enhanced generation -> calibration -> optional write-back.

Plain Python over the core classes; the Serve deployments and the bulk job call the same stages.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from graph_store import Candidate, read_vocabulary
from llm4tag.calibrator import Calibrator, Judged, judges_in_context
from llm4tag.config import PipelineConfig, Settings
from llm4tag.data import Item
from llm4tag.engines.base import Engine
from llm4tag.errors import LLM4TagError
from llm4tag.generator import Generation, Generator, TagLabels
from llm4tag.prompts import Prompts
from llm4tag.recall import Recaller
from llm4tag.texts import item_text

log = logging.getLogger(__name__)

KNOWLEDGE_DIR = "knowledge"
MULTI_TAG_MEAN = 1.2


def store_vocabulary(store) -> tuple[list[str], list[str | None]]:
    graph = (store.shards[0] if hasattr(store, "shards") else store).graph
    return list(graph.tag_names), list(graph.tag_descriptions)


Vocabulary = tuple[list[str], list[str | None]]


@dataclass
class StageTimes:
    """Seconds and LLM tokens (computed, cached, generated) per stage, summed over calls."""

    seconds: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, dict[str, int]] = field(default_factory=dict)
    items: int = 0

    def add(
        self, stage: str, started: float, engine=None, before: tuple[int, int, int] | None = None
    ) -> float:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - started
        if engine is not None and before is not None:
            counts = self.tokens.setdefault(stage, {"prompt": 0, "cached": 0, "generated": 0})
            for key, value, old in zip(
                ("prompt", "cached", "generated"), _token_counts(engine), before, strict=True
            ):
                counts[key] += value - old
        return now


def _token_counts(engine) -> tuple[int, int, int]:
    stats = engine.stats
    return stats.prompt_tokens, stats.cached_tokens, stats.generated_tokens


class TaggingPipeline:
    def __init__(
        self,
        recaller: Recaller | None,
        engine: Engine | None,
        settings: Settings,
        samples=None,
        knowledge=None,
        max_tags: int | None = None,
        vocabulary: Vocabulary | None = None,
    ):
        self.recaller = recaller
        self.engine = engine
        self.settings = settings
        self.config: PipelineConfig = settings.pipeline
        if vocabulary is None:
            if recaller is None:
                raise LLM4TagError("a pipeline without a graph store needs the tag vocabulary")
            vocabulary = store_vocabulary(recaller.store)
        names, descriptions = vocabulary
        self.labels = TagLabels(names)
        self.descriptions = dict(zip(names, descriptions, strict=True))
        self.prompts = Prompts(settings.prompts)
        self.samples = samples
        self.knowledge = knowledge
        self.max_tags = max_tags or (1 if self.config.mode == "single" else self.config.max_tags)
        self.times = StageTimes()
        self.generator = None
        self.calibrator = None
        if engine is not None:
            self.generator = Generator(
                engine,
                self.prompts,
                self.labels,
                samples=samples,
                knowledge=knowledge,
                num_samples=self.config.num_samples,
                num_snippets=self.config.num_snippets,
                constrained=self.config.constrained,
            )
            if self.config.calibrate:
                self.calibrator = Calibrator(
                    engine,
                    self.prompts,
                    self.labels,
                    self.descriptions,
                    self.config.threshold,
                    in_context=judges_in_context(settings.llm, settings.prompts),
                )

    @classmethod
    def open(
        cls,
        store_dir: str | Path,
        settings: Settings,
        engine: Engine | None = None,
        load_engine: bool = True,
        writable: bool = False,
        load_graph: bool = True,
    ) -> TaggingPipeline:
        """Load the store, its knowledge bases and (unless given or not wanted) the LLM engine.

        ``writable`` opens the knowledge bases' append logs, so feedback is on disk before it returns.
        ``load_graph=False`` reads only the store's vocabulary: enough for the generation and
        calibration stages, which need neither the graph nor the encoder.
        """
        from llm4tag.engines import make_engine
        from llm4tag.knowledge import DomainKnowledgeBase, SampleKnowledgeBase

        recaller = vocabulary = None
        if load_graph:
            recaller = Recaller.open(store_dir, settings)
            encoder_id = recaller.encoder.id
        else:
            described = read_vocabulary(store_dir)
            vocabulary, encoder_id = (described.tags, described.descriptions), described.encoder_id
        folder = Path(store_dir) / KNOWLEDGE_DIR
        samples = knowledge = None
        if (folder / "samples").exists():
            samples = SampleKnowledgeBase.load(
                folder / "samples", expected_encoder_id=encoder_id, writable=writable
            )
        elif settings.pipeline.num_samples:
            log.warning("store %s has no sample knowledge base: prompts get no retrieved samples", store_dir)
        if (folder / "domain").exists():
            knowledge = DomainKnowledgeBase.load(
                folder / "domain", expected_encoder_id=encoder_id, writable=writable
            )
        elif settings.pipeline.num_snippets:
            log.warning("store %s has no domain knowledge base: prompts get no knowledge snippets", store_dir)
        mode = settings.pipeline.mode
        if mode == "auto":
            mode = "multi" if _annotated_mean(samples) > MULTI_TAG_MEAN else "single"
        max_tags = 1 if mode == "single" else settings.pipeline.max_tags
        if engine is None and load_engine:
            engine = make_engine(settings.llm)
        return cls(recaller, engine, settings, samples, knowledge, max_tags=max_tags, vocabulary=vocabulary)

    @property
    def mode(self) -> str:
        return "single" if self.max_tags == 1 else "multi"

    # -- the stages, each callable on its own (a Serve deployment or a Ray Data actor runs one)

    def encode(self, items: Sequence[Item]) -> tuple[list[str], np.ndarray]:
        """Each item's content text and its unit vector."""
        self._need(self.recaller, "an encoder")
        started = time.perf_counter()
        contents = [item_text(i, self.recaller.texts.item_fields) for i in items]
        vectors = self.recaller.encode(items)
        self.times.add("encode", started)
        return contents, vectors

    def recall(self, vectors: np.ndarray) -> list[list[Candidate]]:
        self._need(self.recaller, "a graph store")
        started = time.perf_counter()
        candidates = self.recaller.store.recall(vectors)
        self.times.add("recall", started)
        return candidates

    def generate(
        self,
        ids: Sequence[str],
        contents: Sequence[str],
        vectors: np.ndarray,
        candidates: Sequence[Sequence[str]],
    ) -> list[Generation]:
        self._need(self.generator, "an LLM engine")
        started, before = time.perf_counter(), _token_counts(self.engine)
        generations = self.generator.generate(ids, contents, vectors, candidates, self.max_tags)
        self.times.add("generate", started, self.engine, before)
        return generations

    def calibrate(
        self,
        contents: Sequence[str],
        tags: Sequence[Sequence[str]],
        generations: Sequence[Generation] | None = None,
        contexts: Sequence[tuple | None] | None = None,
    ) -> list[list[Judged]]:
        """Verdicts per item; without calibration every tag is kept with an unknown (NaN) confidence.
        ``generations`` (or their ``judgment_context``) let the judgments continue the generation
        conversations (prompts.layout)."""
        if self.calibrator is None:
            return [[Judged(t, float("nan"), True) for t in item_tags] for item_tags in tags]
        started, before = time.perf_counter(), _token_counts(self.engine)
        if contexts is None and generations is not None:
            contexts = [judgment_context(g) for g in generations]
        judged = self.calibrator.judge(contents, tags, contexts)
        self.times.add("calibrate", started, self.engine, before)
        return judged

    def tag(
        self, items: Sequence[Item], with_candidates: bool = False, with_dropped: bool = False
    ) -> list[dict]:
        self._need(self.generator, "an LLM engine")
        if not items:
            return []
        contents, vectors = self.encode(items)
        candidates = self.recall(vectors)
        ids = [i.id for i in items]
        generations = self.generate(ids, contents, vectors, [[c.tag for c in cands] for cands in candidates])
        judged = self.calibrate(contents, [g.tags for g in generations], generations)
        rows = [
            result_row(item_id, cands, generation, verdicts, with_candidates, with_dropped)
            for item_id, cands, generation, verdicts in zip(ids, candidates, generations, judged, strict=True)
        ]
        if self.config.write_back:
            started = time.perf_counter()
            self.write_back(items, vectors, rows)
            self.times.add("write_back", started)
        self.times.items += len(items)
        return rows

    @staticmethod
    def _need(part, what: str) -> None:
        if part is None:
            raise LLM4TagError(f"the pipeline was opened without {what}")

    def tag_rows(self, items: Iterable[Item], **kwargs) -> Iterator[dict]:
        batch: list[Item] = []
        for item in items:
            batch.append(item)
            if len(batch) >= self.config.batch_size:
                yield from self.tag(batch, **kwargs)
                batch = []
        if batch:
            yield from self.tag(batch, **kwargs)

    def feedback(self, items: Sequence[Item], incorrect: Sequence[Sequence[str]] | None = None) -> int:
        """Corrected annotations: each item's ``tags`` are right, ``incorrect`` (per item) were wrong.

        The item becomes a retrievable sample at once (durably when the pipeline was opened writable)
        and its correct tags deterministic graph edges. Returns the number of items recorded.
        """
        from llm4tag.knowledge import Sample

        if self.samples is None:
            raise LLM4TagError("this store has no sample knowledge base to record feedback in")
        incorrect = list(incorrect) if incorrect is not None else [()] * len(items)
        if len(incorrect) != len(items):
            raise LLM4TagError("feedback needs one list of incorrect tags per item")
        for item, wrong in zip(items, incorrect, strict=True):
            unknown = sorted({*(item.tags or ()), *wrong} - set(self.descriptions))
            if unknown:
                raise LLM4TagError(
                    f"feedback for item '{item.id}' names unknown tag(s): {', '.join(unknown)}"
                )
            if not item.tags and not wrong:
                raise LLM4TagError(f"feedback for item '{item.id}' has neither correct nor incorrect tags")
        if not items:
            return 0
        vectors = self.recaller.encode(items)
        self.samples.add(
            [
                Sample(
                    id=item.id,
                    text=item_text(item, self.recaller.texts.item_fields),
                    correct=tuple(item.tags or ()),
                    incorrect=tuple(wrong),
                    source="feedback",
                )
                for item, wrong in zip(items, incorrect, strict=True)
            ],
            vectors,
        )
        rows = [{"tags": [{"tag": t} for t in item.tags or ()]} for item in items]
        self.write_back(items, vectors, rows)
        return len(items)

    def write_back(self, items: Sequence[Item], vectors, rows: Sequence[dict]) -> None:
        """Final tags become deterministic edges (the graph grows as it serves); new items are inserted.

        Durable when the store was loaded from a folder: the writes go through its journal first.
        """
        self.recaller.store.record(
            [item.id for item in items],
            vectors,
            [[t["tag"] for t in row["tags"]] for row in rows],
            [item.text for item in items],
        )


def judgment_context(generation: Generation) -> tuple | None:
    """What a judgment continues (the generation prompt and its answer), if the generation has it."""
    if generation.messages and generation.answer:
        return (generation.messages, generation.answer)
    return None


def _annotated_mean(samples) -> float:
    if samples is None or not len(samples):
        return 0.0
    counts = [len(sample.correct) for sample in samples]
    return sum(counts) / len(counts) if counts else 0.0


def result_row(
    item_id: str,
    candidates: Sequence[Candidate],
    generation: Generation,
    verdicts: Sequence[Judged],
    with_candidates: bool = False,
    with_dropped: bool = False,
) -> dict:
    """One output row: kept tags with confidence and provenance (the recall meta-path that found them)."""
    by_tag = {c.tag: c for c in candidates}
    row = {
        "id": item_id,
        "tags": [_tag_row(v, by_tag.get(v.tag)) for v in verdicts if v.kept],
        "knowledge": {"samples": generation.sample_ids, "snippets": generation.snippet_ids},
        # The LLM's own order, before calibration re-ranks and filters.
        "generated": list(generation.tags),
    }
    if with_dropped:
        row["dropped"] = [_tag_row(v, by_tag.get(v.tag)) for v in verdicts if not v.kept]
    if with_candidates:
        row["candidates"] = [c.to_dict() for c in candidates]
    if generation.raw is not None:
        row["raw"] = generation.raw
    return row


def _tag_row(verdict: Judged, candidate) -> dict:
    row = {
        "tag": verdict.tag,
        "confidence": None if verdict.confidence != verdict.confidence else round(verdict.confidence, 6),
        "source": "+".join(candidate.paths) if candidate is not None else "llm",
    }
    if candidate is not None:
        row["recall_score"] = round(float(candidate.score), 6)
        if candidate.via:
            row["via"] = list(candidate.via)
    return row
