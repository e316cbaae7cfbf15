"""Training data for the generator and the calibrator, built exactly as inference sees items.

Generator examples (LSKI, paper section 3.3.1): the chat prompt the pipeline would send for the item
(its recalled candidates, retrieved samples and domain knowledge), and as answer the item's gold tags
among the candidates, written the way constrained decoding writes them (labels joined by ", ").

Calibrator examples (paper section 3.4, D'): the judgment prompt for (item, tag), answer "Yes" for a
gold tag and "No" for a recalled non-gold candidate (hardest first) or a tag feedback marked wrong,
balanced between the two answers.

No item ever sees itself: the items are split into folds, and a fold's prompts come from a graph store
and sample knowledge base built from the other folds only (cross-fitting). The item is thus as new to
the store as a live item is at inference: neither its own annotation edges nor its own sample can
supply its answer. Items of other splits (test) are never read into the pool at all.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from graph_store import GraphStore
from llm4tag.config import resolve_mode
from llm4tag.data import Item, Tag, read_items, read_tags
from llm4tag.encoded_text import item_text, tag_text
from llm4tag.encoder import Encoder
from llm4tag.engines.base import CHOICE_SEPARATOR
from llm4tag.errors import LLM4TagError
from llm4tag.finetune.examples import Example, write_training_data
from llm4tag.generator import Generator, TagLabels
from llm4tag.knowledge import Sample, SampleKnowledgeBase, domain_knowledge
from llm4tag.progress import step
from llm4tag.prompts import Prompts
from llm4tag.store_builder import KNOWLEDGE_DIR


def load_feedback(store_dir: str | Path) -> list:
    """The store's feedback samples (`POST /v1/feedback`, `llm4tag feedback`): durable in the sample
    knowledge base's snapshot and append log, marked ``source="feedback"``."""
    folder = Path(store_dir) / KNOWLEDGE_DIR / "samples"
    if not folder.exists():
        raise LLM4TagError(f"store {store_dir} has no sample knowledge base ({folder}) to read feedback from")
    base = SampleKnowledgeBase.load(folder)
    return [s for s in base if s.source == "feedback"]


def merge_feedback(
    items: Sequence[Item], feedback: Sequence
) -> tuple[list[Item], dict[str, tuple], set[str]]:
    """Items with feedback applied: an item's feedback tags replace its annotation (the feedback saw it
    last), new items join. Returns (items, incorrect tags per id, ids with feedback). Whether the
    feedback was reviewed (``Sample.reviewed``) is the caller's to weigh (finetune/retrain.py)."""
    by_id = {item.id: item for item in items}
    incorrect: dict[str, tuple] = {}
    reviewed: set[str] = set()
    for sample in feedback:
        old = by_id.get(sample.id)
        correct = tuple(sample.correct)
        if old is not None and not correct:
            # Only wrong tags were reported: the annotation stands minus those.
            correct = tuple(t for t in old.tags or () if t not in set(sample.incorrect))
        extra = dict(old.extra) if old is not None else {}
        extra["source"] = "feedback"
        by_id[sample.id] = Item(
            sample.id, old.text if old is not None else sample.text, correct or None, extra
        )
        if sample.incorrect:
            incorrect[sample.id] = tuple(sample.incorrect)
        reviewed.add(sample.id)
    return list(by_id.values()), incorrect, reviewed


# --- diversity-aware selection


