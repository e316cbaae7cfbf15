"""Building a store: the content–tag graph over the annotated items, the SRKI knowledge bases beside
it, the learned recall and ranker fitted on the same annotations (when there are enough), and the
folder they are saved in. `llm4tag build`, `llm4tag retrain` and the benchmarks build through here."""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from graph_store import GraphStore, ShardedStore
from llm4tag.config import Settings
from llm4tag.data import Item, ItemsFile, Tag, read_items, read_tags
from llm4tag.encoded_text import item_text, tag_text
from llm4tag.encoder import Encoder
from llm4tag.errors import LLM4TagError
from llm4tag.knowledge import DomainKnowledgeBase, SampleKnowledgeBase, build_knowledge
from llm4tag.knowledge.store_knowledge import KNOWLEDGE_DIR
from llm4tag.progress import step
from llm4tag.ranking.crossfit import Annotated
from llm4tag.ranking.features import TagStats
from llm4tag.ranking.models import fit_ranking
from llm4tag.ranking.store_routing import ranking_dir
from llm4tag.skos import aliases, hierarchy, vocabulary_meta
from llm4tag.synthetic import SyntheticExamples


@dataclass
class BuildReport:
    contents: int
    tags: int
    skipped_unannotated: int
    encode_seconds: float
    build_seconds: float
    stats: dict
    # The annotated items and their vectors, so the knowledge base need not encode them again.
    annotated: list = field(default_factory=list, repr=False)
    item_vectors: np.ndarray | None = field(default=None, repr=False)


def build_store(
    items: Sequence[Item],
    tags: Sequence[Tag],
    settings: Settings,
    encoder: Encoder,
    shards: int = 1,
    *,
    item_vectors: np.ndarray | None = None,
    tag_vectors: np.ndarray | None = None,
) -> tuple[GraphStore | ShardedStore, BuildReport]:
    """A store over the annotated items: only they carry deterministic edges worth following.

    ``item_vectors`` (one row per item of ``items``) and ``tag_vectors`` skip encoding them again.
    """
    annotated = [item for item in items if item.tags]
    if item_vectors is not None:
        if len(item_vectors) != len(items):
            raise LLM4TagError(f"{len(item_vectors)} item vectors for {len(items)} items")
        item_vectors = np.asarray(item_vectors)[[i for i, item in enumerate(items) if item.tags]]
    if items and not annotated:
        raise LLM4TagError(
            "no annotated items to build a store from: every item lacks 'tags' "
            "(a vocabulary-only store is built without items)"
        )
    if shards < 1:
        raise LLM4TagError(f"--shards must be at least 1, got {shards}")
    started = time.perf_counter()
    if tag_vectors is None:
        with step("encode the tags", total=len(tags), unit="tag") as bar:
            tag_vectors = encoder.encode([tag_text(t, settings.texts.tag_description_chars) for t in tags])
            bar.update(len(tags))
    if item_vectors is None and not annotated:
        item_vectors = np.zeros((0, tag_vectors.shape[1]), np.float32)
    if item_vectors is None:
        with step("encode the annotated items", total=len(annotated)) as bar:
            item_vectors = encoder.encode([item_text(i, settings.texts.item_fields) for i in annotated])
            bar.update(len(annotated))
    encoded = time.perf_counter()
    with step(f"content-tag graph and its indexes ({len(annotated):,} items, {len(tags):,} tags)"):
        store = _graph(annotated, tags, settings, encoder, item_vectors, tag_vectors)
    if shards > 1:
        store = ShardedStore(store.split(shards))
    report = BuildReport(
        contents=len(annotated),
        tags=len(tags),
        skipped_unannotated=len(items) - len(annotated),
        encode_seconds=encoded - started,
        build_seconds=time.perf_counter() - encoded,
        stats=store.stats(),
        annotated=annotated,
        item_vectors=item_vectors,
    )
    return store, report


