"""The tagging pipeline in one process: recall -> knowledge-enhanced generation -> calibration ->
optional write-back, over a store folder.

The stage order is the flow's (llm4tag/flow.py); the pipeline answers its calls in process. Each
stage is also callable on its own: a Serve deployment or a Ray Data actor runs one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from graph_store import Candidate, TagWatch, read_vocabulary
from graph_store.metapaths import select_merged
from llm4tag import flow
from llm4tag.calibrator import Calibrator, Judged
from llm4tag.config import PipelineConfig, Settings, resolve_mode
from llm4tag.data import Item
from llm4tag.encoded_text import item_text
from llm4tag.engines import make_engine
from llm4tag.engines.base import Engine
from llm4tag.errors import LLM4TagError
from llm4tag.generator import Generation, Generator, TagLabels
from llm4tag.knowledge.store_knowledge import StoreKnowledge
from llm4tag.prompts import Prompts
from llm4tag.ranking.cascade import RoutePlan
from llm4tag.ranking.models import ScoredTag
from llm4tag.ranking.store_routing import StoredRanking, open_routing
from llm4tag.recaller import Recaller

log = logging.getLogger(__name__)

Vocabulary = tuple[list[str], list[str | None]]


def _fullest_shard(store):
    """The store, or its shard holding the most tags (a shard lacks the last ones while an add is
    written to the shards one after another)."""
    return max(store.shards, key=lambda s: s.graph.num_tags) if hasattr(store, "shards") else store


def store_vocabulary(store) -> Vocabulary:
    graph = _fullest_shard(store).graph
    return list(graph.tag_names), list(graph.tag_descriptions)


@dataclass
class StageTimes:
    """Seconds and LLM tokens (computed, cached, generated) per stage, summed over calls."""

    seconds: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, dict[str, int]] = field(default_factory=dict)
    items: int = 0
    sent_to_llm: int = 0  # items that reached the LLM (with a route plan, the others took the ranker's tags)

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
        ranking: StoredRanking | None = None,
        plan: RoutePlan | None = None,
        lazy_engine: bool = False,
    ):
        """``lazy_engine``: without an ``engine``, load one (llm.*) the first time a stage needs it."""
        self.recaller = recaller
        # The store's fitted ranking and how items are routed by it (None: the paper's pipeline).
        self.ranking = ranking
        self.settings = settings
        self.config: PipelineConfig = settings.pipeline
        if vocabulary is None:
            if recaller is None:
                raise LLM4TagError("a pipeline without a graph store needs the tag vocabulary")
            vocabulary = store_vocabulary(recaller.store)
        self.prompts = Prompts(settings.prompts)
        self.samples = samples
        self.knowledge = knowledge
        self.max_tags = max_tags or (1 if self.config.mode == "single" else self.config.max_tags)
        # How items are routed (a store without a ranking: every item to the LLM with recall's
        # candidates).
        self.plan = plan or RoutePlan.unranked(settings.graph.recall.num_candidates, self.config.threshold)
        self.times = StageTimes()
        self.engine = None
        self.generator = None
        self.calibrator = None
        self._set_vocabulary(*vocabulary)
        self._engine_lock = threading.Lock()
        self.lazy_engine = lazy_engine
        if engine is not None:
            self._attach(engine)

    def _set_vocabulary(self, names: Sequence[str], descriptions: Sequence[str | None]) -> None:
        """The tags as every stage names them (the LLM's readable labels, the judgments'
        descriptions, the flow's options), and the ranking's tags: tags added to the store after the
        ranking's fit are ranked too (with 0 annotations)."""
        ranking, recaller = self.ranking, self.recaller
        if ranking is not None and recaller is not None and len(names) > len(ranking.models.stats.tag_names):
            ranking.models.follow(names, _fullest_shard(recaller.store).tag_index.reconstruct_all())
        self.tag_names = list(names)
        self.labels = TagLabels(names)
        self.descriptions = dict(zip(names, descriptions, strict=True))
        self.options = flow.FlowOptions.of(self.settings, self.tag_names, self.plan)
        if self.generator is not None:
            self.generator.labels = self.labels
        if self.calibrator is not None:
            self.calibrator.labels, self.calibrator.descriptions = self.labels, self.descriptions

    def follow_vocabulary(self, watch: TagWatch, store_dir: str | Path, journal_dir=None) -> bool:
        """Tags added to the store since ``watch`` (opened before this pipeline read its vocabulary)
        last looked: named in prompts and judgments as the others are, with their readable labels and
        descriptions, from the next call on. True when some came. A stage process that reads the
        vocabulary once (an LLM replica) calls it before each batch: a tail read of the journal."""
        if not watch.moved():
            return False
        described = read_vocabulary(store_dir, journal_dir)
        self._set_vocabulary(described.tags, described.descriptions)
        log.info("the store's vocabulary changed: %s tags", len(described.tags))
        return True

    def _attach(self, engine: Engine) -> None:
        self.engine = engine
        self.generator = Generator(
            engine,
            self.prompts,
            self.labels,
            samples=self.samples,
            knowledge=self.knowledge,
            num_samples=self.config.num_samples,
            num_snippets=self.config.num_snippets,
            constrained=self.config.constrained,
        )
        if self.config.calibrate:
            self.calibrator = Calibrator(
                self.engine,
                self.prompts,
                self.labels,
                self.descriptions,
                self.config.threshold,
                in_context=self.settings.judgments_in_context,
            )

    def load_engine(self) -> Engine:
        """The LLM engine, loaded now if the pipeline was opened without it (a store whose route plan
        sent nothing to the LLM, until a refit or a new tag routes items to it). Thread-safe: one load."""
        with self._engine_lock:
            if self.engine is None:
                log.info("loading the LLM (%s): items are now routed to it", self.settings.llm.model)
                self._attach(make_engine(self.settings.llm))
            return self.engine

    def _engine_when_needed(self) -> None:
        if self.engine is None and self.lazy_engine:
            self.load_engine()

    @property
    def llm_status(self) -> str:
        """Whether the LLM is in memory, and if not, why (what /readyz and the stage describes say)."""
        if self.engine is not None:
            return "loaded"
        if self.plan.sends_nothing:
            return "not loaded: route sends nothing (loaded when an item is routed to the LLM)"
        return "not loaded"

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

        ``writable`` makes the knowledge bases' additions durable, so feedback is on disk before it
        returns. ``load_graph=False`` reads only the store's vocabulary: enough for the generation and
        calibration stages, which need neither the graph nor the encoder.
        """
        recaller = vocabulary = None
        if load_graph:
            recaller = Recaller.open(store_dir, settings)
            encoder_id = recaller.encoder.id
        else:
            described = read_vocabulary(store_dir)
            vocabulary, encoder_id = (described.tags, described.descriptions), described.encoder_id
        # Every stage process opens the plan (the bulk job's last stage writes routed rows by it).
        ranking, plan = open_routing(store_dir, encoder_id, **settings.plan_args)
        bases = StoreKnowledge.open(store_dir, encoder_id, writable=writable)
        samples, knowledge = bases.samples, bases.domain
        if samples is None and settings.pipeline.num_samples:
            log.warning("store %s has no sample knowledge base: prompts get no retrieved samples", store_dir)
        if knowledge is None and settings.pipeline.num_snippets:
            log.warning("store %s has no domain knowledge base: prompts get no knowledge snippets", store_dir)
        counts = [len(sample.correct) for sample in samples] if samples is not None else []
        mode = resolve_mode(settings.pipeline.mode, counts)
        max_tags = 1 if mode == "single" else settings.pipeline.max_tags
        # A plan that sends nothing to the LLM leaves it out of memory until an item is routed to it.
        if engine is None and load_engine and not plan.sends_nothing:
            engine = make_engine(settings.llm)
        return cls(
            recaller,
            engine,
            settings,
            samples,
            knowledge,
            max_tags=max_tags,
            vocabulary=vocabulary,
            ranking=ranking,
            plan=plan,
            lazy_engine=load_engine,
        )

    @property
    def mode(self) -> str:
        return "single" if self.max_tags == 1 else "multi"

    # -- the stages, each callable on its own (a Serve deployment or a Ray Data actor runs one)

    def encode(self, items: Sequence[Item]) -> tuple[list[str], np.ndarray]:
        """Each item's content text and its unit vector."""
        self._need(self.recaller, "an encoder")
        contents = [item_text(i, self.recaller.texts.item_fields) for i in items]
        return contents, self.encode_contents(contents)

    def encode_contents(self, contents: Sequence[str]) -> np.ndarray:
        self._need(self.recaller, "an encoder")
        started = time.perf_counter()
        vectors = self.recaller.encoder.encode(list(contents))
        self.times.add("encode", started)
        return vectors

    def search(self, vectors: np.ndarray) -> list:
        """Every shard's search hits (one list per shard)."""
        self._need(self.recaller, "a graph store")
        store, recall = self.recaller.store, self.recaller.store.config.recall
        shards = store.shards if hasattr(store, "shards") else [store]
        return [shard.search(vectors, recall) for shard in shards]

    def recall(self, vectors: np.ndarray) -> list[list[Candidate]]:
        self._need(self.recaller, "a graph store")
        started = time.perf_counter()
        candidates = select_merged(self.search(vectors), self.tag_names, self.recaller.store.config.recall)
        self.times.add("recall", started)
        return candidates

    def rank(self, contents: Sequence[str], vectors: np.ndarray, hits: Sequence) -> list[list[ScoredTag]]:
        """The ranker's scored candidates of each item from its merged search hits."""
        if self.ranking is None:
            raise LLM4TagError("this store has no fitted ranking (llm4tag build fits one; see ranking:)")
        self._need(self.recaller, "a graph store")
        started = time.perf_counter()
        scored = self.ranking.models.rank(contents, vectors, hits, self.recaller.store.config.recall)
        self.times.add("rank", started)
        return scored

    def generate(
        self,
        ids: Sequence[str],
        contents: Sequence[str],
        vectors: np.ndarray,
        candidates: Sequence[Sequence[str]],
    ) -> list[Generation]:
        self._engine_when_needed()
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
        if self.config.calibrate:
            self._engine_when_needed()
        if self.calibrator is None:
            return flow.unjudged(tags)
        started, before = time.perf_counter(), _token_counts(self.engine)
        if contexts is None and generations is not None:
            contexts = [flow.judgment_context(g) for g in generations]
        judged = self.calibrator.judge(contents, tags, contexts)
        self.times.add("calibrate", started, self.engine, before)
        return judged

    def record(self, ids, vectors, tags, texts) -> None:
        """Durable upserts into the graph (through its journal when the store came from a folder)."""
        self._need(self.recaller, "a graph store")
        started = time.perf_counter()
        self.recaller.store.record(ids, vectors, tags, texts)
        self.times.add("write_back", started)

    def record_samples(self, samples, vectors) -> int:
        if self.samples is None:
            raise LLM4TagError("this store has no sample knowledge base to record feedback in")
        self.samples.add(samples, vectors)
        return len(samples)

    def answer(self, call: flow.Call):
        """One call of a flow, answered in this process."""
        if isinstance(call, flow.Encode):
            return self.encode_contents(call.contents)
        if isinstance(call, flow.Search):
            started = time.perf_counter()
            hits = self.search(call.vectors)
            self.times.add("recall", started)
            return hits
        if isinstance(call, flow.Rank):
            return self.rank(call.contents, call.vectors, call.hits)
        if isinstance(call, flow.Generate):
            generations = self.generate(call.ids, call.contents, call.vectors, call.candidates)
            if not call.judge:
                return generations
            verdicts = self.calibrate(call.contents, [list(g.tags) for g in generations], generations)
            return list(zip(generations, verdicts, strict=True))
        if isinstance(call, flow.Calibrate):
            return self.calibrate(call.contents, call.tags, contexts=call.contexts)
        if isinstance(call, flow.WriteEdges):
            return self.record(call.ids, call.vectors, call.tags, call.texts)
        if isinstance(call, flow.WriteSamples):
            return self.record_samples(call.samples, call.vectors)
        raise TypeError(f"no answer to {type(call).__name__}")

    # -- whole items

    def tag(
        self, items: Sequence[Item], with_candidates: bool = False, with_dropped: bool = False
    ) -> list[dict]:
        self._need(self.recaller, "a graph store")
        tagged = flow.run(
            flow.tag_flow(items, self.options, with_candidates=with_candidates, with_dropped=with_dropped),
            self.answer,
        )
        self.times.items += len(items)
        self.times.sent_to_llm += tagged.sent_to_llm
        return tagged.rows

    def tag_rows(self, items: Iterable[Item], **kwargs) -> Iterator[dict]:
        """Rows as they come, a pipeline call at a time: ``pipeline.batch_size`` items, or
        ``pipeline.ranker_batch_size`` while the route plan sends nothing to the LLM."""
        size = self.config.ranker_batch_size if self.plan.sends_nothing else self.config.batch_size
        batch: list[Item] = []
        for item in items:
            batch.append(item)
            if len(batch) >= size:
                yield from self.tag(batch, **kwargs)
                batch = []
        if batch:
            yield from self.tag(batch, **kwargs)

    def feedback(
        self,
        items: Sequence[Item],
        incorrect: Sequence[Sequence[str]] | None = None,
        *,
        sender: str | None = None,
        reviewer: str | None = None,
    ) -> int:
        """Corrected annotations: each item's ``tags`` are right, ``incorrect`` (per item) were wrong;
        ``sender`` and ``reviewer`` are recorded on the samples (only reviewed feedback may enter the
        held-out items that decide an adapter's promotion).

        The item becomes a retrievable sample at once (durably when the pipeline was opened writable)
        and its correct tags deterministic graph edges. Returns the number of items recorded; if one
        of the two writes fails, :class:`llm4tag.flow.FeedbackIncomplete` says which, and the same
        feedback sent again converges.
        """
        if self.samples is None:
            raise LLM4TagError("this store has no sample knowledge base to record feedback in")
        self._need(self.recaller, "a graph store")
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
        recorded = flow.run(
            flow.feedback_flow(
                items,
                incorrect,
                item_fields=self.recaller.texts.item_fields,
                sender=sender,
                reviewer=reviewer,
            ),
            self.answer,
        )
        return recorded.items

    @staticmethod
    def _need(part, what: str) -> None:
        if part is None:
            raise LLM4TagError(f"the pipeline was opened without {what}")