def select_items(
    tags_per_item: Sequence[Sequence[str]], vectors: np.ndarray, n: int | None, method: str, seed: int
) -> list[int]:
    """Indices of at most ``n`` items to build examples for, in selection order.

    diverse: every tag first gets one item (its items' most central one, so rare tags are taught at
    all), then greedy farthest-point selection (k-center) adds the item farthest from everything chosen
    in embedding space: near-duplicates add little, the paper's diversity principle.
    balanced: round-robin over tags, a random unused item of each in turn (per-tag balance).
    """
    count = len(tags_per_item)
    if n is None or n >= count or method == "all":
        return list(range(count))
    rng = random.Random(seed)
    if method == "random":
        return sorted(rng.sample(range(count), n))
    by_tag: dict[str, list[int]] = {}
    for index, tags in enumerate(tags_per_item):
        for tag in tags:
            by_tag.setdefault(tag, []).append(index)
    order = sorted(by_tag)
    rng.shuffle(order)
    chosen: list[int] = []
    taken: set[int] = set()
    if method == "balanced":
        pools = {t: rng.sample(by_tag[t], len(by_tag[t])) for t in order}
        while len(chosen) < n and any(pools.values()):
            for tag in order:
                while pools[tag] and pools[tag][-1] in taken:
                    pools[tag].pop()
                if pools[tag] and len(chosen) < n:
                    chosen.append(pools[tag].pop())
                    taken.add(chosen[-1])
        return chosen
    vectors = np.asarray(vectors, dtype=np.float32)
    for tag in order:
        if len(chosen) >= n:
            break
        members = [i for i in by_tag[tag] if i not in taken]
        if not members:
            continue
        centre = vectors[members].mean(axis=0)
        best = members[int(np.argmax(vectors[members] @ centre))]
        chosen.append(best)
        taken.add(best)
    if len(chosen) < n:
        # Distance to the nearest chosen item, updated one matrix-vector product per pick.
        if chosen:
            nearest = 1.0 - (vectors @ vectors[chosen].T).max(axis=1)
        else:
            first = rng.randrange(count)
            chosen.append(first)
            nearest = 1.0 - vectors @ vectors[first]
        nearest[chosen] = -np.inf
        while len(chosen) < n:
            pick = int(np.argmax(nearest))
            chosen.append(pick)
            nearest = np.minimum(nearest, 1.0 - vectors @ vectors[pick])
            nearest[chosen] = -np.inf
    return chosen


# --- the examples


@dataclass
class BuildStats:
    pool: int = 0
    selected: int = 0
    generator: int = 0
    calibrator_yes: int = 0
    calibrator_no: int = 0
    gold_not_recalled: int = 0  # generator examples whose gold (some tag of it) recall missed
    injected: int = 0
    dropped_unrecalled: int = 0
    feedback_items: int = 0
    mode: str = "single"
    seconds: float = 0.0


def annotated_mode(mode: str, items: Sequence[Item]) -> str:
    """The configured pipeline mode for these annotated items (``auto`` decides from them)."""
    return resolve_mode(mode, [len(i.tags) for i in items if i.tags])


