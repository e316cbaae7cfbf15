"""Shared-data loading and cached encodings for the benchmarks (never used by the product)."""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from _paths import DATASETS, DEFAULT_CACHE, DEFAULT_DATA, REPO, add_data_arguments

from llm4tag.config import Settings
from llm4tag.data import Item, Tag, read_items, read_tags
from llm4tag.encoded_text import item_text, tag_text
from llm4tag.encoder import Encoder

__all__ = [
    "DATASETS",
    "DEFAULT_CACHE",
    "DEFAULT_DATA",
    "REPO",
    "Dataset",
    "add_data_arguments",
    "load_dataset",
    "test_sample",
]


@dataclass
class Dataset:
    name: str
    tags: list[Tag]
    train: list[Item]
    test: list[Item]
    tag_vectors: np.ndarray
    train_vectors: np.ndarray
    test_vectors: np.ndarray


def load_dataset(name: str, data_dir: Path, settings: Settings, encoder: Encoder, cache_dir: Path) -> Dataset:
    folder = data_dir / name
    tags = read_tags(folder / "tags.jsonl.gz")
    vocabulary = {t.tag for t in tags}
    train = read_items(folder / "items.jsonl.gz", vocabulary=vocabulary, split="train").items
    test = read_items(folder / "items.jsonl.gz", vocabulary=vocabulary, split="test").items
    key = hashlib.sha256(
        json.dumps([encoder.id, settings.texts.model_dump(), len(train), len(test)]).encode()
    ).hexdigest()[:12]
    cache = cache_dir / f"{name}-{key}.npz"
    if cache.exists():
        arrays = np.load(cache)
        tv, trv, tev = arrays["tags"], arrays["train"], arrays["test"]
    else:
        started = time.perf_counter()
        tv = encoder.encode([tag_text(t, settings.texts.tag_description_chars) for t in tags])
        trv = encoder.encode([item_text(i, settings.texts.item_fields) for i in train])
        tev = encoder.encode([item_text(i, settings.texts.item_fields) for i in test])
        seconds = time.perf_counter() - started
        n = len(tags) + len(train) + len(test)
        print(f"# encoded {name}: {n} texts in {seconds:.1f} s ({n / seconds:.0f} texts/s)", flush=True)
        cache_dir.mkdir(parents=True, exist_ok=True)
        np.savez(cache, tags=tv, train=trv, test=tev)
    return Dataset(name, tags, train, test, tv, trv, tev)


def test_sample(ds: Dataset, n: int | None = None, seed: int = 0) -> list[Item]:
    """The first ``n`` test items of a fixed random order (seed 0): growing ``n`` keeps the items
    already drawn, so per-item caches of LLM rows stay valid."""
    order = random.Random(seed).sample(ds.test, len(ds.test))
    return order if n is None else order[:n]