def _graph(
    annotated: Sequence[Item],
    tags: Sequence[Tag],
    settings: Settings,
    encoder: Encoder,
    item_vectors: np.ndarray,
    tag_vectors: np.ndarray,
) -> GraphStore:
    return GraphStore.build(
        item_ids=[i.id for i in annotated],
        item_vectors=item_vectors,
        item_tags=[list(i.tags or ()) for i in annotated],
        tags=[t.tag for t in tags],
        tag_vectors=tag_vectors,
        tag_descriptions=[t.description for t in tags],
        item_texts=[i.text for i in annotated],
        encoder_id=encoder.id,
        config=settings.graph,
        meta={
            "encoder": settings.encoder.model_dump(),
            "texts": settings.texts.model_dump(),
            # A SKOS vocabulary's URIs, labels and language (llm4tag/skos.py): Annif's API answers in them.
            **({"vocabulary": vocabulary} if (vocabulary := vocabulary_meta(tags)) else {}),
        },
        tag_broader=hierarchy(tags),
    )


@dataclass
class StoreParts:
    """A store built in memory: the graph and its knowledge bases."""

    store: GraphStore | ShardedStore
    report: BuildReport
    samples: SampleKnowledgeBase
    domain: DomainKnowledgeBase
    knowledge_seconds: float


def build_parts(
    items: Sequence[Item],
    tags: Sequence[Tag],
    settings: Settings,
    encoder: Encoder,
    *,
    shards: int = 1,
    knowledge_files: Sequence[str] = (),
    item_vectors: np.ndarray | None = None,
    tag_vectors: np.ndarray | None = None,
) -> StoreParts:
    """The graph over the annotated items and the SRKI knowledge bases beside it (samples reuse the
    vectors the graph build made; snippets come from the tag descriptions, ``pipeline.knowledge_files``
    and ``knowledge_files``)."""
    files = [*settings.pipeline.knowledge_files, *knowledge_files]
    for path in files:
        if not Path(path).is_file():
            raise LLM4TagError(f"knowledge file {path} does not exist")
    store, report = build_store(
        items, tags, settings, encoder, shards, item_vectors=item_vectors, tag_vectors=tag_vectors
    )
    started = time.perf_counter()
    with step("knowledge bases (samples, domain knowledge)"):
        samples, domain = build_knowledge(
            report.annotated,
            tags,
            encoder,
            files,
            settings.texts.item_fields,
            item_vectors=report.item_vectors,
        )
    return StoreParts(store, report, samples, domain, time.perf_counter() - started)


def save_parts(parts: StoreParts, store_dir: str | Path) -> None:
    """The graph (a new version if the folder holds one) and the knowledge bases beside it."""
    parts.store.save(store_dir)
    parts.samples.save(Path(store_dir) / KNOWLEDGE_DIR / "samples")
    parts.domain.save(Path(store_dir) / KNOWLEDGE_DIR / "domain")


def synthetic_for_fit(
    store_dir: str | Path,
    data: Annotated,
    min_annotations: int,
    encode: Callable[[list[str]], np.ndarray],
) -> Annotated | None:
    """The store's synthetic examples a fit uses (`llm4tag augment`; per tag as many as it lacks real
    annotations in ``data`` to reach ``min_annotations``), encoded; None when there are none."""
    counts = Counter(t for row in data.item_tags for t in set(row))
    vocabulary = set(data.tags)
    chosen = [
        e for e in SyntheticExamples(store_dir).for_fitting(counts, min_annotations) if e.tag in vocabulary
    ]
    if not chosen:
        return None
    with step("encode the synthetic examples", total=len(chosen)) as bar:
        vectors = np.asarray(encode([e.text for e in chosen]), np.float32)
        bar.update(len(chosen))
    return dataclasses.replace(
        data,
        ids=[e.id for e in chosen],
        texts=[e.text for e in chosen],
        vectors=vectors,
        item_tags=[[e.tag] for e in chosen],
        synthetic=None,
    )