def build_examples(
    items: Sequence[Item],
    tags: Sequence[Tag],
    settings,
    encoder,
    *,
    knowledge_files: Sequence[str] = (),
    incorrect: dict[str, tuple] | None = None,
) -> tuple[list[Example], list[Example], BuildStats]:
    """Generator and calibrator examples for the annotated ``items`` (see the module docstring)."""
    started = time.perf_counter()
    config = settings.finetune.data
    incorrect = incorrect or {}
    vocabulary = [t.tag for t in tags]
    known = set(vocabulary)
    pool = [i for i in items if i.tags and set(i.tags) <= known]
    if len(pool) < config.folds:
        raise LLM4TagError(
            f"{len(pool)} annotated items with known tags: need at least finetune.data.folds={config.folds}"
        )
    stats = BuildStats(pool=len(pool), feedback_items=sum(i.extra.get("source") == "feedback" for i in pool))
    mode = annotated_mode(settings.pipeline.mode, pool)
    stats.mode = mode
    max_tags = 1 if mode == "single" else settings.pipeline.max_tags
    fields_ = settings.texts.item_fields
    contents = [item_text(i, fields_) for i in pool]
    with step("training data: encode items and tags", total=len(pool) + len(tags), unit="text") as bar:
        vectors = encoder.encode(contents)
        tag_vectors = encoder.encode([tag_text(t, settings.texts.tag_description_chars) for t in tags])
        bar.update(len(pool) + len(tags))
    selected = select_items([i.tags for i in pool], vectors, config.max_items, config.selection, config.seed)
    stats.selected = len(selected)
    rng = random.Random(config.seed)
    # Folds over the whole pool (every item is in exactly one), assigned at random but reproducibly.
    fold_of = np.array([i % config.folds for i in range(len(pool))])
    np.random.default_rng(config.seed).shuffle(fold_of)
    domain = domain_knowledge(tags, encoder, knowledge_files)
    prompts = Prompts(settings.prompts)
    # Calibrator examples in the form the served judgments take: a follow-up of the generation
    # conversation in which the judged tag was the answer, or figure 5 (prompts.layout).
    in_context = settings.judgments_in_context
    labels = TagLabels(vocabulary)
    descriptions = {t.tag: t.description for t in tags}
    generator_examples: dict[int, Example] = {}
    calibrator_examples: dict[int, list[Example]] = {}
    with step("training data: folds", total=config.folds, unit="fold") as bar:
        for fold in bar.counted(range(config.folds)):
            rows = [i for i in selected if fold_of[i] == fold]
            if not rows:
                continue
            rest = np.flatnonzero(fold_of != fold)
            bar.set_postfix_str(f"fold {fold + 1}: store over {len(rest)} items, prompts for {len(rows)}")
            store = GraphStore.build(
                item_ids=[pool[i].id for i in rest],
                item_vectors=vectors[rest],
                item_tags=[list(pool[i].tags) for i in rest],
                tags=vocabulary,
                tag_vectors=tag_vectors,
                tag_descriptions=[t.description for t in tags],
                item_texts=[pool[i].text for i in rest],
                encoder_id=encoder.id,
                config=settings.graph,
            )
            samples = SampleKnowledgeBase.build(
                [
                    Sample(
                        pool[i].id,
                        contents[i],
                        tuple(pool[i].tags),
                        incorrect.get(pool[i].id, ()),
                        "feedback" if pool[i].extra.get("source") == "feedback" else "annotation",
                    )
                    for i in rest
                ],
                vectors[rest],
                encoder.id,
            )
            generator = Generator(
                None,
                prompts,
                labels,
                samples=samples,
                knowledge=domain,
                num_samples=settings.pipeline.num_samples,
                num_snippets=settings.pipeline.num_snippets,
            )
            recalled = store.recall(vectors[rows])
            candidate_lists: list[list[str]] = []
            extras: list[dict] = []
            for index, candidates in zip(rows, recalled, strict=True):
                names = [c.tag for c in candidates]
                gold = list(pool[index].tags)[:max_tags]
                missing = [t for t in gold if t not in names]
                info = {"recalled": list(names), "missing": missing, "injected": []}
                if missing:
                    stats.gold_not_recalled += 1
                    if config.missing_gold == "inject":
                        names = inject(names, missing, set(gold), rng, settings.graph.recall.num_candidates)
                        info["injected"] = missing
                        stats.injected += 1
                candidate_lists.append(names)
                extras.append(info)
            ids = [pool[i].id for i in rows]
            messages, sample_ids, snippet_ids = generator.prompts_for(
                ids, [contents[i] for i in rows], vectors[rows], candidate_lists, max_tags
            )
            for pos, index in enumerate(rows):
                item, names, info = pool[index], candidate_lists[pos], extras[pos]
                assert item.id not in sample_ids[pos]  # cross-fitting: never its own sample
                source = item.extra.get("source", "annotation")
                gold = [t for t in item.tags if t in names][:max_tags]
                if gold and not (info["missing"] and config.missing_gold == "drop"):
                    generator_examples[index] = Example(
                        "generator",
                        item.id,
                        messages[pos],
                        CHOICE_SEPARATOR.join(labels.labels(gold)),
                        {
                            "gold": list(item.tags),
                            "candidates": names,
                            "recalled": info["recalled"],
                            "injected": info["injected"],
                            "samples": sample_ids[pos],
                            "snippets": snippet_ids[pos],
                            "fold": fold,
                            "source": source,
                            "mode": mode,
                        },
                    )
                elif info["missing"]:
                    stats.dropped_unrecalled += 1
                # Calibrator pairs: every gold tag Yes; recalled non-gold candidates No, hardest (highest
                # ranked) first, and any tag a reviewer marked wrong.
                pairs = [(t, "Yes", "gold") for t in item.tags]
                wrong = list(incorrect.get(item.id, ()))
                negatives = [t for t in info["recalled"] if t not in set(item.tags) and t not in wrong]
                budget = max(0, round(config.negatives_per_positive * len(item.tags)) - len(wrong))
                pairs += [(t, "No", "feedback") for t in wrong if t in known]
                pairs += [(t, "No", "recalled") for t in negatives[:budget]]
                calibrator_examples[index] = [
                    Example(
                        "calibrator",
                        item.id,
                        prompts.judgment(
                            contents[index],
                            labels.label.get(t, t),
                            descriptions.get(t),
                            (messages[pos], labels.label.get(t, t)) if in_context else None,
                        ),
                        answer,
                        {"tag": t, "why": why, "fold": fold, "source": source},
                    )
                    for t, answer, why in pairs
                ]
    gen = [generator_examples[i] for i in selected if i in generator_examples]
    cal = _balanced([e for i in selected for e in calibrator_examples.get(i, [])], rng)
    stats.generator = len(gen)
    stats.calibrator_yes = sum(e.answer == "Yes" for e in cal)
    stats.calibrator_no = len(cal) - stats.calibrator_yes
    stats.seconds = round(time.perf_counter() - started, 2)
    return gen, cal, stats


def inject(
    names: list[str], missing: Sequence[str], gold: set[str], rng: random.Random, limit: int
) -> list[str]:
    """``names`` with the missing gold tags at random positions, keeping at most ``limit`` entries by
    removing the lowest-ranked non-gold candidates (a random position: the model must learn to pick
    the tag, not its slot)."""
    out = list(names)
    for tag in missing:
        if len(out) >= limit:
            for pos in range(len(out) - 1, -1, -1):
                if out[pos] not in gold:
                    del out[pos]
                    break
        out.insert(rng.randint(0, len(out)), tag)
    return out


def _balanced(examples: list[Example], rng: random.Random) -> list[Example]:
    """As many "Yes" as "No" examples: the larger side is subsampled (feedback negatives kept first),
    then the whole set is shuffled so batches mix the two answers."""
    yes = [e for e in examples if e.answer == "Yes"]
    no = [e for e in examples if e.answer == "No"]
    keep = min(len(yes), len(no))
    if len(yes) > keep:
        yes = rng.sample(yes, keep)
    if len(no) > keep:
        reviewed = [e for e in no if e.meta.get("why") == "feedback"][:keep]
        others = [e for e in no if e.meta.get("why") != "feedback"]
        no = reviewed + rng.sample(others, keep - len(reviewed))
    out = yes + no
    rng.shuffle(out)
    return out


# --- on disk


def item_digest(item: Item) -> str:
    """What an item contributes, for "what is new since the last adapter" (text and tags)."""
    raw = json.dumps([item.text, sorted(item.tags or ())], ensure_ascii=False).encode()
    return hashlib.sha1(raw).hexdigest()[:12]


def stats_dict(stats: BuildStats) -> dict[str, Any]:
    return asdict(stats)


# --- the pool and the data set (`llm4tag train-data`, `llm4tag retrain`)

SELECTIONS = ("diverse", "balanced", "random", "all")


def read_pool(items_path: str, tags_path: str, split: str | None) -> tuple[list[Item], list[Tag]]:
    """The annotated items of ``split`` (when the file has splits) and the vocabulary."""
    tags = read_tags(tags_path)
    items = read_items(items_path, vocabulary={t.tag for t in tags}).items
    if split and any("split" in i.extra for i in items):
        items = [i for i in items if i.extra.get("split") == split]
    items = [i for i in items if i.tags]
    if not items:
        raise LLM4TagError(
            f"{items_path} holds no annotated items" + (f" of split '{split}'" if split else "")
        )
    return items, tags


def build_data(settings, items, tags, out, *, store=None, knowledge=(), exclude=()) -> dict:
    """Examples for ``items`` (feedback of ``store`` mixed in, ``exclude``'s ids left out), written to
    ``out``; returns the manifest."""
    excluded = set(exclude)
    incorrect, reviewed = {}, set()
    if store and settings.finetune.data.use_feedback:
        items, incorrect, reviewed = merge_feedback(items, load_feedback(store))
    items = [i for i in items if i.id not in excluded and i.tags]
    gen, cal, stats = build_examples(
        items, tags, settings, Encoder(settings.encoder), knowledge_files=list(knowledge), incorrect=incorrect
    )
    return write_training_data(
        out,
        {"generator": gen, "calibrator": cal},
        {
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "mode": stats.mode,
            "stats": stats_dict(stats),
            "settings": {
                "data": settings.finetune.data.model_dump(),
                "recall": settings.graph.recall.model_dump(),
            },
            "feedback_ids": sorted(reviewed),
            "excluded": len(excluded),
            # Per item id, a digest of its text and tags: retrain compares these to find what is new.
            "items": {i.id: item_digest(i) for i in items},
        },
    )