def fit_store_ranking(
    store_dir: str | Path,
    store: GraphStore | ShardedStore,
    items: Sequence[Item],
    item_vectors: np.ndarray,
    settings: Settings,
    encoder_id: str,
    encode: Callable[[list[str]], np.ndarray] | None = None,
) -> dict:
    """Fit the learned recall and the ranker on the store's annotated items (cross-fitted folds of
    them: llm4tag/ranking/crossfit.py) and save them in ``STORE/ranking`` with their manifest, when
    ``ranking.enabled`` and the number of annotated items allow; otherwise a ranking of an earlier
    build (fitted on other annotations) is removed. Returns the summary the build prints.

    ``encode`` (the store's encoder): the store's synthetic examples (``STORE/synthetic``) are encoded
    with it and join the learned recall's training items, never the held-out rows; without it none
    are read."""
    config = settings.ranking
    folder = ranking_dir(store_dir)
    annotated = [i for i in items if i.tags]
    if config.enabled == "off" or (config.enabled == "auto" and len(annotated) < config.min_items):
        if folder.exists():
            shutil.rmtree(folder)
        why = (
            "ranking.enabled: off"
            if config.enabled == "off"
            else (f"{len(annotated)} annotated items, fewer than ranking.min_items ({config.min_items})")
        )
        return {"ranking": f"not fitted ({why}): the LLM tags every item"}
    if len(item_vectors) != len(annotated):
        raise LLM4TagError(f"{len(item_vectors)} vectors for {len(annotated)} annotated items")
    stats = TagStats.from_store(store)
    data = Annotated(
        ids=[i.id for i in annotated],
        texts=[item_text(i, settings.texts.item_fields) for i in annotated],
        vectors=np.asarray(item_vectors, np.float32),
        item_tags=[list(i.tags or ()) for i in annotated],
        tags=stats.tag_names,
        tag_vectors=stats.tag_vectors,
        encoder_id=encoder_id,
    )
    if encode is not None:
        data.synthetic = synthetic_for_fit(store_dir, data, settings.augment.min_annotations, encode)
    mode = settings.pipeline.mode
    started = time.perf_counter()
    with step(f"learned recall and ranker ({len(annotated):,} annotated items)"):
        models, _ = fit_ranking(
            data,
            settings.graph,
            config.learned,
            config.ranker,
            multi=None if mode == "auto" else mode == "multi",
            max_tags=settings.pipeline.max_tags,
            learned_k=config.learned_k,
            target_precision=config.target_precision,
            stats=stats,
            threshold=settings.pipeline.threshold,
            few=config.few_tags,
        )
        models.save(folder)
    keys = ("held_out_items", "top1_precision", "target_precision", "cut", "cut_coverage", "shown")
    return {
        "ranking": {k: models.metrics.get(k) for k in keys}
        | {
            "multi": models.multi,
            "synthetic_examples": len(data.synthetic.ids) if data.synthetic is not None else 0,
            "fit_s": round(time.perf_counter() - started, 2),
        }
    }


def build_store_folder(
    store_dir: str | Path,
    items: Sequence[Item],
    tags: Sequence[Tag],
    settings: Settings,
    encoder: Encoder | None = None,
    *,
    shards: int = 1,
    knowledge_files: Sequence[str] = (),
    unknown_tag_annotations_dropped: int = 0,
) -> dict:
    """Build and save a store folder (graph + knowledge); returns the build summary `llm4tag build`
    prints (``unknown_tag_annotations_dropped``: what reading the items dropped, for that summary)."""
    encoder = encoder or Encoder(settings.encoder)
    parts = build_parts(items, tags, settings, encoder, shards=shards, knowledge_files=knowledge_files)
    started = time.perf_counter()
    with step(f"save the store to {store_dir}"):
        save_parts(parts, store_dir)
    saved = time.perf_counter() - started
    report = parts.report
    ranking = fit_store_ranking(
        store_dir, parts.store, report.annotated, report.item_vectors, settings, encoder.id, encoder.encode
    )
    return {
        "store": str(store_dir),
        "encoder": encoder.id,
        **report.stats,
        "skipped_unannotated": report.skipped_unannotated,
        "unknown_tag_annotations_dropped": unknown_tag_annotations_dropped,
        "encode_s": round(report.encode_seconds, 2),
        "build_s": round(report.build_seconds, 2),
        "knowledge_samples": len(parts.samples),
        "knowledge_snippets": len(parts.domain),
        "knowledge_s": round(parts.knowledge_seconds, 2),
        "save_s": round(saved, 2),
        **ranking,
    }


def build_store_from_files(
    store_dir: str | Path,
    items_path: str | Path | None,
    tags_path: str | Path,
    settings: Settings | None = None,
    *,
    encoder: Encoder | None = None,
    split: str | None = None,
    strict_tags: bool = False,
    shards: int = 1,
    knowledge_files: Sequence[str] = (),
    language: str | None = None,
) -> dict:
    """`llm4tag build`: read the items and the vocabulary, build and save the store folder; returns the
    build summary. Without ``items_path`` the store holds the vocabulary alone (no annotated item).
    ``language``: of a SKOS vocabulary's labels and notes (llm4tag/skos.py)."""
    if shards < 1:
        raise LLM4TagError(f"--shards must be at least 1, got {shards}")
    settings = settings or Settings()
    tags = read_tags(tags_path, language)
    if items_path is None:
        if split is not None:
            raise LLM4TagError("--split selects items: give --items with it")
        items = ItemsFile("", [])
    else:
        items = read_items(
            items_path,
            vocabulary={t.tag for t in tags},
            strict_tags=strict_tags,
            split=split,
            aliases=aliases(tags),  # items may name SKOS concepts by URI or notation
        )
    return build_store_folder(
        store_dir,
        items.items,
        tags,
        settings,
        encoder,
        shards=shards,
        knowledge_files=[str(p) for p in knowledge_files],
        unknown_tag_annotations_dropped=items.unknown_tag_annotations,
    )


def store_annotations(store: GraphStore | ShardedStore) -> tuple[list[Item], np.ndarray]:
    """The annotated items a store holds now (its build, feedback and write-back) with their vectors:
    what `llm4tag refit` fits on. Items are rebuilt from the stored text (texts.item_fields beyond
    ``text`` are not stored, so the learned recall reads the text alone for them)."""
    items: list[Item] = []
    vectors = []
    for shard in store.shards if isinstance(store, ShardedStore) else [store]:
        graph = shard.graph
        if not graph.num_contents:
            continue
        det = graph.det_tags_many(np.arange(graph.num_contents))
        rows = shard.content_index.reconstruct_all()
        for pos, (item_id, text, tag_pos) in enumerate(
            zip(graph.content_ids, graph.content_texts, det, strict=True)
        ):
            if len(tag_pos) and text:
                items.append(Item(item_id, text, tuple(graph.tag_names[int(t)] for t in tag_pos)))
                vectors.append(rows[pos])
    return items, np.asarray(vectors, np.float32)


def refit_store_ranking(store_dir: str | Path, settings: Settings) -> dict:
    """`llm4tag refit`: the learned recall and the ranker fitted again on the store's annotations as
    they are now; the store itself is not changed. Tagging processes load the new models when they
    (re)open the store."""
    from llm4tag.recaller import Recaller

    recaller = Recaller.open(store_dir, settings)
    items, vectors = store_annotations(recaller.store)
    if settings.texts.item_fields != ["text"]:
        import logging

        logging.getLogger(__name__).warning(
            "refit reads the stored item text only, not texts.item_fields %s", settings.texts.item_fields
        )
    summary = fit_store_ranking(
        store_dir, recaller.store, items, vectors, settings, recaller.encoder.id, recaller.encoder.encode
    )
    return {"store": str(store_dir), "annotated_items": len(items), **summary}
